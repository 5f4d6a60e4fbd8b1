package cow

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2/roaring64"
	"github.com/cairn-storage/cairn/block"
)

// Redirect-on-write (docs/design.md, "Redirect-on-write").
//
// While a snapshot copies out, a guest write to a block it still needs
// does not overwrite the live image: its pages go to the side file of
// the write's epoch (side.go), at their own offsets, and an index in
// memory says which epochs hold a version of each redirected page. The
// image keeps the content the copy-out reads, so the write saves nothing
// first and waits for no sync; a FLUSH (or FUA, or a seal) makes the side
// files durable with the live image. The side files prove their writes
// after a crash (recovery rebuilds the index from their data), so such
// writes mark the change tracker lazily.
//
// Versions: snapshot s's version of a redirected page is its newest
// version of an epoch before s (written before s was sealed), else the
// live image's; the live version is the newest. Once a block has a
// redirected page every write to the block is redirected (a direct write
// would hide under the index) until the redirects are retired: when
// nothing copies, the newest version of every page is merged into the
// live image, the image is synced, and the side files are deleted. The
// last merge round runs with writes held, briefly.
//
// A side-file write that fails (a full filesystem, an I/O error) fails
// the copying snapshots, merges what is redirected, and the write goes to
// the live image (see writeRedirected): guest writes go on.

// rver is one version of a redirected page: the page at its own offset in
// the side file of epoch. merged: the live image holds it (a merge round
// wrote it; only ever set for the newest version).
type rver struct {
	epoch  uint64
	merged bool
}

// redirects indexes the redirected pages of a volume: per epoch, the
// pages its side file holds, as compressed bitmaps (a fully rewritten
// 1 TiB disk takes tens of MiB per epoch, not a map entry per page).
type redirects struct {
	// mu guards everything below but count. Readers of side files hold it
	// shared while they read a page, so the files cannot go under them
	// (retire takes it exclusively).
	mu     sync.RWMutex
	layers []rlayer          // ascending epoch
	any    *roaring64.Bitmap // pages with a version in some layer
	merged *roaring64.Bitmap // pages whose newest version the live image holds
	blocks *roaring64.Bitmap // blocks with a redirected page
	count  atomic.Int64      // any's cardinality: 0 lets the read path skip the index

	retiring atomic.Bool
	retirer  sync.WaitGroup
}

// rlayer is the pages redirected in one epoch.
type rlayer struct {
	epoch uint64
	pages *roaring64.Bitmap
}

func newRedirects() *redirects {
	r := &redirects{}
	r.reset()
	return r
}

// reset forgets every version. Caller holds mu or owns r.
func (r *redirects) reset() {
	r.layers = nil
	r.any, r.merged, r.blocks = roaring64.New(), roaring64.New(), roaring64.New()
	r.count.Store(0)
}

// layer returns epoch's layer, adding it if need be. Caller holds mu.
func (r *redirects) layer(epoch uint64) *roaring64.Bitmap {
	i, found := slices.BinarySearchFunc(r.layers, epoch, func(l rlayer, e uint64) int {
		switch {
		case l.epoch < e:
			return -1
		case l.epoch > e:
			return 1
		}
		return 0
	})
	if !found {
		r.layers = slices.Insert(r.layers, i, rlayer{epoch: epoch, pages: roaring64.New()})
	}
	return r.layers[i].pages
}

// add indexes pages first..first+n-1 of block b, written in epoch (a
// rewrite in an epoch already holding the page replaces that version in
// place). Caller holds b's stripe lock, as a merge round does, so no
// page is marked merged that a rewrite changed meanwhile.
func (r *redirects) add(b uint64, shift uint, first, n uint32, epoch uint64) {
	base := uint64(b) << shift / journalPage
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.layer(epoch)
	l.AddRange(base+uint64(first), base+uint64(first+n))
	for pg := base + uint64(first); pg < base+uint64(first+n); pg++ {
		if r.any.CheckedAdd(pg) {
			r.count.Add(1) // counted as added: no cardinality walk per write
		}
	}
	r.merged.RemoveRange(base+uint64(first), base+uint64(first+n))
	r.blocks.Add(b)
}

