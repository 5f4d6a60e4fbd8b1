package cow

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2/roaring64"
	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// Clones (docs/images.md). A clone is a volume whose live image starts
// empty and whose unwritten pages read from its origin: a view of other
// chains in the store (Options.Origin: the parent's chain as of the
// snapshot it was cloned from, then the parent's own origin, and so on).
// Nothing is copied when it is made.
//
// Which pages the clone has written is the live image's allocation: a
// page that holds data is the clone's, a hole is the origin's. So the
// clone writes real zeros where a disk would punch a hole, and the first
// write to a block it does not hold whole writes the whole block, the
// origin's pages merged with the new data (copy-up of one block). After a
// crash the allocation says it again (SEEK_DATA lists written pages, even
// those not yet allocated by ext4's delayed allocation), and a page a
// power cut lost reads from the origin: it was never FLUSHed.
//
// Snapshots of a clone store only what it wrote; their other blocks read
// from the origin too. Detach copies the origin's entries into the clone's
// own chain (its base, by reference: metadata only), after which the
// clone reads them from there and no longer depends on its parent.

// localPages tracks the pages of a clone's live image it has written.
type localPages struct {
	mu    sync.RWMutex
	pages *roaring64.Bitmap // guarded by mu
	// full marks the blocks every page of which is local: the read and
	// write paths test it without mu. Bits are only ever set; Grow
	// replaces it with a larger copy.
	full atomic.Pointer[bitmap.Bitmap]
	ppb  uint64 // pages per block

	allocOnce sync.Once
	alloc     *bitmap.Bitmap // the origin's allocated blocks, built on first use (originAllocated)
	allocErr  error
}

// countIn is how many pages of block b are local. Caller holds mu (or
// owns lp).
func (lp *localPages) countIn(b uint64) uint64 {
	n := uint64(0)
	for pg := b * lp.ppb; pg < (b+1)*lp.ppb; pg++ {
		if lp.pages.Contains(pg) {
			n++
		}
	}
	return n
}

// isFull reports whether block b is the clone's whole.
func (lp *localPages) isFull(b uint64) bool {
	f := lp.full.Load()
	return b < f.Len() && f.Test(b)
}

// openClone loads which pages of the live image are written.
func (v *Volume) openClone() error {
	v.origin.Store(&v.opts.Origin)
	lp := &localPages{pages: roaring64.New(), ppb: uint64(v.pagesPerBlock())}
	full := bitmap.New(v.blocks(v.size))
	if !v.isDevice {
		fd := int(v.f.Fd())
		for off := int64(0); off < v.size; {
			d, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				break
			}
			if err != nil {
				return fmt.Errorf("clone %s: find its written pages: %w", v.path, err)
			}
			h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
			if err != nil {
				return fmt.Errorf("clone %s: find its written pages: %w", v.path, err)
			}
			lp.pages.AddRange(uint64(d/pageSize), uint64((h+pageSize-1)/pageSize))
			off = h
		}
	}
	// Cost: the pages written, not the disk's size (a new clone has
	// none). The iterator is in order: count each block's run.
	it := lp.pages.Iterator()
	cur, n := uint64(0), uint64(0)
	for it.HasNext() {
		if b := it.Next() / lp.ppb; b != cur {
			cur, n = b, 0
		}
		if n++; n == lp.ppb && cur < full.Len() {
			full.Set(cur)
		}
	}
	lp.full.Store(full)
	v.local = lp
	return nil
}

// isClone reports whether some pages may read from an origin.
func (v *Volume) isClone() bool { return v.local != nil }

// Origin returns the clone's origin layers (nil: not a clone).
func (v *Volume) Origin() []store.Layer {
	if o := v.origin.Load(); o != nil {
		return *o
	}
	return nil
}

// markLocal records block b as written whole.
func (lp *localPages) markLocal(b uint64) {
	lp.mu.Lock()
	lp.pages.AddRange(b*lp.ppb, (b+1)*lp.ppb)
	lp.mu.Unlock()
	if f := lp.full.Load(); b < f.Len() {
		f.Set(b)
	}
}

// markPage records one page as written (a merged redirected write).
func (lp *localPages) markPage(pg uint64) {
	lp.mu.Lock()
	lp.pages.Add(pg)
	b := pg / lp.ppb
	full := lp.countIn(b) == lp.ppb
	lp.mu.Unlock()
	if f := lp.full.Load(); full && b < f.Len() {
		f.Set(b)
	}
}

