package cow

import (
	"context"
	"fmt"
	"sync"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
)

// View is a read-only snapshot of a volume, served as the NBD export
// DISK@SNAPSHOT and as a FUSE file. It reads each block from the newest
// chain entry at or before the snapshot, or from the live image while the
// block is still pending. While a view is open its snapshot cannot be
// deleted.
type View struct {
	v    *Volume
	s    *snap
	seq  uint64
	size int64

	allocOnce sync.Once
	alloc     *bitmap.Bitmap // blocks holding data (base:allocation), built on first use
	allocErr  error

	closeOnce sync.Once
}

var _ block.Device = (*View)(nil)

// OpenView opens the named snapshot for reading. It must be closed.
func (v *Volume) OpenView(name string) (*View, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.findLocked(name)
	if !ok {
		return nil, notFound(name)
	}
	if !s.readable() {
		return nil, block.Errorf(block.ErrFailed, "snapshot %q is %s: %s", name, s.rec.State, s.rec.Reason)
	}
	s.views.Add(1)
	return &View{v: v, s: s, seq: s.seq(), size: s.rec.Size}, nil
}

// Close releases the view.
func (w *View) Close() error {
	w.closeOnce.Do(func() { w.s.views.Add(-1) })
	return nil
}

// Name is the snapshot's name.
func (w *View) Name() string { return w.s.rec.Name }

// Size is the disk's size when the snapshot was taken.
func (w *View) Size() int64 { return w.size }

// ReadAt reads the snapshot's content.
func (w *View) ReadAt(ctx context.Context, p []byte, off int64) error {
	bs := w.v.blockSize
	for len(p) > 0 {
		b := uint64(off >> w.v.shift)
		in := off & (bs - 1)
		n := min(int64(len(p)), bs-in)
		if in == 0 && n == bs {
			if err := w.v.readAt(ctx, w.seq, b, p[:n]); err != nil {
				return err
			}
		} else {
			tmp := w.v.getBlock()
			err := w.v.readAt(ctx, w.seq, b, *tmp)
			copy(p[:n], (*tmp)[in:in+n])
			putBlock(tmp)
			if err != nil {
				return err
			}
		}
		p = p[n:]
		off += n
	}
	return nil
}

// readAt fills buf (one block) with block b as of snapshot seq: the newest
// version at or before seq, which is either a copying snapshot's (the live
// image and the redirected pages of earlier epochs) or in the store.
func (v *Volume) readAt(ctx context.Context, seq, b uint64, buf []byte) error {
	for len(v.copyingList()) > 0 {
		owner := v.newestOwner(b, seq)
		if owner == nil {
			break
		}
		// Pending for a snapshot at or before seq. A later one (still at
		// or before seq) may have stored its own version already: look
		// it up first (no lock held), then compose under the stripe lock
		// if the owner is unchanged (no merge lands in the block
		// meanwhile).
		<-owner.drained
		ref, found, err := v.st.Lookup(ctx, v.opts.DiskID, b, seq)
		if err != nil {
			return fmt.Errorf("read block %d of snapshot: %w", b, err)
		}
		if found && ref.Seq >= owner.seq() {
			break
		}
		mu := v.stripe(b)
		mu.Lock()
		if v.newestOwner(b, seq) != owner {
			mu.Unlock()
			continue // stored or passed on meanwhile: look again
		}
		err = v.readSnapVersion(buf, int64(b)<<v.shift, owner.seq())
		mu.Unlock()
		return err
	}
	found, err := v.st.ReadBlock(ctx, v.opts.DiskID, b, seq, buf)
	if err != nil {
		return fmt.Errorf("read block %d of snapshot: %w", b, err)
	}
	if !found && v.isClone() {
		return v.readOrigin(ctx, b, buf) // a block the clone never wrote
	}
	return nil
}

// WriteAt fails: snapshots are read-only.
func (w *View) WriteAt(context.Context, []byte, int64, bool) error { return block.ErrReadOnly }

// Trim fails: snapshots are read-only.
func (w *View) Trim(context.Context, int64, int64, bool) error { return block.ErrReadOnly }

// Zero fails: snapshots are read-only.
func (w *View) Zero(context.Context, int64, int64, block.ZeroFlags) error { return block.ErrReadOnly }

// Flush has nothing to do.
func (w *View) Flush(context.Context) error { return nil }

// Extents reports the snapshot's allocation: blocks never written or
// recorded as zero are holes.
func (w *View) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	w.allocOnce.Do(func() { w.alloc, w.allocErr = w.v.allocatedAt(ctx, w.seq, w.size) })
	if w.allocErr != nil {
		return nil, w.allocErr
	}
	return bitmapExtents(w.alloc, w.v.shift, off, length, w.size, 0, block.StateHole|block.StateZero), nil
}

// allocatedAt is the set of blocks holding data as of seq.
func (v *Volume) allocatedAt(ctx context.Context, seq uint64, size int64) (*bitmap.Bitmap, error) {
	bm := bitmap.New(v.blocks(size))
	if v.isClone() {
		alloc, err := v.originAllocated(ctx)
		if err != nil {
			return nil, err
		}
		bm.Or(alloc)
	}
	if err := v.st.Allocated(ctx, v.opts.DiskID, seq, bm); err != nil {
		return nil, err
	}
	for _, s := range v.copyingList() {
		if s.seq() <= seq {
			bm.Or(s.pending)
		}
	}
	return bm, nil
}

// bitmapExtents turns the blocks of bm within [off, off+length) into
// extents: members get setFlags, others clearFlags. Clipped to size.
func bitmapExtents(bm *bitmap.Bitmap, shift uint, off, length, size int64, setFlags, clearFlags uint32) []block.Extent {
	end := min(off+length, size)
	var out []block.Extent
	for off < end {
		b := uint64(off >> shift)
		in := b < bm.Len() && bm.Test(b)
		next := (int64(b) + 1) << shift
		for next < end {
			nb := uint64(next >> shift)
			if (nb < bm.Len() && bm.Test(nb)) != in {
				break
			}
			next += 1 << shift
		}
		flags := clearFlags
		if in {
			flags = setFlags
		}
		n := min(next, end) - off
		if len(out) > 0 && out[len(out)-1].Flags == flags {
			out[len(out)-1].Length += n
		} else {
			out = append(out, block.Extent{Length: n, Flags: flags})
		}
		off += n
	}
	return out
}