// hasBlock reports whether block b has a redirected page.
func (r *redirects) hasBlock(b uint64) bool {
	if r.count.Load() == 0 {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.blocks.Contains(b)
}

// version returns page pg's newest version of an epoch before seq
// (seq = MaxUint64: the live version). Caller holds mu (either side).
func (r *redirects) version(pg, seq uint64) (rver, bool) {
	if !r.any.Contains(pg) {
		return rver{}, false
	}
	newest := true
	for i := len(r.layers) - 1; i >= 0; i-- {
		l := r.layers[i]
		if !l.pages.Contains(pg) {
			continue
		}
		if l.epoch < seq {
			return rver{epoch: l.epoch, merged: newest && r.merged.Contains(pg)}, true
		}
		newest = false
	}
	return rver{}, false
}

const liveSeq = ^uint64(0)

// readVersion overlays on buf (the live image's content at off, a whole
// number of pages, page-aligned) the versions of snapshot seq (liveSeq:
// the live disk) of the redirected pages in it. Caller holds r.mu shared.
func (v *Volume) readVersion(buf []byte, off int64, seq uint64) error {
	for p := int64(0); p < int64(len(buf)); p += journalPage {
		rv, ok := v.rd.version(uint64(off+p)/journalPage, seq)
		if !ok {
			continue
		}
		if err := v.side.read(rv.epoch, buf[p:p+journalPage], off+p); err != nil {
			return err
		}
	}
	return nil
}

// readOverlay fixes up p, just read from the live image at off, with the
// live versions of redirected pages. Caller holds v.rd.mu shared.
func (v *Volume) readOverlay(p []byte, off int64) error {
	end := off + int64(len(p))
	var page [journalPage]byte
	for pg := off / journalPage; pg*journalPage < end; pg++ {
		rv, ok := v.rd.version(uint64(pg), liveSeq)
		if !ok {
			continue
		}
		ps := pg * journalPage
		lo, hi := max(off, ps), min(end, ps+journalPage)
		if lo == ps && hi == ps+journalPage {
			if err := v.side.read(rv.epoch, p[lo-off:hi-off], ps); err != nil {
				return err
			}
			continue
		}
		if err := v.side.read(rv.epoch, page[:], ps); err != nil {
			return err
		}
		copy(p[lo-off:hi-off], page[lo-ps:hi-ps])
	}
	return nil
}

// overlaps reports whether [off, off+length) touches a redirected block.
func (v *Volume) overlaps(off, length int64) bool {
	if v.rd == nil || v.rd.count.Load() == 0 {
		return false
	}
	for b := uint64(off >> v.shift); int64(b)<<v.shift < off+max(length, 1); b++ {
		if v.rd.hasBlock(b) {
			return true
		}
	}
	return false
}

// redirectBlock reports whether a write to block b is redirected: b has
// redirected pages, or it is pending for a copying snapshot.
func (v *Volume) redirectBlock(b uint64) bool {
	return v.rd.hasBlock(b) || v.allPending(b, b)
}

// redirecting reports whether a write may be redirected: redirects are
// on and something copies or pages are redirected. Otherwise the write
// paths skip splitWrite (and its closure) altogether.
func (v *Volume) redirecting() bool {
	if v.rd == nil {
		return false
	}
	list := v.copying.Load()
	return v.rd.count.Load() > 0 || (list != nil && len(*list) > 0)
}

// splitWrite calls fn for the runs of [off, off+length) that are
// redirected or written in place, in order; without redirects in play,
// once for the whole range.
func (v *Volume) splitWrite(off, length int64, fn func(off, length int64, redirect bool) error) error {
	if !v.redirecting() || length <= 0 {
		return fn(off, length, false)
	}
	end := off + length
	for off < end {
		b := uint64(off >> v.shift)
		red := v.redirectBlock(b)
		runEnd := min(end, int64(b+1)<<v.shift)
		for runEnd < end {
			nb := uint64(runEnd >> v.shift)
			if v.redirectBlock(nb) != red {
				break
			}
			runEnd = min(end, int64(nb+1)<<v.shift)
		}
		if err := fn(off, runEnd-off, red); err != nil {
			return err
		}
		off = runEnd
	}
	return nil
}

// writeRedirected writes p (nil: zeros) of length bytes at off to the
// current epoch's side file. If that fails, every copying snapshot fails,
// the redirects retire, and the write goes to the live image (guest
// writes go on, DESIGN.md invariant 5).
func (v *Volume) writeRedirected(ctx context.Context, p []byte, off, length int64) (err error) {
	first := uint64(off >> v.shift)
	last := uint64((off + length - 1) >> v.shift)
	for {
		shape := v.shape.Load()
		t := v.track.Load()
		// The side files prove the write after a crash (replayJournal
		// marks their blocks), and retire flushes the tracker before
		// they go.
		v.trackErr(t.markLazy(first, last))
		v.gate.RLock()
		t.enter()
		if v.shape.Load() != shape {
			t.exit()
			v.gate.RUnlock()
			continue
		}
		err = v.redirectRange(t.epoch, p, off, length)
		t.exit()
		v.gate.RUnlock()
		if err == nil {
			return nil
		}
		v.log.Error("redirected write failed; failing the copying snapshots to write in place", "live", v.path, "err", err)
		if rerr := v.abandonRedirects(err); rerr != nil {
			return fmt.Errorf("write at %d: %v; and the redirected writes could not be merged into the live image: %w", off, err, rerr)
		}
		return v.writeInPlace(ctx, p, off, length)
	}
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
		first := uint32((pos - bstart) / journalPage)
		lastPg := uint32((wend - 1 - bstart) / journalPage)
		n := lastPg - first + 1
		rstart := bstart + int64(first)*journalPage
		buf := (*bp)[:int64(n)*journalPage]
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		err := func() error {
			if pos != rstart {
				if err := v.livePage(buf[:journalPage], rstart); err != nil {
					return err
				}
			}
			if rend := rstart + int64(n)*journalPage; wend != rend && (n > 1 || pos == rstart) {
				if err := v.livePage(buf[len(buf)-journalPage:], rend-journalPage); err != nil {
					return err
				}
			}
			if p != nil {
				copy(buf[pos-rstart:], p[pos-off:wend-off])
			} else {
				clear(buf[pos-rstart : wend-rstart])
			}
			if err := v.side.write(epoch, buf, rstart); err != nil {
				return err
			}
			v.rd.add(b, v.shift, first, n, epoch)
			return nil
		}()
		mu.Unlock()
		if err != nil {
			return err
		}
		pos = wend
	}
	return nil
}

