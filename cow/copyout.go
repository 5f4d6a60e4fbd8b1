package cow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// testCopyOutHook, set only by tests, runs when a copy-out worker starts
// (to hold it while a test writes over pending blocks).
var testCopyOutHook atomic.Pointer[func(ctx context.Context)]

// DefaultCopyOutShare is the share of time a copy-out worker runs while
// the disk is busy: on a small host the worker's hashing and compression
// would otherwise take a whole core from the guest's I/O.
const DefaultCopyOutShare = 0.1

// busyWindow: guest I/O this recent makes the disk busy for pacing.
const busyWindow = 100 * time.Millisecond

// touch notes guest I/O for the copy-out workers' pacing; with nothing
// copying it costs the read and write paths one atomic load.
func (v *Volume) touch() {
	if list := v.copying.Load(); list == nil || len(*list) == 0 {
		return
	}
	now := time.Now().UnixNano()
	if now-v.lastIO.Load() > int64(time.Millisecond) { // one store per ms at most
		v.lastIO.Store(now)
	}
}

// pace sleeps after a copy-out batch that took d while the guest is busy,
// so the worker runs at most its share of the time; idle, it does not
// sleep. The sleep ends early if the guest goes idle or ctx ends. With the
// copy-before-write journal three quarters full it does not sleep either:
// a full journal sends the guest's writes to the slow direct path.
func (v *Volume) pace(ctx context.Context, d time.Duration) {
	if v.jr != nil && v.jr.used() > v.jr.max/4*3 {
		return
	}
	share := v.opts.CopyOutShare
	if share <= 0 {
		share = DefaultCopyOutShare
	}
	if share >= 1 {
		return
	}
	rest := min(time.Duration(float64(d)*(1-share)/share), time.Second)
	for rest > 0 {
		if time.Now().UnixNano()-v.lastIO.Load() > int64(busyWindow) {
			return
		}
		step := min(rest, 20*time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-time.After(step):
		}
		rest -= step
	}
}

// copyBatch is how many blocks the copy-out worker stores per store sync.
const copyBatch = 32

var blockPool sync.Pool // *[]byte of the volume's block size (sizes differ per volume: checked on get)

func (v *Volume) getBlock() *[]byte {
	if p, ok := blockPool.Get().(*[]byte); ok && len(*p) == int(v.blockSize) {
		return p
	}
	b := make([]byte, v.blockSize)
	return &b
}

func putBlock(p *[]byte) { blockPool.Put(p) }

// pendingOwners lists the copying snapshots for which block b is pending,
// oldest first. A block is pending for several snapshots when it was
// written in a later snapshot's epoch while an earlier one still had it
// pending (copy-on-write journals pages and leaves the block pending).
func (v *Volume) pendingOwners(b uint64, buf []*snap) []*snap {
	list := v.copying.Load()
	if list == nil {
		return buf[:0]
	}
	out := buf[:0]
	for _, s := range *list {
		if b < s.pending.Len() && s.pending.Test(b) {
			out = append(out, s)
		}
	}
	return out
}

// newestOwner returns the newest copying snapshot at or before seq for
// which b is pending, or nil.
func (v *Volume) newestOwner(b, seq uint64) *snap {
	list := v.copying.Load()
	if list == nil {
		return nil
	}
	var best *snap
	for _, s := range *list {
		if s.seq() <= seq && (best == nil || s.seq() > best.seq()) && b < s.pending.Len() && s.pending.Test(b) {
			best = s
		}
	}
	return best
}

// copyBeforeWrite saves the old content of [off, off+length) wherever it
// lies in a block still pending for a snapshot before the caller
// overwrites it. It reports whether every block of the range was pending
// (so that durable journal records prove the write) and the end of the
// furthest journal record the write relies on: the write may reach the
// live image only once that is durable (settle).
func (v *Volume) copyBeforeWrite(ctx context.Context, off, length int64) (covered bool, need int64) {
	list := v.copying.Load()
	if list == nil || len(*list) == 0 {
		return false, 0
	}
	covered = true
	end := off + max(length, 1)
	for b := uint64(off >> v.shift); int64(b)<<v.shift < end; b++ {
		start := int64(b) << v.shift
		first := uint32((max(off, start) - start) / journalPage)
		last := uint32((min(end, start+v.blockSize) - 1 - start) / journalPage)
		pending, n := v.saveBlock(ctx, b, first, last)
		if !pending {
			covered = false
		}
		need = max(need, n)
	}
	return covered, need
}