// readOrigin fills buf (one block) with block b of the origin: the first
// layer holding it, else zeros.
func (v *Volume) readOrigin(ctx context.Context, b uint64, buf []byte) error {
	if err := readLayers(ctx, v.st, v.Origin(), b, buf); err != nil {
		return fmt.Errorf("the clone's origin: %w", err)
	}
	return nil
}

// overlayOrigin fixes up p, just read from the live image at off, with the
// origin's content of the pages the clone has not written.
func (v *Volume) overlayOrigin(p []byte, off int64) error {
	end := off + int64(len(p))
	var ob *[]byte
	defer func() {
		if ob != nil {
			putBlock(ob)
		}
	}()
	first, last := v.blockRange(off, int64(len(p)))
	for b := first; b <= last; b++ {
		if v.local.isFull(b) {
			continue
		}
		bstart := int64(b) << v.shift
		lo, hi := max(off, bstart), min(end, bstart+v.blockSize)
		loaded := false
		for pg := lo / pageSize; pg*pageSize < hi; pg++ {
			v.local.mu.RLock()
			local := v.local.pages.Contains(uint64(pg))
			v.local.mu.RUnlock()
			if local {
				continue
			}
			if !loaded {
				if ob == nil {
					ob = v.getBlock()
				}
				if err := v.readOrigin(context.Background(), b, *ob); err != nil {
					return err
				}
				loaded = true
			}
			plo, phi := max(lo, pg*pageSize), min(hi, (pg+1)*pageSize)
			copy(p[plo-off:phi-off], (*ob)[plo-bstart:phi-bstart])
		}
	}
	return nil
}

// writeClone writes data (nil: zeros) at off into a clone's live image:
// blocks it holds whole are written as they are; any other block is
// written whole, its unwritten pages from the origin (copy-up), under the
// block's stripe lock so two first writes to a block do not race. Caller
// is in the write path (holding the gate shared).
func (v *Volume) writeClone(data []byte, off, length int64) error {
	end := off + length
	for pos := off; pos < end; {
		b := uint64(pos >> v.shift)
		bstart := int64(b) << v.shift
		wend := min(end, bstart+v.blockSize)
		var err error
		if v.local.isFull(b) {
			err = v.writeRaw(data, off, pos, wend)
		} else {
			err = v.copyUp(b, data, off, pos, wend)
		}
		if err != nil {
			return err
		}
		pos = wend
	}
	return nil
}

// writeRaw writes [pos, wend) of data (at off; nil: zeros) to the image.
func (v *Volume) writeRaw(data []byte, off, pos, wend int64) error {
	if data == nil {
		return v.writeZeros(pos, wend-pos)
	}
	_, err := v.f.WriteAt(data[pos-off:wend-off], pos)
	return err
}

// copyUp writes block b whole: its current content (the clone's pages and
// the origin's) with [pos, wend) of data laid over it.
func (v *Volume) copyUp(b uint64, data []byte, off, pos, wend int64) error {
	mu := v.stripe(b)
	mu.Lock()
	defer mu.Unlock()
	if v.local.isFull(b) { // another writer got here first
		return v.writeRaw(data, off, pos, wend)
	}
	bstart := int64(b) << v.shift
	n := min(v.blockSize, v.size-bstart)
	bp := v.getBlock()
	defer putBlock(bp)
	buf := (*bp)[:n]
	if err := v.readImage(buf, bstart); err != nil {
		return err
	}
	if data != nil {
		copy(buf[pos-bstart:], data[pos-off:wend-off])
	} else {
		clear(buf[pos-bstart : wend-bstart])
	}
	if _, err := v.f.WriteAt(buf, bstart); err != nil {
		return err
	}
	v.local.markLocal(b)
	return nil
}

