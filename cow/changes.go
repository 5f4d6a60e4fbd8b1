package cow

import (
	"context"
	"math"
	"sync"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
)

// Changes returns the blocks changed after snapshot from up to snapshot
// to ("" means the live disk now): what a backup tool must copy to bring a
// copy of from up to to.
func (v *Volume) Changes(ctx context.Context, from, to string) (*bitmap.Bitmap, error) {
	v.mu.Lock()
	fs, ok := v.findLocked(from)
	if !ok {
		v.mu.Unlock()
		return nil, notFound(from)
	}
	upto := uint64(math.MaxUint64)
	if to != "" {
		ts, ok := v.findLocked(to)
		if !ok {
			v.mu.Unlock()
			return nil, notFound(to)
		}
		upto = ts.seq()
	}
	v.mu.Unlock()
	if upto < fs.seq() {
		return nil, block.Errorf(block.ErrInvalid, "snapshot %q is older than %q: give the older one as from", to, from)
	}
	return v.changedBetween(ctx, fs.seq(), upto)
}

// changedBetween is the blocks with entries in (after, upto], blocks
// pending for snapshots in that range and, for the live disk
// (upto = MaxUint64), the current epoch's dirty set.
func (v *Volume) changedBetween(ctx context.Context, after, upto uint64) (*bitmap.Bitmap, error) {
	bm := bitmap.New(v.blocks(v.Size()))
	if err := v.st.Changed(ctx, v.opts.DiskID, after, upto, bm); err != nil {
		return nil, err
	}
	v.addLiveChanges(bm, after, upto)
	return bm, nil
}

// addLiveChanges adds the changes not yet in the store: pending blocks of
// snapshots in (after, upto] and, for the live disk, the epoch's dirty set.
func (v *Volume) addLiveChanges(bm *bitmap.Bitmap, after, upto uint64) {
	for _, s := range v.copyingList() {
		if s.seq() > after && s.seq() <= upto {
			bm.Or(s.pending)
		}
	}
	if upto == math.MaxUint64 {
		v.gate.RLock()
		bm.Or(v.track.Load().bits())
		v.gate.RUnlock()
	}
}

// dirtyContext serves qemu:dirty-bitmap:SNAP for one export.
type dirtyContext struct {
	v     *Volume
	after uint64
	upto  uint64
	size  int64

	// asAllocation reports changed blocks as data and the rest as holes
	// (not zero), in base:allocation's bits: cairn:since:SNAP.
	asAllocation bool

	once   sync.Once
	stored *bitmap.Bitmap // changes already in the store at the first query
	err    error
}

// DirtyBitmapContexts returns the qemu:dirty-bitmap:NAME contexts for the
// export of snapshot at ("" for the live disk): one per earlier snapshot,
// each reporting the blocks changed since it (flag block.StateDirty). Each
// has a twin, cairn:since:NAME, that reports the same blocks in
// base:allocation's bits: changed blocks are data, the rest holes that
// do not read as zero. qemu's nbd driver reads it in place of
// base:allocation (its x-dirty-bitmap option), so qemu-img convert onto an
// overlay with a backing file copies exactly the changed blocks
// (incremental exports, docs/export.md).
func (v *Volume) DirtyBitmapContexts(at string) map[string]block.ExtentMap {
	if v.st == nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	upto := uint64(math.MaxUint64)
	size := int64(-1)
	if at != "" {
		s, ok := v.findLocked(at)
		if !ok {
			return nil
		}
		upto, size = s.seq(), s.rec.Size
	}
	out := map[string]block.ExtentMap{}
	for _, s := range v.snaps {
		if s.seq() >= upto || !s.readable() {
			continue
		}
		out["qemu:dirty-bitmap:"+s.rec.Name] = &dirtyContext{v: v, after: s.seq(), upto: upto, size: size}
		out["cairn:since:"+s.rec.Name] = &dirtyContext{v: v, after: s.seq(), upto: upto, size: size, asAllocation: true}
	}
	return out
}

// Extents reports changed blocks as dirty.
func (c *dirtyContext) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	c.once.Do(func() { c.stored, c.err = c.v.changedBetween(ctx, c.after, c.upto) })
	if c.err != nil {
		return nil, c.err
	}
	bm := c.stored
	size := c.size
	if c.upto == math.MaxUint64 {
		// The live disk keeps changing: add what changed since.
		size = c.v.Size()
		bm = bm.Grow(c.v.blocks(size))
		c.v.addLiveChanges(bm, c.after, c.upto)
	}
	if c.asAllocation {
		return bitmapExtents(bm, c.v.shift, off, length, size, 0, block.StateHole), nil
	}
	return bitmapExtents(bm, c.v.shift, off, length, size, block.StateDirty, 0), nil
}