// settle returns once the journal records a write of epoch relies on
// (those ending at or before need) are durable. If the journal cannot
// make them so, the write has not reached the live image yet, so
// composing each affected block now still gives the version of every
// snapshot the write relies on (sealed at or before epoch; later ones
// wait for the write): those are stored directly.
func (v *Volume) settle(ctx context.Context, epoch uint64, off, length, need int64) {
	if need == 0 || v.jr.durable(need) {
		return
	}
	err := v.jr.waitDurable(need)
	if err == nil {
		return
	}
	v.log.Warn("copy-before-write journal sync failed; copying to the store directly", "live", v.path, "err", err)
	v.storeDirect(ctx, epoch, off, length)
}

// storeDirect stores, for every copying snapshot sealed at or before
// epoch, its version of the blocks of [off, off+length) still pending.
func (v *Volume) storeDirect(ctx context.Context, epoch uint64, off, length int64) {
	var ownersBuf [4]*snap
	end := off + max(length, 1)
	for b := uint64(off >> v.shift); int64(b)<<v.shift < end; b++ {
		for _, s := range v.pendingOwners(b, ownersBuf[:0]) {
			if s.seq() <= epoch {
				v.copyBlocks(ctx, s, []uint64{b})
			}
		}
	}
}

func (v *Volume) pagesPerBlock() int { return int(v.blockSize / journalPage) }

// saveBlock makes pages first..last of block b safe to overwrite for
// every snapshot that has b pending: the pages not saved yet go to the
// journal for each (raw); without a journal, or when it cannot take
// them, the snapshot's whole version of the block goes to the store. It
// repeats until a pass finds nothing to do, since a failing snapshot may
// hand the block to another meanwhile. It reports whether b was pending
// (so durable journal records prove the write) and the end of the
// furthest record covering those pages (another writer may have
// journaled them and still be waiting for the sync): the caller must not
// let the write reach the live image before that is durable.
func (v *Volume) saveBlock(ctx context.Context, b uint64, first, last uint32) (pending bool, need int64) {
	var ownersBuf [4]*snap
	mu := &v.stripes[b%stripeCount]
	for {
		owners := v.pendingOwners(b, ownersBuf[:0])
		if len(owners) == 0 {
			return false, 0
		}
		for _, s := range owners {
			<-s.drained // the old epoch's writes in flight are part of this content
		}
		if v.jr == nil {
			for _, s := range owners {
				v.copyBlocks(ctx, s, []uint64{b})
			}
			continue
		}
		// Owners the journal could not serve: failed (the live image could
		// not be read) or stored directly (journal full or broken).
		type miss struct {
			s   *snap
			err error // non-nil: fail s
		}
		var direct []miss
		wrote, stale := false, false
		need = 0
		mu.Lock()
		for _, s := range owners {
			if !s.pending.Test(b) {
				// Stored, or handed to another snapshot since the owners
				// were listed: list them again.
				stale = true
				continue
			}
			w, end, err := v.journalPages(s, b, first, last)
			wrote = wrote || w
			need = max(need, end)
			if errors.Is(err, errReadLive) {
				direct = append(direct, miss{s, err})
			} else if err != nil {
				direct = append(direct, miss{s, nil})
			}
		}
		mu.Unlock()
		for _, m := range direct {
			if m.err != nil {
				v.failSnapshot(m.s, m.err)
			} else {
				// What is journaled already is composed into the stored block.
				v.copyBlocks(ctx, m.s, []uint64{b})
			}
		}
		if len(direct) > 0 {
			continue
		}
		if !wrote && !stale {
			return true, need
		}
	}
}

var errReadLive = errors.New("read live image for copy-on-write")

