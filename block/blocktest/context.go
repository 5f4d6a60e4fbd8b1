package blocktest

import (
	"context"
	"slices"

	"github.com/cairn-storage/cairn/block"
)

// Ranges is a fixed block.ExtentMap: bytes inside one of its ranges have
// Flags, all others 0. With Flags block.StateDirty it stands in for a
// qemu:dirty-bitmap: context.
type Ranges struct {
	Size   int64
	Flags  uint32
	Ranges [][2]int64 // [offset, length], sorted, not overlapping
}

var _ block.ExtentMap = (*Ranges)(nil)

// Extents describes [off, off+length) run by run.
func (r *Ranges) Extents(_ context.Context, off, length int64) ([]block.Extent, error) {
	end := min(off+length, r.Size)
	var out []block.Extent
	add := func(n int64, flags uint32) {
		if n > 0 {
			out = append(out, block.Extent{Length: n, Flags: flags})
		}
	}
	i, _ := slices.BinarySearchFunc(r.Ranges, off, func(rg [2]int64, off int64) int {
		switch {
		case rg[0]+rg[1] <= off:
			return -1
		case rg[0] > off:
			return 1
		}
		return 0
	})
	for ; off < end && i < len(r.Ranges); i++ {
		start, stop := max(r.Ranges[i][0], off), min(r.Ranges[i][0]+r.Ranges[i][1], end)
		if start >= end {
			break
		}
		add(start-off, 0)
		add(stop-start, r.Flags)
		off = stop
	}
	add(end-off, 0)
	return out, nil
}