// readSnapVersion reads snapshot seq's version of the pages at off (a
// whole number, page-aligned) from the live image and redirected writes
// (not from the copy-before-write journal).
func (v *Volume) readSnapVersion(buf []byte, off int64, seq uint64) error {
	if err := v.readLive(buf, off); err != nil {
		return fmt.Errorf("read live image: %w", err)
	}
	if v.rd == nil || v.rd.count.Load() == 0 {
		return nil
	}
	v.rd.mu.RLock()
	defer v.rd.mu.RUnlock()
	return v.readVersion(buf, off, seq)
}

func (r *redirects) countOrZero() int64 {
	if r == nil {
		return 0
	}
	return r.count.Load()
}

// livePage reads the live version of the page at off.
func (v *Volume) livePage(buf []byte, off int64) error {
	return v.readSnapVersion(buf, off, liveSeq)
}

// abandonRedirects fails every copying snapshot (their redirected writes
// could not be kept: cause) and retires the redirects, so writes go to
// the live image again.
func (v *Volume) abandonRedirects(cause error) error {
	list := v.copying.Load()
	if list != nil {
		for _, s := range *list {
			v.failSnapshot(s, fmt.Errorf("a redirected write failed: %w", cause))
		}
	}
	return v.retire(context.Background(), true)
}

