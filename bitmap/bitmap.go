// Package bitmap is Cairn's one in-memory set of block numbers: a
// fixed-size bitmap whose Set, Test and Clear are safe for concurrent use
// without locks (the write path tests and sets bits on every request). It
// serialises to the portable format of 64-bit roaring bitmaps, the form
// block sets take in the store's records.
package bitmap

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2/roaring64"
)

// Bitmap is a fixed-size set of block numbers whose Set and Test are safe
// for concurrent use without locks.
type Bitmap struct {
	n     uint64
	words []uint64
}

// NewBitmap returns an empty bitmap for n blocks.
func New(n uint64) *Bitmap {
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
	b.words64(first, last, func(w, mask uint64) bool {
		if atomic.LoadUint64(&b.words[w])&mask != mask {
			atomic.OrUint64(&b.words[w], mask)
		}
		return true
	})
}

// words64 calls fn with each word of first..last and the mask of the
// range's bits in it, until fn returns false; it reports whether fn
// always returned true.
func (b *Bitmap) words64(first, last uint64, fn func(w, mask uint64) bool) bool {
	for i := first; i <= last; {
		w := i / 64
		lo := i % 64
		hi := uint64(63)
		if last/64 == w {
			hi = last % 64
		}
		if !fn(w, (^uint64(0)>>(63-hi))&^((1<<lo)-1)) {
			return false
		}
		i = (w + 1) * 64
	}
	return true
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

// NextSet returns the first member at or after i, or ok false if none.
func (b *Bitmap) NextSet(i uint64) (member uint64, ok bool) {
	for w := i / 64; w < uint64(len(b.words)); w++ {
		x := atomic.LoadUint64(&b.words[w])
		if w == i/64 {
			x &^= (1 << (i % 64)) - 1
		}
		if x != 0 {
			if m := w*64 + uint64(bits.TrailingZeros64(x)); m < b.n {
				return m, true
			}
			return 0, false
		}
	}
	return 0, false
}

// Grow returns a copy sized for n blocks (n >= Len).
func (b *Bitmap) Grow(n uint64) *Bitmap {
	nb := New(n)
	for i := range b.words {
		nb.words[i] = atomic.LoadUint64(&b.words[i])
	}
	return nb
}

// AllSet reports whether every block first..last is in the set.
func (b *Bitmap) AllSet(first, last uint64) bool {
	return b.words64(first, last, func(w, mask uint64) bool {
		return atomic.LoadUint64(&b.words[w])&mask == mask
	})
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

// Words returns the bitmap's 64-bit words (bit i%64 of word i/64 is block
// i), for callers that persist it word by word; read them with atomic
// loads while others may set bits.
func (b *Bitmap) Words() []uint64 { return b.words }

// FromWords returns a bitmap of n blocks holding words (which it keeps).
func FromWords(n uint64, words []uint64) *Bitmap {
	if uint64(len(words)) < (n+63)/64 {
		words = append(words, make([]uint64, (n+63)/64-uint64(len(words)))...)
	}
	return &Bitmap{n: n, words: words[:(n+63)/64]}
}

// MarshalBinary encodes the set in the portable 64-bit roaring format.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	rb := roaring64.New()
	for w := range b.words {
		x := atomic.LoadUint64(&b.words[w])
		for x != 0 {
			t := bits.TrailingZeros64(x)
			rb.Add(uint64(w)*64 + uint64(t))
			x &= x - 1
		}
	}
	rb.RunOptimize()
	return rb.ToBytes()
}

// minBucket is the least a bucket of the portable 64-bit roaring format
// takes: its 32-bit key and an empty 32-bit bitmap (cookie and count).
const minBucket = 4 + 8

// Unmarshal decodes a set written by MarshalBinary into a bitmap of n
// blocks; members at or past n are left out. Malformed data is an error
// (the roaring decoder panics on some: that is caught here).
func Unmarshal(n uint64, data []byte) (_ *Bitmap, err error) {
	rb := roaring64.New()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("block set: malformed (%v)", p)
		}
	}()
	// The format starts with the number of 32-bit buckets, each at least
	// minBucket bytes; the decoder allocates for the count it reads, so a
	// count the data cannot hold must not reach it.
	if len(data) < 8 {
		return nil, fmt.Errorf("block set: %d bytes is too short", len(data))
	}
	if buckets := binary.LittleEndian.Uint64(data); buckets > uint64(len(data)-8)/minBucket {
		return nil, fmt.Errorf("block set: malformed (%d buckets in %d bytes)", buckets, len(data))
	}
	if err := rb.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("block set: %w", err)
	}
	b := New(n)
	it := rb.Iterator()
	for it.HasNext() {
		if i := it.Next(); i < n {
			b.Set(i)
		}
	}
	return b, nil
}