// journalPages journals the pages of first..last of pending block b that
// s has not saved yet. Caller holds b's stripe lock. It reports whether it
// wrote anything and the end of the furthest record holding any of those
// pages; an error wrapping errReadLive fails s, another tells the caller
// to store the block directly.
func (v *Volume) journalPages(s *snap, b uint64, first, last uint32) (wrote bool, need int64, err error) {
	jb := s.jblock(b, true, v.pagesPerBlock())
	p := v.getBlock()
	defer putBlock(p)
	for pg := first; pg <= last; {
		if jb.isSaved(pg) {
			pg++
			continue
		}
		run := pg
		for run+1 <= last && !jb.isSaved(run+1) {
			run++
		}
		n := run - pg + 1
		buf := (*p)[:int64(n)*journalPage]
		if err := v.readSnapVersion(buf, int64(b)<<v.shift+int64(pg)*journalPage, s.seq()); err != nil {
			return wrote, 0, fmt.Errorf("%w: %v", errReadLive, err)
		}
		off, err := v.jr.append(s.seq(), s.nonce(), b, pg, buf)
		if err != nil {
			if !errors.Is(err, errJournalFull) && !errors.Is(err, errJournalBroken) {
				v.log.Warn("copy-before-write journal write failed; copying to the store directly", "live", v.path, "err", err)
			}
			return wrote, 0, err
		}
		jb.add(jrecord{off: off, first: pg, n: n})
		wrote = true
		pg = run + 1
	}
	for _, r := range jb.records {
		if r.first <= last && r.first+r.n > first {
			need = max(need, r.end())
		}
	}
	if need > 0 {
		need = v.jr.posOf(need)
	}
	return wrote, need, nil
}

// compose fills buf with s's version of pending block b: the live image,
// with the pages overwritten since the seal taken from the journal.
// Caller holds b's stripe lock.
func (v *Volume) compose(s *snap, b uint64, buf []byte) error {
	if err := v.readSnapVersion(buf, int64(b)<<v.shift, s.seq()); err != nil {
		return err
	}
	jb := s.jblock(b, false, 0)
	if jb == nil {
		return nil
	}
	for _, r := range jb.records {
		if err := v.jr.readPages(s.seq(), b, r, buf[int64(r.first)*journalPage:]); err != nil {
			return err
		}
	}
	return nil
}

// dropJournal forgets s's journal records (s failed or is deleted,
// durably: no later start adopts them) and releases them.
func (v *Volume) dropJournal(s *snap) {
	if v.jr == nil {
		return
	}
	s.jmu.Lock()
	blocks := make([]uint64, 0, len(s.jblocks))
	for b := range s.jblocks {
		blocks = append(blocks, b)
	}
	s.jmu.Unlock()
	n := 0
	for _, b := range blocks {
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		n += s.forget(b)
		mu.Unlock()
	}
	v.jr.release(n)
}

// copyBlocks stores s's version of blocks pending for s (composed from
// the live image and the journal) as s's entries, durably, then clears
// them from pending and releases their journal records. On a store error
// s fails (its pending blocks pass on) and the error is returned.
func (v *Volume) copyBlocks(ctx context.Context, s *snap, blocks []uint64) error {
	entries := make([]store.Entry, 0, len(blocks))
	bufs := make([]*[]byte, 0, len(blocks))
	defer func() {
		for _, p := range bufs {
			putBlock(p)
		}
	}()
	for _, b := range blocks {
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		if s.pending.Test(b) {
			p := v.getBlock()
			if err := v.compose(s, b, *p); err != nil {
				mu.Unlock()
				putBlock(p)
				v.failSnapshot(s, fmt.Errorf("copy-out: %w", err))
				return err
			}
			bufs = append(bufs, p)
			entries = append(entries, store.Entry{Block: b, Data: *p})
		}
		mu.Unlock()
	}
	if len(entries) == 0 {
		return nil
	}
	// Once stored, a block's journal records no longer prove the writes
	// that made them; the tracker must.
	if err := v.flushTrackers(); err != nil {
		v.trackErr(err)
	}
	// Writes to these blocks meanwhile journal their pages and store the
	// same version themselves if they must: storing an entry twice is safe.
	err := v.st.PutEntries(ctx, v.opts.DiskID, s.seq(), entries)
	if err == nil {
		err = v.storeSync.Wait()
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // stopping: the work resumes at the next start
		}
		v.failSnapshot(s, err)
		return err
	}
	released := 0
	for _, e := range entries {
		mu := &v.stripes[e.Block%stripeCount]
		mu.Lock()
		if s.pending.TestAndClear(e.Block) {
			released += s.forget(e.Block)
		}
		mu.Unlock()
	}
	if v.jr != nil {
		v.jr.release(released)
	}
	return nil
}

// readLive reads one block of the live image; past the end reads zeros.
func (v *Volume) readLive(p []byte, off int64) error {
	n, err := v.f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		return nil
	}
	return err
}

// startWorker starts s's copy-out worker unless one runs. Caller holds mu.
func (v *Volume) startWorker(s *snap) {
	if s.working {
		return
	}
	s.working = true
	ctx, cancel := context.WithCancel(v.stopCtx)
	s.cancel, s.done = cancel, make(chan struct{})
	v.workers.Add(1)
	go v.copyOut(ctx, s, s.done)
}