// kickRetire starts retiring the redirected writes in the background if
// there are any and nothing copies.
func (v *Volume) kickRetire() {
	if v.rd == nil || v.rd.count.Load() == 0 {
		return
	}
	if list := v.copying.Load(); list != nil && len(*list) > 0 {
		return
	}
	if !v.rd.retiring.CompareAndSwap(false, true) {
		return
	}
	v.rd.retirer.Add(1)
	go func() {
		defer v.rd.retirer.Done()
		defer v.rd.retiring.Store(false)
		for attempt := 0; v.stopCtx.Err() == nil; attempt++ {
			err := v.retire(v.stopCtx, false)
			if err == nil || errors.Is(err, errStillCopying) {
				return
			}
			if attempt%50 == 0 {
				v.log.Warn("could not merge redirected writes into the live image; retrying", "live", v.path, "err", err)
			}
			select {
			case <-v.stopCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

var errStillCopying = errors.New("a snapshot is copying")

// retire merges the newest version of every redirected page into the
// live image, syncs it, and deletes the side files. Rounds run while
// writes go on; the last holds them (the gate), so no write lands in a
// merged page between the last round and the files going. With
// force it merges even while snapshots copy (abandonRedirects has failed
// them; Flatten drops them).
func (v *Volume) retire(ctx context.Context, force bool) error {
	copying := func() bool {
		list := v.copying.Load()
		return !force && list != nil && len(*list) > 0
	}
	for round := 0; round < 8; round++ {
		if copying() {
			return errStillCopying
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		todo := v.unmerged()
		if len(todo) <= 256 {
			break
		}
		if err := v.mergePages(todo, force); err != nil {
			return err
		}
	}
	v.gate.Lock()
	defer v.gate.Unlock()
	if copying() {
		return errStillCopying
	}
	// Every page, even of a block a snapshot sealed meanwhile has
	// pending (a seal does not take the gate): with writes held, the
	// newest version of a page is that snapshot's version too.
	if err := v.mergePages(v.unmerged(), true); err != nil {
		return err
	}
	if err := v.liveSync.Wait(); err != nil {
		return fmt.Errorf("fdatasync live image: %w", err)
	}
	// The side files stop proving their writes: the tracker must.
	if err := v.flushTrackers(); err != nil {
		v.trackErr(err)
	}
	v.rd.mu.Lock()
	defer v.rd.mu.Unlock()
	if err := v.side.removeAll(); err != nil {
		return err
	}
	v.rd.reset()
	return nil
}

// unmerged lists the pages whose live version is not in the live image.
func (v *Volume) unmerged() []uint64 {
	v.rd.mu.RLock()
	defer v.rd.mu.RUnlock()
	return roaring64.AndNot(v.rd.any, v.rd.merged).ToArray()
}

// mergePages writes the live version of each page into the live image.
// A page of a block still pending for a copying snapshot is skipped (the
// snapshot reads the image) unless every copying snapshot is being
// dropped (force).
func (v *Volume) mergePages(pages []uint64, force bool) error {
	var buf [journalPage]byte
	for _, pg := range pages {
		off := int64(pg) * journalPage
		b := uint64(off >> v.shift)
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		err := func() error {
			if !force && v.allPending(b, b) {
				return nil // the copying snapshot reads the live image
			}
			v.rd.mu.RLock()
			rv, ok := v.rd.version(pg, liveSeq)
			var err error
			if ok && !rv.merged {
				err = v.side.read(rv.epoch, buf[:], off)
			}
			v.rd.mu.RUnlock()
			if !ok || rv.merged || err != nil {
				return err
			}
			if _, err := v.f.WriteAt(buf[:], off); err != nil {
				return fmt.Errorf("merge redirected write into live image at %d: %w", off, err)
			}
			v.rd.mu.Lock()
			v.rd.merged.Add(pg) // no rewrite since the read: we hold the stripe lock
			v.rd.mu.Unlock()
			return nil
		}()
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// Flatten merges every redirected write into the live image and starts
// deletes the side files, even while snapshots copy: for a disk being deleted
// whose live image stays (adopted), so the file holds everything written.
// Copy-out workers are stopped; the volume must be closed afterwards.
func (v *Volume) Flatten() error {
	if v.rd == nil || v.readOnly {
		return nil
	}
	v.stopWorkers()
	if v.rd.count.Load() == 0 {
		return nil
	}
	return v.retire(context.Background(), true)
}

// writeInPlace is a write to the live image (copying out first what a
// snapshot still needs).
func (v *Volume) writeInPlace(ctx context.Context, p []byte, off, length int64) error {
	t := v.beginWrite(ctx, off, length)
	if h := testWriteHook.Load(); h != nil {
		(*h)(off)
	}
	var err error
	if p != nil {
		_, err = v.f.WriteAt(p, off)
	} else {
		err = v.writeZeros(off, length)
	}
	v.endWrite(t)
	return err
}

// overlayExtents marks as data the redirected pages in the extents ext
// of [off, off+length).
func (v *Volume) overlayExtents(ext []block.Extent, off, length int64) []block.Extent {
	if v.rd == nil || v.rd.count.Load() == 0 {
		return ext
	}
	v.rd.mu.RLock()
	var data []int64 // page offsets in range
	end := off + length
	it := v.rd.any.Iterator()
	it.AdvanceIfNeeded(uint64(off / journalPage))
	for it.HasNext() {
		o := int64(it.Next()) * journalPage
		if o >= end {
			break
		}
		data = append(data, o)
	}
	v.rd.mu.RUnlock()
	if len(data) == 0 {
		return ext
	}
	// Rebuild the extents with the data ranges forced.
	var out []block.Extent
	push := func(l int64, flags uint32) {
		if l <= 0 {
			return
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += l
			return
		}
		out = append(out, block.Extent{Length: l, Flags: flags})
	}
	pos, di := off, 0
	for _, e := range ext {
		eend := pos + e.Length
		for pos < eend {
			for di < len(data) && data[di]+journalPage <= pos {
				di++
			}
			if e.Flags == 0 {
				push(eend-pos, 0)
				pos = eend
				break
			}
			if di < len(data) && data[di] <= pos {
				n := min(eend, data[di]+journalPage) - pos
				push(n, 0)
				pos += n
				continue
			}
			next := eend
			if di < len(data) {
				next = min(next, data[di])
			}
			push(next-pos, e.Flags)
			pos = next
		}
	}
	return out
}
