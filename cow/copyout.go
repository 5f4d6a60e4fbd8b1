package cow

import (
	"context"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/store"
)

// DefaultCopyOutShare is the share of time a copy-out worker runs while
// the disk is busy: on a small host the worker's hashing and compression
// would otherwise take a whole core from the guest's I/O.
const DefaultCopyOutShare = 0.1

// busyWindow: guest I/O this recent makes the disk busy for pacing.
const busyWindow = 100 * time.Millisecond

// copyBatch is how many blocks the copy-out worker stores per store sync.
const copyBatch = 32

// touch notes guest I/O for the copy-out workers' pacing; with nothing
// copying it costs the read and write paths one atomic load.
func (v *Volume) touch() {
	if len(v.copyingList()) == 0 {
		return
	}
	now := time.Now().UnixNano()
	if now-v.lastIO.Load() > int64(time.Millisecond) { // one store per ms at most
		v.lastIO.Store(now)
	}
}

// pace sleeps after a copy-out batch that took d while the guest is busy,
// so the worker runs at most its share of the time; idle, it does not
// sleep. The sleep ends early if the guest goes idle or ctx ends.
func (v *Volume) pace(ctx context.Context, d time.Duration) {
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

var blockPool sync.Pool // *[]byte of the volume's block size (sizes differ per volume: checked on get)

func (v *Volume) getBlock() *[]byte {
	if p, ok := blockPool.Get().(*[]byte); ok && len(*p) == int(v.blockSize) {
		return p
	}
	b := make([]byte, v.blockSize)
	return &b
}

func putBlock(p *[]byte) { blockPool.Put(p) }

// stripe is block b's stripe lock (doc.go, lock 5).
func (v *Volume) stripe(b uint64) *sync.Mutex { return &v.stripes[b%stripeCount] }

// allPending reports whether every block of first..last is pending for
// some copying snapshot.
func (v *Volume) allPending(first, last uint64) bool {
	list := v.copyingList()
	if len(list) == 0 {
		return false
	}
	for b := first; b <= last; b++ {
		found := false
		for _, s := range list {
			if b < s.pending.Len() && s.pending.Test(b) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// newestOwner returns the newest copying snapshot at or before seq for
// which b is pending, or nil.
func (v *Volume) newestOwner(b, seq uint64) *snap {
	var best *snap
	for _, s := range v.copyingList() {
		if s.seq() <= seq && (best == nil || s.seq() > best.seq()) && b < s.pending.Len() && s.pending.Test(b) {
			best = s
		}
	}
	return best
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

// stopWorkers stops every copy-out worker and waits for them.
func (v *Volume) stopWorkers() {
	if v.stop != nil {
		v.stop()
	}
	v.workers.Wait()
}

// copyOut copies every pending block of s to the store, then marks s
// ready. It ends early when the volume closes (work resumes at the next
// Open) or s fails.
func (v *Volume) copyOut(ctx context.Context, s *snap, done chan struct{}) {
	defer v.workers.Done()
	defer close(done)
	defer func() {
		v.mu.Lock()
		s.working = false
		v.mu.Unlock()
	}()
	<-s.drained
	if h := v.opts.hooks; h != nil {
		if f := h.beforeCopyOut.Load(); f != nil {
			(*f)(ctx)
		}
	}
	batch := make([]uint64, 0, copyBatch)
	for ctx.Err() == nil {
		next, ok := s.pending.NextSet(0)
		if !ok {
			finished, wait := v.finishCopy(s)
			if finished {
				return
			}
			select {
			case <-ctx.Done():
			case <-wait:
			}
			continue
		}
		for ok && ctx.Err() == nil {
			batch = batch[:0]
			for ok && len(batch) < copyBatch {
				batch = append(batch, next)
				next, ok = s.pending.NextSet(next + 1)
			}
			t0 := time.Now()
			if err := v.copyBlocks(ctx, s, batch); err != nil {
				return
			}
			v.pace(ctx, time.Since(t0))
		}
	}
}

// copyBlocks stores s's version of blocks pending for s as s's entries,
// durably, then clears them from pending. On a store error s fails (its
// pending blocks pass on) and the error is returned.
func (v *Volume) copyBlocks(ctx context.Context, s *snap, blocks []uint64) error {
	entries := make([]store.Entry, 0, len(blocks))
	bufs := make([]*[]byte, 0, len(blocks))
	defer func() {
		for _, p := range bufs {
			putBlock(p)
		}
	}()
	for _, b := range blocks {
		// Under the stripe lock: the block stays pending while its version
		// is read, so no merge of redirected writes lands in it meanwhile.
		mu := v.stripe(b)
		mu.Lock()
		if s.pending.Test(b) {
			p := v.getBlock()
			if err := v.readSnapVersion(*p, int64(b)<<v.shift, s.seq()); err != nil {
				mu.Unlock()
				putBlock(p)
				v.failSnapshot(s, err)
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
		mu := v.stripe(e.Block)
		mu.Lock()
		s.pending.Clear(e.Block)
		mu.Unlock()
	}
	return nil
}

// finishCopy marks s ready if nothing is pending and no pass is bringing
// it blocks; it reports whether the worker is done, or else a channel
// closed when the chain changes next.
func (v *Volume) finishCopy(s *snap) (finished bool, wait <-chan struct{}) {
	v.mu.Lock()
	if s.rec.State != StateCopying {
		v.mu.Unlock()
		return true, nil
	}
	if s.pending.Count() != 0 {
		v.mu.Unlock()
		return false, closedChan
	}
	if s.incoming > 0 {
		wait = v.changed
		v.mu.Unlock()
		return false, wait
	}
	s.rec.State = StateReady
	v.removeCopying(s)
	v.notifyLocked()
	name, total := s.rec.Name, s.total
	v.mu.Unlock()
	// If this record does not become durable the snapshot reads as copying
	// after a restart, finds nothing pending and turns ready again.
	if err := v.persistRecord(s); err != nil {
		v.log.Warn("could not record snapshot as ready", "snapshot", name, "err", err)
	}
	v.log.Info("snapshot ready", "snapshot", name, "blocks", total)
	return true, nil
}
