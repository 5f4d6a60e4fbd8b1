package cow

import (
	"context"
	"fmt"
	"math"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// DeleteSnapshot deletes the named snapshot, first, middle or last, by
// merging it into its successor in the store: metadata only, in time
// proportional to the snapshot's own entries. Exactly the chunks nothing
// else references are released; freed is their uncompressed size. A
// copying snapshot's pending blocks pass to its successor first. Refused
// with block.ErrInUse while a view of it is open.
func (v *Volume) DeleteSnapshot(ctx context.Context, name string) (freed uint64, err error) {
	if v.st == nil {
		return 0, errNoStore
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	s, ok := v.find(name)
	if !ok {
		return 0, notFound(name)
	}
	if n := s.views.Load(); n > 0 {
		return 0, block.Errorf(block.ErrInUse, "snapshot %q has %d reader(s)", name, n)
	}
	v.stopWorker(s)
	return v.finishDelete(ctx, s)
}

// finishDelete merges s away and drops its record. The record first says
// "deleting", durably, so a crash part-way through the merge (which has
// already dropped some entries) never leaves a snapshot that reads wrong:
// at the next start the delete is completed (Merge is idempotent).
func (v *Volume) finishDelete(ctx context.Context, s *snap) (freed uint64, err error) {
	name := s.rec.Name
	v.passMu.Lock()
	v.mu.Lock()
	was, wasReason := s.rec.State, s.rec.Reason
	wasCopying := was == StateCopying
	s.rec.State = StateDeleting
	v.notifyLocked()
	v.mu.Unlock()
	var to *snap
	var broken error
	if wasCopying {
		v.mark(s, markDelete)
		to, broken = v.passPending(s)
	}
	v.passMu.Unlock()
	v.afterPass(to, broken)
	v.mu.Lock()
	prevSeq, nextSeq, overridden := v.mergeBounds(s)
	last := len(v.snaps) == 1
	v.mu.Unlock()
	if err := v.persistRecord(s); err != nil {
		// Nothing is merged yet: the snapshot is what it was, except
		// that a copying one has passed its blocks on and can only
		// have failed.
		v.mu.Lock()
		s.rec.State, s.rec.Reason = was, wasReason
		if wasCopying {
			s.rec.State, s.rec.Reason = StateFailed, "its delete could not begin ("+err.Error()+"); its blocks passed to the next snapshot — delete it again"
		}
		v.notifyLocked()
		v.mu.Unlock()
		if wasCopying {
			v.recordFailure(s)
		}
		return 0, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if last {
		// The chain becomes empty: free everything and let the next
		// snapshot be full again (every allocated block counts as changed).
		if err := v.markAllocated(); err != nil {
			return 0, fmt.Errorf("delete snapshot %q: %w", name, err)
		}
		overridden = func(uint64) bool { return true }
	}
	seq := s.seq()
	if last {
		// Also the entries kept from newer snapshots deleted earlier.
		seq, nextSeq = math.MaxUint64, 0
	}
	freed, err = v.st.Merge(ctx, v.opts.DiskID, prevSeq, seq, nextSeq, overridden)
	if err != nil {
		return 0, fmt.Errorf("delete snapshot %q (it stays 'deleting'; delete it again to finish): %w", name, err)
	}
	if err := v.st.DeleteRecord(store.SnapshotKey(v.opts.DiskID, s.seq())); err != nil {
		return freed, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return freed, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	v.mu.Lock()
	v.dropLocked(s)
	v.mu.Unlock()
	v.marks.remove(s.seq())
	return freed, nil
}

// mergeBounds gives Merge's arguments for deleting s: the previous
// snapshot's sequence, the successor's (MaxUint64: the live epoch) and which
// blocks the successor overrides without an entry yet (pending for it, or
// dirty in the live epoch). Caller holds mu.
func (v *Volume) mergeBounds(s *snap) (prevSeq, nextSeq uint64, overridden func(uint64) bool) {
	prev, next := v.neighbours(s)
	if prev != nil {
		prevSeq = prev.seq()
	}
	if next != nil {
		pend := next.pending
		return prevSeq, next.seq(), func(b uint64) bool { return b < pend.Len() && pend.Test(b) }
	}
	// The newest snapshot merges into the live epoch: entries of newer
	// snapshots deleted earlier (kept for the next snapshot) override too.
	return prevSeq, math.MaxUint64, func(b uint64) bool {
		v.gate.RLock()
		bits := v.track.Load().bits()
		v.gate.RUnlock()
		return b < bits.Len() && bits.Test(b)
	}
}

// UniqueBytes is what deleting the named snapshot would free: stored
// (compressed) and logical bytes of the chunks only it references.
func (v *Volume) UniqueBytes(ctx context.Context, name string) (stored, logical uint64, err error) {
	if v.st == nil {
		return 0, 0, errNoStore
	}
	v.mu.Lock()
	s, ok := v.findLocked(name)
	if !ok {
		v.mu.Unlock()
		return 0, 0, notFound(name)
	}
	prevSeq, nextSeq, overridden := v.mergeBounds(s)
	v.mu.Unlock()
	return v.st.Unique(ctx, v.opts.DiskID, prevSeq, s.seq(), nextSeq, overridden)
}

// markAllocated adds every allocated block of the live image to the
// epoch's dirty set, durably.
func (v *Volume) markAllocated() error {
	v.gate.RLock()
	defer v.gate.RUnlock()
	alloc, err := v.allocatedBlocks()
	if err != nil {
		return err
	}
	return v.track.Load().setAll(alloc)
}
