package blocktest

import (
	"context"
	"sync"

	"github.com/cairn-storage/cairn/block"
)

// pageSize is the allocation unit of Memory.
const pageSize = 4096

// Memory is an in-memory block.Device. Pages never written, trimmed or
// zeroed without ZeroNoHole are holes that read as zeros, so its extents
// are exact at 4 KiB granularity.
type Memory struct {
	mu    sync.RWMutex
	data  []byte
	alloc []bool // per page: holds data (guarded by mu)
}

var (
	_ block.Device    = (*Memory)(nil)
	_ block.TryReader = (*Memory)(nil)
)

// NewMemory returns a zeroed disk of size bytes.
func NewMemory(size int64) *Memory {
	return &Memory{data: make([]byte, size), alloc: make([]bool, (size+pageSize-1)/pageSize)}
}

// Bytes returns the disk's content (not a copy; do not use concurrently
// with writes).
func (m *Memory) Bytes() []byte { return m.data }

// Size is the disk's size.
func (m *Memory) Size() int64 { return int64(len(m.data)) }

// ReadAt copies out.
func (m *Memory) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

// TryReadAt is ReadAt: memory never waits.
func (m *Memory) TryReadAt(p []byte, off int64) bool {
	m.ReadAt(context.Background(), p, off)
	return true
}

// WriteAt copies in and marks the pages allocated.
func (m *Memory) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mark(off, int64(len(p)), true)
	m.mu.Unlock()
	return nil
}

// mark sets the pages touched by [off, off+n) to allocated, or the pages
// wholly inside it to holes. The caller holds mu.
func (m *Memory) mark(off, n int64, allocated bool) {
	if n <= 0 {
		return
	}
	first, last := off/pageSize, (off+n-1)/pageSize
	if !allocated {
		first, last = (off+pageSize-1)/pageSize, (off+n)/pageSize-1
		if off+n == int64(len(m.data)) {
			last = int64(len(m.alloc)) - 1
		}
	}
	for p := first; p <= last; p++ {
		m.alloc[p] = allocated
	}
}

// Flush does nothing: memory is as durable as it gets.
func (m *Memory) Flush(context.Context) error { return nil }

// Trim zeroes the range and makes its whole pages holes.
func (m *Memory) Trim(ctx context.Context, off, length int64, _ bool) error {
	return m.Zero(ctx, off, length, 0)
}

// Zero zeroes the range; whole pages become holes unless ZeroNoHole.
func (m *Memory) Zero(_ context.Context, off, length int64, flags block.ZeroFlags) error {
	m.mu.Lock()
	clear(m.data[off : off+length])
	m.mark(off, length, flags&block.ZeroNoHole != 0)
	m.mu.Unlock()
	return nil
}

// Extents reports holes (hole and zero) and data by page.
func (m *Memory) Extents(_ context.Context, off, length int64) ([]block.Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	end := min(off+length, int64(len(m.data)))
	var out []block.Extent
	for off < end {
		allocated := m.alloc[off/pageSize]
		next := min((off/pageSize+1)*pageSize, end)
		var flags uint32
		if !allocated {
			flags = block.StateHole | block.StateZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Length += next - off
		} else {
			out = append(out, block.Extent{Length: next - off, Flags: flags})
		}
		off = next
	}
	return out, nil
}
