package cow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cairn-storage/cairn/store"
)

// testCopyOutHook, set only by tests, runs when a copy-out worker starts
// (to hold it while a test writes over pending blocks).
var testCopyOutHook atomic.Pointer[func(ctx context.Context)]

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

// pendingOwner returns the copying snapshot for which block b is pending,
// or nil. At most one snapshot has a given block pending.
func (v *Volume) pendingOwner(b uint64) *snap {
	list := v.copying.Load()
	if list == nil {
		return nil
	}
	for _, s := range *list {
		if b < s.pending.Len() && s.pending.Test(b) {
			return s
		}
	}
	return nil
}

// copyBeforeWrite copies out the old content of every block in
// first..last that is still pending for a snapshot, durably, before the
// caller overwrites it.
func (v *Volume) copyBeforeWrite(ctx context.Context, first, last uint64) {
	list := v.copying.Load()
	if list == nil || len(*list) == 0 {
		return
	}
	for b := first; b <= last; b++ {
		// A failed copy passes the block to another snapshot (or to the
		// live epoch), so look again until no snapshot has it pending.
		for s := v.pendingOwner(b); s != nil; s = v.pendingOwner(b) {
			v.copyOnWrite(ctx, s, b)
		}
	}
}

// copyOnWrite saves block b's old content for s before a write: into the
// journal (raw, one shared fdatasync) when there is one, else into the
// store. It returns with b no longer pending for s.
func (v *Volume) copyOnWrite(ctx context.Context, s *snap, b uint64) {
	<-s.drained // the old epoch's writes in flight are part of this content
	if v.jr == nil {
		v.copyBlocks(ctx, s, []uint64{b})
		return
	}
	mu := &v.stripes[b%stripeCount]
	mu.Lock()
	if !s.pending.Test(b) {
		mu.Unlock()
		return
	}
	p := v.getBlock()
	defer putBlock(p)
	if err := v.readLive(*p, int64(b)<<v.shift); err != nil {
		mu.Unlock()
		v.failSnapshot(s, fmt.Errorf("read live image for copy-on-write: %w", err))
		return
	}
	off, err := v.jr.append(s.seq(), s.nonce(), b, *p)
	if err != nil {
		mu.Unlock()
		if !errors.Is(err, errJournalFull) && !errors.Is(err, errJournalBroken) {
			v.log.Warn("copy-before-write journal write failed; copying to the store directly", "live", v.path, "err", err)
		}
		v.copyBlocks(ctx, s, []uint64{b})
		return
	}
	// journaled before pending is cleared: whoever sees b not pending
	// finds it journaled (or, later, stored).
	s.jmu.Lock()
	s.journaled[b] = off
	s.jmu.Unlock()
	s.pending.TestAndClear(b)
	mu.Unlock()
	if err := v.jr.wait(); err == nil {
		return
	}
	// The slot may not be durable: put b back to pending (the live image
	// still holds it: the caller has not written yet) unless the worker
	// stored it meanwhile, and copy it to the store instead.
	mu.Lock()
	s.jmu.Lock()
	cur, ok := s.journaled[b]
	if ok && cur == off {
		delete(s.journaled, b)
	}
	s.jmu.Unlock()
	if ok && cur == off {
		s.pending.Set(b)
	}
	mu.Unlock()
	if ok && cur == off {
		v.jr.release(1)
		v.log.Warn("copy-before-write journal sync failed; copying to the store directly", "live", v.path)
		v.copyBlocks(ctx, s, []uint64{b})
	}
}

// ingestJournaled stores s's journaled blocks, a batch at a time, and
// releases their journal slots.
func (v *Volume) ingestJournaled(ctx context.Context, s *snap) error {
	type slot struct {
		b   uint64
		off int64
	}
	for {
		var batch []slot
		s.jmu.Lock()
		for b, off := range s.journaled {
			batch = append(batch, slot{b, off})
			if len(batch) == copyBatch {
				break
			}
		}
		s.jmu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		entries := make([]store.Entry, 0, len(batch))
		bufs := make([]*[]byte, 0, len(batch))
		release := func() {
			for _, p := range bufs {
				putBlock(p)
			}
		}
		for _, x := range batch {
			p := v.getBlock()
			bufs = append(bufs, p)
			if err := v.jr.read(x.off, *p); err != nil {
				release()
				v.failSnapshot(s, err)
				return err
			}
			entries = append(entries, store.Entry{Block: x.b, Data: *p})
		}
		err := v.st.PutEntries(ctx, v.opts.DiskID, s.seq(), entries)
		if err == nil {
			err = v.storeSync.Wait()
		}
		release()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // stopping: the journal keeps the blocks for the next start
			}
			v.failSnapshot(s, err)
			return err
		}
		n := 0
		for _, x := range batch {
			mu := &v.stripes[x.b%stripeCount]
			mu.Lock() // readers of the slot hold it
			s.jmu.Lock()
			if cur, ok := s.journaled[x.b]; ok && cur == x.off {
				delete(s.journaled, x.b)
				n++
			}
			s.jmu.Unlock()
			mu.Unlock()
		}
		v.jr.release(n)
	}
}