// Detach makes the clone independent of its parent: the origin's entries
// are copied into the clone's own chain (its base: metadata only, by
// reference), and from then on its unwritten pages and its snapshots'
// unwritten blocks read from there. The parent's snapshot may be deleted
// afterwards. A Detach a crash interrupted is finished by running it
// again. progress (may be nil) gets blocks done of total. It returns the
// origin the caller must record from now on (the clone's own base).
func (v *Volume) Detach(ctx context.Context, progress func(done, total uint64)) ([]store.Layer, error) {
	if !v.isClone() || v.st == nil {
		return nil, block.Errorf(block.ErrFailed, "%s is not a clone", v.path)
	}
	layers := v.Origin()
	self := []store.Layer{{Disk: v.opts.DiskID, Seq: store.BaseSeq}}
	if len(layers) == 1 && layers[0] == self[0] {
		return self, nil // detached already
	}
	if err := v.st.CopyView(ctx, layers, v.opts.DiskID, v.blocks(v.Size()), progress); err != nil {
		return nil, fmt.Errorf("detach clone: %w", err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return nil, fmt.Errorf("detach clone: %w", err)
	}
	v.origin.Store(&self)
	return self, nil
}

// growClone sizes the clone's block map for n blocks. Caller holds the
// gate exclusively.
func (lp *localPages) grow(n uint64) { lp.full.Store(lp.full.Load().Grow(n)) }

// originAllocated is the set of blocks the origin holds data in (for the
// allocation map), built once: its cost is the origin's entries.
func (v *Volume) originAllocated(ctx context.Context) (*bitmap.Bitmap, error) {
	lp := v.local
	lp.allocOnce.Do(func() {
		lp.alloc, lp.allocErr = layersAllocated(ctx, v.st, v.Origin(), v.blocks(v.Size()))
	})
	return lp.alloc, lp.allocErr
}

// cloneExtents describes a clone's live allocation, block by block: a
// block holds data if the clone wrote a page of it or the origin holds it.
func (v *Volume) cloneExtents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	alloc, err := v.originAllocated(ctx)
	if err != nil {
		return nil, err
	}
	size := v.Size()
	first, last := v.blockRange(off, min(length, size-off))
	bm := bitmap.New(last + 1)
	for b := first; b <= last; b++ {
		v.local.mu.RLock()
		written := v.local.countIn(b) > 0
		v.local.mu.RUnlock()
		if written || (b < alloc.Len() && alloc.Test(b)) {
			bm.Set(b)
		}
	}
	return bitmapExtents(bm, v.shift, off, length, size, 0, block.StateHole|block.StateZero), nil
}

// Hydrate copies into the live image every block the clone does not hold
// whole (from its origin), so its reads no longer go to the store: the
// data copy of a flatten, after Detach. rate bounds it in bytes per
// second (0: none); progress (may be nil) gets bytes done of total. Guest
// I/O goes on meanwhile: each block is filled under its stripe lock, which
// a first write to a block not held whole takes too.
func (v *Volume) Hydrate(ctx context.Context, rate int64, progress func(done, total uint64)) error {
	if !v.isClone() {
		return nil
	}
	nblocks := v.blocks(v.Size())
	var todo []uint64
	for b := uint64(0); b < nblocks; b++ {
		if !v.local.isFull(b) {
			todo = append(todo, b)
		}
	}
	total := uint64(len(todo)) * uint64(v.blockSize)
	start := time.Now()
	for i, b := range todo {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := v.fill(b); err != nil {
			return fmt.Errorf("hydrate block %d: %w", b, err)
		}
		done := uint64(i+1) * uint64(v.blockSize)
		if progress != nil && (i%64 == 63 || i == len(todo)-1) {
			progress(done, total)
		}
		if rate > 0 {
			if ahead := time.Duration(float64(done)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(ahead):
				}
			}
		}
	}
	return v.sync()
}

// copyOnRead fills the blocks of [off, off+length) the clone does not
// hold whole (Options.CopyOnRead).
func (v *Volume) copyOnRead(off, length int64) error {
	first, last := v.blockRange(off, length)
	for b := first; b <= last; b++ {
		if v.local.isFull(b) {
			continue
		}
		if err := v.fill(b); err != nil {
			return fmt.Errorf("copy-on-read of block %d: %w", b, err)
		}
	}
	return nil
}

// fill writes block b's content into the live image whole, if the clone
// does not hold it whole yet.
func (v *Volume) fill(b uint64) error {
	mu := v.stripe(b)
	mu.Lock()
	defer mu.Unlock()
	if v.local.isFull(b) {
		return nil
	}
	bstart := int64(b) << v.shift
	n := min(v.blockSize, v.Size()-bstart)
	if n <= 0 {
		return nil
	}
	bp := v.getBlock()
	defer putBlock(bp)
	buf := (*bp)[:n]
	if err := v.readImage(buf, bstart); err != nil {
		return err
	}
	if _, err := v.f.WriteAt(buf, bstart); err != nil {
		return mapErr(err)
	}
	v.local.markLocal(b)
	return nil
}
