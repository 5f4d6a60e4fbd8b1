package cow

import (
	"math/bits"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Bitmap is a fixed-size set of block numbers whose Set and Test are safe
// for concurrent use without locks.
type Bitmap struct {
	n     uint64
	words []uint64
}

// NewBitmap returns an empty bitmap for n blocks.
func NewBitmap(n uint64) *Bitmap {
	return &Bitmap{n: n, words: make([]uint64, (n+63)/64)}
}

// Len is the number of blocks the bitmap covers.
func (b *Bitmap) Len() uint64 { return b.n }

// Set adds block i.
func (b *Bitmap) Set(i uint64) { atomic.OrUint64(&b.words[i/64], 1<<(i%64)) }

// Test reports whether block i is in the set.
func (b *Bitmap) Test(i uint64) bool {
	return atomic.LoadUint64(&b.words[i/64])&(1<<(i%64)) != 0
}

// SetRange adds blocks first..last inclusive.
func (b *Bitmap) SetRange(first, last uint64) {
	for i := first; i <= last; {
		w := i / 64
		lo := i % 64
		hi := uint64(63)
		if last/64 == w {
			hi = last % 64
		}
		mask := (^uint64(0) >> (63 - hi)) &^ ((1 << lo) - 1)
		if atomic.LoadUint64(&b.words[w])&mask != mask {
			atomic.OrUint64(&b.words[w], mask)
		}
		i = (w + 1) * 64
	}
}

// Count is the number of blocks in the set.
func (b *Bitmap) Count() uint64 {
	var c int
	for i := range b.words {
		c += bits.OnesCount64(atomic.LoadUint64(&b.words[i]))
	}
	return uint64(c)
}

// Members lists the blocks in the set in ascending order.
func (b *Bitmap) Members() []uint64 {
	var out []uint64
	for w := range b.words {
		x := atomic.LoadUint64(&b.words[w])
		for x != 0 {
			t := bits.TrailingZeros64(x)
			out = append(out, uint64(w)*64+uint64(t))
			x &= x - 1
		}
	}
	return out
}

// Grow returns a copy sized for n blocks (n >= Len).
func (b *Bitmap) Grow(n uint64) *Bitmap {
	nb := NewBitmap(n)
	for i := range b.words {
		nb.words[i] = atomic.LoadUint64(&b.words[i])
	}
	return nb
}

func ioctlRange(fd int, req uint, r *[2]uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(r)))
	if e != 0 {
		return e
	}
	return nil
}

func ioctlUint64(fd int, req uint, v *uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if e != 0 {
		return e
	}
	return nil
}

// AllSet reports whether every block first..last is in the set.
func (b *Bitmap) AllSet(first, last uint64) bool {
	for i := first; i <= last; {
		w := i / 64
		lo := i % 64
		hi := uint64(63)
		if last/64 == w {
			hi = last % 64
		}
		mask := (^uint64(0) >> (63 - hi)) &^ ((1 << lo) - 1)
		if atomic.LoadUint64(&b.words[w])&mask != mask {
			return false
		}
		i = (w + 1) * 64
	}
	return true
}

// Clear removes block i.
func (b *Bitmap) Clear(i uint64) { atomic.AndUint64(&b.words[i/64], ^(uint64(1) << (i % 64))) }

// Or adds every member of o (o may be shorter or longer; extra bits are ignored).
func (b *Bitmap) Or(o *Bitmap) {
	n := min(len(b.words), len(o.words))
	for i := 0; i < n; i++ {
		if x := atomic.LoadUint64(&o.words[i]); x != 0 {
			atomic.OrUint64(&b.words[i], x)
		}
	}
}

// Clone returns a copy.
func (b *Bitmap) Clone() *Bitmap { return b.Grow(b.n) }

// TestAndClear removes block i and reports whether it was in the set.
func (b *Bitmap) TestAndClear(i uint64) bool {
	w := &b.words[i/64]
	bit := uint64(1) << (i % 64)
	for {
		old := atomic.LoadUint64(w)
		if old&bit == 0 {
			return false
		}
		if atomic.CompareAndSwapUint64(w, old, old&^bit) {
			return true
		}
	}
}