// dropJournaled forgets s's journaled blocks (s failed or is deleted,
// durably: no later start adopts them) and releases their slots.
func (v *Volume) dropJournaled(s *snap) {
	if v.jr == nil {
		return
	}
	s.jmu.Lock()
	blocks := make([]uint64, 0, len(s.journaled))
	for b := range s.journaled {
		blocks = append(blocks, b)
	}
	s.jmu.Unlock()
	n := 0
	for _, b := range blocks {
		mu := &v.stripes[b%stripeCount]
		mu.Lock()
		s.jmu.Lock()
		if _, ok := s.journaled[b]; ok {
			delete(s.journaled, b)
			n++
		}
		s.jmu.Unlock()
		mu.Unlock()
	}
	v.jr.release(n)
}

// copyBlocks stores the live content of blocks pending for s as s's
// entries, durably, then clears them from pending. On a store error s
// fails (its pending blocks pass on) and the error is returned.
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
			err := v.readLive(*p, int64(b)<<v.shift)
			if err != nil {
				mu.Unlock()
				v.failSnapshot(s, fmt.Errorf("read live image for copy-out: %w", err))
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
	// Writes to these blocks meanwhile copy the same content themselves
	// (they still see the blocks pending): storing an entry twice is safe.
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
	for _, e := range entries {
		s.pending.TestAndClear(e.Block)
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
		// Journaled blocks first: they hold journal space.
		if err := v.ingestJournaled(ctx, s); err != nil {
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
			if err := v.copyBlocks(ctx, s, batch); err != nil {
				stop()
				return
			}
			if i%(16*copyBatch) == 0 && s.journaledCount() > 0 {
				if err := v.ingestJournaled(ctx, s); err != nil {
					stop()
					return
				}
			}
		}
	}
}

// finishCopy marks s ready if nothing is pending; it reports whether the
// worker is done.
func (v *Volume) finishCopy(s *snap) bool {
	v.mu.Lock()
	// pending before journaled: a copy-on-write journals a block before it
	// clears it from pending.
	if s.pending.Count() != 0 || s.journaledCount() != 0 {
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
	to := v.passPending(s)
	v.mu.Unlock()
	// The successor's record names the blocks it took over before this
	// one says failed: after a crash in between both claim them, which is
	// harmless (both versions are the live content).
	if to != nil {
		if err := v.persistRecord(to); err != nil {
			v.log.Warn("could not record the blocks a failed snapshot passed on", "snapshot", to.rec.Name, "err", err)
		}
	}
	if err := v.persistRecord(s); err != nil {
		// Its journaled blocks stay in the journal: if the failure is not
		// recorded, the next start still finds the snapshot copying.
		v.log.Warn("could not record snapshot failure", "snapshot", s.rec.Name, "err", err)
		return
	}
	v.dropJournaled(s)
}

func failReason(err error) string {
	if errors.Is(err, store.ErrNoSpace) {
		return "the snapshot store is full: " + err.Error()
	}
	return err.Error() + " — the disk and other snapshots are intact; take a new snapshot"
}

// passPending moves s's pending blocks to the next snapshot in the chain
// that is not failed (making it copying again if needed), or to the live
// epoch's dirty set (durably). Caller holds mu. It returns the snapshot
// that took the blocks, whose record the caller must persist (unless it
// is not committed yet: then its commit does).
func (v *Volume) passPending(s *snap) (to *snap) {
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
	moved := s.pending.Clone()
	if to != nil {
		// Disks only grow, so a later snapshot's bitmap covers every block
		// of an earlier one.
		to.pending.Or(moved)
		to.total += moved.Count()
		if to.rec.State == StateReady {
			to.rec.State = StateCopying
			v.addCopying(to)
		}
		if to.rec.State == StateCopying {
			v.startWorker(to)
		}
	} else if err := v.track.Load().setAll(moved); err != nil && !v.trackLost.Swap(true) {
		v.log.Error("change tracking failed; the next snapshot will copy every allocated block", "err", err)
	}
	v.removeCopying(s)
	for _, b := range moved.Members() {
		s.pending.TestAndClear(b)
	}
	if to != nil && !to.committed {
		to.repersist = true
		return nil
	}
	return to
}

// stopWorkers stops every copy-out worker and waits for them.
func (v *Volume) stopWorkers() {
	if v.stop != nil {
		v.stop()
	}
	v.workers.Wait()
}
