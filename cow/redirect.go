package cow

import (
	"context"
	"fmt"

	"github.com/cairn-storage/cairn/block"
)

// Redirect-on-write (docs/design.md, "Redirect-on-write").
//
// While a snapshot copies out, a guest write to a block it still needs
// does not overwrite the live image: its pages go to the side file of
// the write's epoch (side.go), at their own offsets, and the redirect
// index (rindex.go) says which epochs hold a version of each redirected
// page. The image keeps the content the copy-out reads, so the write
// saves nothing first and waits for no sync; a FLUSH (or FUA, or a seal)
// makes the side files durable with the live image. The side files prove
// their writes after a crash (recovery rebuilds the index from their
// data), so such writes mark the change tracker lazily.
//
// Versions: snapshot s's version of a redirected page is its newest
// version of an epoch before s (written before s was sealed), else the
// live image's; the live version is the newest. Once a block has a
// redirected page every write to the block is redirected (a direct write
// would hide under the index) until the redirects are retired (retire.go).
//
// A side-file write that fails (a full filesystem, an I/O error) fails
// the copying snapshots, merges what is redirected, and the write goes to
// the live image (see writeRedirected): guest writes go on.

// redirectBlock reports whether a write to block b must be redirected: b
// has redirected pages, or it is pending for a copying snapshot.
func (v *Volume) redirectBlock(b uint64) bool {
	return v.rd.hasBlock(b) || v.allPending(b, b)
}

// redirecting reports whether a write may be redirected: something copies
// or pages are redirected. Otherwise the write paths skip the per-block
// checks altogether.
func (v *Volume) redirecting() bool {
	return v.rd != nil && (v.rd.count.Load() > 0 || len(v.copyingList()) > 0)
}

// mustRedirect reports whether a write to any block of first..last must
// be redirected.
func (v *Volume) mustRedirect(first, last uint64) bool {
	if !v.redirecting() {
		return false
	}
	for b := first; b <= last; b++ {
		if v.redirectBlock(b) {
			return true
		}
	}
	return false
}

// splitWrite calls fn for the runs of [off, off+length) that are
// redirected or written in place, in order; without redirects in play,
// once for the whole range. fn reports redo when the run's class changed
// before it could write it; the run is then split again.
func (v *Volume) splitWrite(off, length int64, fn func(off, length int64, redirect bool) (redo bool, err error)) error {
	end := off + length
	for off < end || length == 0 {
		runEnd, red := end, false
		if v.redirecting() && length > 0 {
			b := uint64(off >> v.shift)
			red = v.redirectBlock(b)
			runEnd = min(end, int64(b+1)<<v.shift)
			for runEnd < end && v.redirectBlock(uint64(runEnd>>v.shift)) == red {
				runEnd = min(end, runEnd+v.blockSize)
			}
		}
		redo, err := fn(off, runEnd-off, red)
		if err != nil || length == 0 {
			return err
		}
		if !redo {
			off = runEnd
		}
	}
	return nil
}

// writeRedirected writes p (nil: zeros) of length bytes at off to the
// current epoch's side file. If that fails, every copying snapshot fails,
// the redirects retire, and the write goes to the live image (guest
// writes go on, DESIGN.md invariant 5).
func (v *Volume) writeRedirected(ctx context.Context, p []byte, off, length int64, flags block.ZeroFlags) error {
	first, last := v.blockRange(off, length)
	// Marked lazily: the side files prove the write after a crash
	// (openRedirects marks their blocks), and retire flushes the tracker
	// before they go.
	t := v.enter(first, last, true)
	err := v.redirectRange(t.epoch, p, off, length)
	v.leave(t)
	if err == nil {
		return nil
	}
	v.log.Error("redirected write failed; failing the copying snapshots to write in place", "live", v.path, "err", err)
	if rerr := v.abandonRedirects(err); rerr != nil {
		return fmt.Errorf("write at %d: %v; and the redirected writes could not be merged into the live image: %w", off, err, rerr)
	}
	return v.write(ctx, p, off, length, flags)
}