// stopWorker stops s's worker, if any, and waits for it. Caller must not
// hold mu.
func (v *Volume) stopWorker(s *snap) {
	v.mu.Lock()
	cancel, done := s.cancel, s.done
	v.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// copyOut copies every pending block of s to the store, then marks s
// ready. It ends early when the volume closes (work resumes at the next
// Open) or s fails.
func (v *Volume) copyOut(ctx context.Context, s *snap, done chan struct{}) {
	defer v.workers.Done()
	defer close(done)
	<-s.drained
	if h := testCopyOutHook.Load(); h != nil {
		(*h)(ctx)
	}
	stop := func() {
		v.mu.Lock()
		s.working = false
		v.mu.Unlock()
	}
	for {
		if ctx.Err() != nil {
			stop()
			return
		}
		// Blocks with journal records first: they hold journal space.
		if err := v.copyJournaled(ctx, s); err != nil {
			stop()
			return
		}
		blocks := s.pending.Members()
		if len(blocks) == 0 {
			if v.finishCopy(s) {
				return
			}
			continue
		}
		for i := 0; i < len(blocks); i += copyBatch {
			batch := blocks[i:min(i+copyBatch, len(blocks))]
			t0 := time.Now()
			if err := v.copyBlocks(ctx, s, batch); err != nil {
				stop()
				return
			}
			v.pace(ctx, time.Since(t0))
			if i%(8*copyBatch) == 0 {
				if err := v.copyJournaled(ctx, s); err != nil {
					stop()
					return
				}
			}
		}
	}
}

// copyJournaled stores the blocks of s that have journal records.
func (v *Volume) copyJournaled(ctx context.Context, s *snap) error {
	for {
		s.jmu.Lock()
		batch := make([]uint64, 0, copyBatch)
		for b := range s.jblocks {
			batch = append(batch, b)
			if len(batch) == copyBatch {
				break
			}
		}
		s.jmu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		slices.Sort(batch)
		t0 := time.Now()
		if err := v.copyBlocks(ctx, s, batch); err != nil {
			return err
		}
		v.pace(ctx, time.Since(t0))
	}
}

// finishCopy marks s ready if nothing is pending; it reports whether the
// worker is done.
func (v *Volume) finishCopy(s *snap) bool {
	v.mu.Lock()
	if s.pending.Count() != 0 {
		v.mu.Unlock()
		return false
	}
	s.working = false
	if s.rec.State != StateCopying {
		v.mu.Unlock()
		return true
	}
	s.rec.State = StateReady
	v.removeCopying(s)
	rec := s.rec
	v.mu.Unlock()
	// If this record does not become durable the snapshot reads as copying
	// after a restart, finds nothing pending and turns ready again.
	if err := v.st.PutRecord(snapKey(v.opts.DiskID, rec.Seq), rec); err == nil {
		err = v.storeSync.Wait()
	} else {
		v.log.Warn("could not record snapshot as ready", "snapshot", rec.Name, "err", err)
	}
	v.log.Info("snapshot ready", "snapshot", rec.Name, "blocks", s.total)
	return true
}

// failSnapshot turns s failed because the store could not keep it. Its
// pending blocks pass to its successor (whose version of them is the live
// content) or back to the live epoch, so guest writes go on and every
// other snapshot stays complete. Its stored entries stay: successors read
// them. Deleting it later merges it away.
func (v *Volume) failSnapshot(s *snap, cause error) {
	v.mu.Lock()
	if s.rec.State != StateCopying {
		v.mu.Unlock()
		return
	}
	s.rec.State = StateFailed
	s.rec.Reason = failReason(cause)
	v.log.Error("snapshot failed; guest writes go on", "snapshot", s.rec.Name, "reason", s.rec.Reason)
	to, release, broken := v.passPending(s)
	v.mu.Unlock()
	v.afterPass(to, broken)
	if err := v.persistRecord(s); err != nil {
		// Its journal records stay: if the failure is not recorded, the
		// next start still finds the snapshot copying and needs them.
		v.log.Warn("could not record snapshot failure", "snapshot", s.rec.Name, "err", err)
		return
	}
	if v.jr != nil {
		v.jr.release(release)
	}
}

// afterPass persists the record of the snapshot that took over blocks
// (before the giver's new state is recorded: after a crash in between
// both claim them, which is harmless) or fails it if it could not.
func (v *Volume) afterPass(to *snap, broken error) {
	if to != nil && broken == nil {
		if err := v.persistRecord(to); err != nil {
			broken = err
		}
	}
	if broken != nil && to != nil {
		v.failSnapshot(to, broken)
	}
}

func failReason(err error) string {
	if errors.Is(err, block.ErrNoSpace) {
		return "the snapshot store is full: " + err.Error()
	}
	return err.Error() + " — the disk and other snapshots are intact; take a new snapshot"
}

// passPending moves s's pending blocks to the next snapshot in the chain
// that is not failed (making it copying again if needed), or to the live
// epoch's dirty set (durably). Caller holds mu.
//
// A block the successor has pending too already has its own version
// there. One it does not have was unchanged between the two seals, so its
// version is s's: the pages s saved in the journal are journaled again
// for the successor (under the block's stripe lock, so no write slips in
// between). If that fails the successor cannot be complete and is
// returned as broken; the caller fails it.
//
// It returns the snapshot that took the blocks, whose record the caller
// must persist (nil when it is not committed yet: its commit does), and
// how many of s's journal records the caller must release once s's new
// state is durable.
func (v *Volume) passPending(s *snap) (to *snap, release int, broken error) {
	found := false
	for _, x := range v.snaps {
		if x == s {
			found = true
			continue
		}
		if found && x.readable() {
			to = x
			break
		}
	}
	moved := s.pending.Members()
	if to != nil {
		if to.rec.State == StateReady {
			to.rec.State = StateCopying
			v.addCopying(to)
		}
	} else if err := v.track.Load().setAll(s.pending); err != nil && !v.trackLost.Swap(true) {
		v.log.Error("change tracking failed; the next snapshot will copy every allocated block", "err", err)
	}
	relabeled := false
	buf := v.getBlock()
	defer putBlock(buf)
	for _, b := range moved {
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		// Disks only grow, so a later snapshot's bitmap covers every
		// block of an earlier one.
		if to != nil && !to.pending.Test(b) && v.ownVersion(to, s, b, &broken) {
			// The successor (or a failed snapshot between) stored a
			// version of its own: s's is not its.
		} else if to != nil && !to.pending.Test(b) {
			if jb := s.jblock(b, false, 0); jb != nil && broken == nil {
				w, err := v.relabel(s, to, b, jb, *buf)
				relabeled = relabeled || w
				if err != nil {
					broken = fmt.Errorf("take over block %d from snapshot %q: %w", b, s.rec.Name, err)
				}
			}
			to.pending.Set(b)
			to.total++
		}
		s.pending.TestAndClear(b)
		release += s.forget(b)
		mu.Unlock()
	}
	if relabeled && broken == nil {
		if err := v.jr.waitAll(); err != nil {
			broken = fmt.Errorf("take over blocks from snapshot %q: %w", s.rec.Name, err)
		}
	}
	v.removeCopying(s)
	if to != nil && to.rec.State == StateCopying {
		v.startWorker(to)
	}
	if to != nil && !to.committed {
		to.repersist = true
		return nil, release, broken
	}
	return to, release, broken
}

// ownVersion reports whether block b has a stored version newer than s
// at or before to (written after s's seal and copied out for to or for a
// failed snapshot between them). A lookup error breaks to.
func (v *Volume) ownVersion(to, s *snap, b uint64, broken *error) bool {
	ref, found, err := v.st.Lookup(context.Background(), v.opts.DiskID, b, to.seq())
	if err != nil {
		if *broken == nil {
			*broken = fmt.Errorf("take over block %d from snapshot %q: %w", b, s.rec.Name, err)
		}
		return false
	}
	return found && ref.Seq > s.seq()
}

// relabel journals s's saved pages of block b again as to's. Caller holds
// b's stripe lock.
func (v *Volume) relabel(s, to *snap, b uint64, jb *jblock, buf []byte) (wrote bool, err error) {
	tb := to.jblock(b, true, v.pagesPerBlock())
	for _, r := range jb.records {
		data := buf[:int64(r.n)*journalPage]
		if err := v.jr.readPages(s.seq(), b, r, data); err != nil {
			return wrote, err
		}
		off, err := v.jr.append(to.seq(), to.nonce(), b, r.first, data)
		if err != nil {
			return wrote, err
		}
		tb.add(jrecord{off: off, first: r.first, n: r.n})
		wrote = true
	}
	return wrote, nil
}

// stopWorkers stops every copy-out worker and waits for them.
func (v *Volume) stopWorkers() {
	if v.stop != nil {
		v.stop()
	}
	v.workers.Wait()
}
