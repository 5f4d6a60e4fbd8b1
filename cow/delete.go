package cow

import (
	"context"
	"fmt"
	"math"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// Freed is what deleting a snapshot frees, or would free: the chunks only
// it references, by their stored (compressed) and uncompressed size.
type Freed struct {
	Bytes       uint64 // uncompressed
	StoredBytes uint64 // as the store keeps them
}

// DeleteSnapshot deletes the named snapshot, first, middle or last, by
// merging it into its successor in the store: metadata only, in time
// proportional to the snapshot's own entries. Exactly the chunks nothing
// else references are released (what Usage's Unique said just before). A
// copying snapshot's pending blocks pass to its successor first. Refused
// with block.ErrInUse while a view of it is open.
func (v *Volume) DeleteSnapshot(ctx context.Context, name string) (Freed, error) {
	if v.st == nil {
		return Freed{}, errNoStore
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	s, ok := v.find(name)
	if !ok {
		return Freed{}, notFound(name)
	}
	if n := s.views.Load(); n > 0 {
		return Freed{}, block.Errorf(block.ErrInUse, "snapshot %q has %d reader(s)", name, n)
	}
	v.stopWorker(s)
	return v.finishDelete(ctx, s)
}

// finishDelete merges s away and drops its record. The record first says
// "deleting", durably, so a crash part-way through the merge (which has
// already dropped some entries) never leaves a snapshot that reads wrong:
// at the next start the delete is completed (Merge is idempotent).
func (v *Volume) finishDelete(ctx context.Context, s *snap) (Freed, error) {
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
	m := v.deletion(s)
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
		return Freed{}, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if m.only {
		// The chain becomes empty: the next snapshot must be full again
		// (every allocated block counts as changed).
		if err := v.markAllocated(); err != nil {
			return Freed{}, fmt.Errorf("delete snapshot %q: %w", name, err)
		}
	}
	var freed Freed
	var err error
	freed.StoredBytes, freed.Bytes, err = v.st.Merge(ctx, v.opts.DiskID, m.prev, m.seq, m.next, m.overridden)
	if err != nil {
		return Freed{}, fmt.Errorf("delete snapshot %q (it stays 'deleting'; delete it again to finish): %w", name, err)
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

// merge is what deleting one snapshot does in the store: the arguments of
// store.Merge, which store.Unique takes too, so that what a snapshot's
// figures say a delete frees and what the delete frees come from one
// place.
type merge struct {
	prev, seq, next uint64
	overridden      func(block uint64) bool
	// only: the snapshot is the chain's only one. Everything goes, the
	// entries kept from newer snapshots deleted earlier too.
	only bool
}

// deletion gives the merge that deletes s: from the previous snapshot's
// sequence to s's, into the successor (next: its sequence; 0: the live
// epoch), dropping what the successor overrides without an entry yet
// (pending for it, or dirty in the live epoch). Caller holds mu.
func (v *Volume) deletion(s *snap) merge {
	if len(v.snaps) == 1 {
		return merge{prev: 0, seq: math.MaxUint64, next: 0, overridden: func(uint64) bool { return true }, only: true}
	}
	m := merge{seq: s.seq()}
	prev, next := v.neighbours(s)
	if prev != nil {
		m.prev = prev.seq()
	}
	if next != nil {
		pend := next.pending
		m.next = next.seq()
		m.overridden = func(b uint64) bool { return b < pend.Len() && pend.Test(b) }
		return m
	}
	// The newest snapshot merges into the live epoch: entries of newer
	// snapshots deleted earlier (kept for the next snapshot) override too.
	m.next = math.MaxUint64
	m.overridden = func(b uint64) bool {
		v.gate.RLock()
		bits := v.track.Load().bits()
		v.gate.RUnlock()
		return b < bits.Len() && bits.Test(b)
	}
	return m
}

// Usage is what a snapshot holds now, as the figures people see state it.
type Usage struct {
	// WrittenBytes: the blocks whose version the snapshot holds itself,
	// changed since the snapshot before it in the chain (the blocks of a
	// deleted predecessor that passed to it count, as do the blocks a
	// deleted newest snapshot left to the live epoch for this one).
	WrittenBytes uint64
	// Unique is what deleting it now would free.
	Unique Freed
}

// Usage returns the named snapshot's written and unique bytes. Its cost
// is proportional to the snapshot's own entries.
func (v *Volume) Usage(ctx context.Context, name string) (Usage, error) {
	if v.st == nil {
		return Usage{}, errNoStore
	}
	v.mu.Lock()
	s, ok := v.findLocked(name)
	if !ok {
		v.mu.Unlock()
		return Usage{}, notFound(name)
	}
	m := v.deletion(s)
	after := m.prev
	if m.only {
		after = 0
	}
	written := bitmap.New(v.blocks(v.Size()))
	if s.pending != nil {
		written.Or(s.pending)
	}
	v.mu.Unlock()
	var u Usage
	if err := v.st.Changed(ctx, v.opts.DiskID, after, s.seq(), written); err != nil {
		return Usage{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	u.WrittenBytes = written.Count() * uint64(v.blockSize)
	var err error
	u.Unique.StoredBytes, u.Unique.Bytes, err = v.st.Unique(ctx, v.opts.DiskID, m.prev, m.seq, m.next, m.overridden)
	if err != nil {
		return Usage{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return u, nil
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