// redirectRange writes the pages of [off, off+length) to the epoch's side
// file, reading the rest of partly written pages from their live version.
// Caller holds the gate shared.
func (v *Volume) redirectRange(epoch uint64, p []byte, off, length int64) error {
	end := off + length
	bp := v.getBlock()
	defer putBlock(bp)
	for pos := off; pos < end; {
		b := uint64(pos >> v.shift)
		bstart := int64(b) << v.shift
		wend := min(end, bstart+v.blockSize)
		first := uint32((pos - bstart) / pageSize)
		lastPg := uint32((wend - 1 - bstart) / pageSize)
		n := lastPg - first + 1
		rstart := bstart + int64(first)*pageSize
		buf := (*bp)[:int64(n)*pageSize]
		// Under the stripe lock: a read-modify-write of a partial page,
		// and the index update, race with no other writer or merge of b.
		mu := v.stripe(b)
		mu.Lock()
		err := v.redirectPages(epoch, b, buf, rstart, first, n, func(buf []byte) {
			if p != nil {
				copy(buf[pos-rstart:], p[pos-off:wend-off])
			} else {
				clear(buf[pos-rstart : wend-rstart])
			}
		}, pos != rstart, wend != rstart+int64(n)*pageSize)
		mu.Unlock()
		if err != nil {
			return err
		}
		pos = wend
	}
	return nil
}

// redirectPages fills buf (pages first..first+n-1 of block b, at rstart)
// with their live version where the write leaves a head or tail of a page
// unwritten, lays the write over it, writes it to the epoch's side file
// and indexes it. Caller holds b's stripe lock.
func (v *Volume) redirectPages(epoch, b uint64, buf []byte, rstart int64, first, n uint32, lay func([]byte), head, tail bool) error {
	if head {
		if err := v.livePage(buf[:pageSize], rstart); err != nil {
			return err
		}
	}
	if tail && (n > 1 || !head) {
		if err := v.livePage(buf[len(buf)-pageSize:], rstart+int64(n-1)*pageSize); err != nil {
			return err
		}
	}
	lay(buf)
	if err := v.side.write(epoch, buf, rstart); err != nil {
		return err
	}
	v.rd.add(b, v.shift, first, n, epoch)
	return nil
}

// readSnapVersion reads snapshot seq's version (liveSeq: the live disk's)
// of the pages at off (a whole number, page-aligned): the live image with
// the redirected pages of that version laid over it.
func (v *Volume) readSnapVersion(buf []byte, off int64, seq uint64) error {
	if err := v.readImage(buf, off); err != nil {
		return fmt.Errorf("read live image: %w", err)
	}
	if v.rd.countOrZero() == 0 {
		return nil
	}
	v.rd.mu.RLock()
	defer v.rd.mu.RUnlock()
	for p := int64(0); p < int64(len(buf)); p += pageSize {
		rv, ok := v.rd.version(uint64(off+p)/pageSize, seq)
		if !ok {
			continue
		}
		if err := v.side.read(rv.epoch, buf[p:p+pageSize], off+p); err != nil {
			return err
		}
	}
	return nil
}

// livePage reads the live version of the page at off.
func (v *Volume) livePage(buf []byte, off int64) error {
	return v.readSnapVersion(buf, off, liveSeq)
}

// readOverlay fixes up p, just read from the live image at off, with the
// live versions of redirected pages. Caller holds v.rd.mu shared.
func (v *Volume) readOverlay(p []byte, off int64) error {
	end := off + int64(len(p))
	var pg [pageSize]byte
	for n := off / pageSize; n*pageSize < end; n++ {
		rv, ok := v.rd.version(uint64(n), liveSeq)
		if !ok {
			continue
		}
		ps := n * pageSize
		lo, hi := max(off, ps), min(end, ps+pageSize)
		if lo == ps && hi == ps+pageSize {
			if err := v.side.read(rv.epoch, p[lo-off:hi-off], ps); err != nil {
				return err
			}
			continue
		}
		if err := v.side.read(rv.epoch, pg[:], ps); err != nil {
			return err
		}
		copy(p[lo-off:hi-off], pg[lo-ps:hi-ps])
	}
	return nil
}

// overlaps reports whether [off, off+length) touches a redirected block.
func (v *Volume) overlaps(off, length int64) bool {
	if v.rd.countOrZero() == 0 {
		return false
	}
	first, last := v.blockRange(off, length)
	for b := first; b <= last; b++ {
		if v.rd.hasBlock(b) {
			return true
		}
	}
	return false
}
