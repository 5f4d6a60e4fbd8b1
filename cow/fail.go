package cow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/block"
)

// failSnapshot turns s failed because the store could not keep it. Its
// pending blocks pass to its successor (whose version of them is the live
// content) or back to the live epoch, so guest writes go on and every
// other snapshot stays complete. Its stored entries stay: successors read
// them. Deleting it later merges it away. The caller holds no lock.
func (v *Volume) failSnapshot(s *snap, cause error) {
	v.passMu.Lock()
	v.mu.Lock()
	if s.rec.State != StateCopying {
		v.mu.Unlock()
		v.passMu.Unlock()
		return
	}
	s.rec.State = StateFailed
	s.rec.Reason = failReason(cause)
	name, reason := s.rec.Name, s.rec.Reason
	if s.cancel != nil {
		s.cancel() // its worker stops; not waited for (it may be the caller)
	}
	v.notifyLocked()
	v.mu.Unlock()
	v.log.Error("snapshot failed; guest writes go on", "snapshot", name, "reason", reason)
	v.mark(s, 0)
	to, broken := v.passPending(s)
	v.passMu.Unlock()
	v.afterPass(to, broken)
	v.recordFailure(s)
}

// recordFailure makes s's failed state durable. A failure that is not
// recorded would make the next start copy s out again (its old record
// says copying; its blocks have passed on): harmless to the data, but the
// store grows and the operator sees a snapshot come back. So a record
// that cannot be written now (an I/O error, or a store whose reserve is
// used up) is retried in the background until it is written, s is
// deleted, or the volume closes, which tries once more.
func (v *Volume) recordFailure(s *snap) {
	err := v.persistRecord(s)
	if err == nil {
		v.marks.remove(s.seq())
		return
	}
	v.mu.Lock()
	name := s.rec.Name
	if v.unrecorded == nil {
		v.unrecorded = make(map[*snap]bool)
	}
	v.unrecorded[s] = true
	start := !v.recording
	v.recording = true
	v.mu.Unlock()
	v.log.Warn("could not record a snapshot's failure yet; retrying in the background", "snapshot", name, "err", err)
	if start {
		v.recorder.Add(1)
		go v.retryRecords()
	}
}

// retryRecords writes the records recordFailure could not, with backoff,
// until none is left or the volume closes. One runs at a time (recording).
func (v *Volume) retryRecords() {
	defer v.recorder.Done()
	wait := 100 * time.Millisecond
	for {
		select {
		case <-v.stopCtx.Done():
			v.mu.Lock()
			v.recording = false
			v.mu.Unlock()
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
		if v.writeUnrecorded() == 0 {
			v.mu.Lock()
			done := len(v.unrecorded) == 0
			if done {
				v.recording = false
			}
			v.mu.Unlock()
			if done {
				return
			}
		}
	}
}

// writeUnrecorded tries to write every record recordFailure could not and
// returns how many are still unwritten. It holds sealMu so that no delete
// runs meanwhile: a delete writes a newer record (or removes it), which
// an older one must not land over.
func (v *Volume) writeUnrecorded() (left int) {
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	v.mu.Lock()
	var todo []*snap
	for s := range v.unrecorded {
		if v.inChainLocked(s) && s.rec.State == StateFailed {
			todo = append(todo, s)
		} else {
			delete(v.unrecorded, s) // deleted or deleting: its own record says so
			if !v.inChainLocked(s) {
				v.marks.remove(s.seq())
			}
		}
	}
	v.mu.Unlock()
	for _, s := range todo {
		err := v.persistRecord(s)
		v.mu.Lock()
		if err == nil {
			delete(v.unrecorded, s)
			v.marks.remove(s.seq())
			v.log.Info("recorded a snapshot's failure", "snapshot", s.rec.Name)
		} else {
			left++
		}
		v.mu.Unlock()
	}
	return left
}

// inChainLocked reports whether s is still in the chain. Caller holds mu.
func (v *Volume) inChainLocked(s *snap) bool {
	for _, x := range v.snaps {
		if x == s {
			return true
		}
	}
	return false
}

// mark makes s's failure (kind 0) or delete (markDelete) durable outside
// the store (failmark.go) before its blocks pass on and its redirected
// writes can be merged away. If
// even that fails, going on is still right (guest I/O wins), at the risk
// the warning names.
func (v *Volume) mark(s *snap, kind uint64) {
	if err := v.marks.add(s.seq() | kind); err != nil {
		v.log.Warn("could not mark a failed snapshot on the data directory; if its failure cannot be recorded in the store either before cairnd stops, it may copy out newer data at the next start",
			"snapshot", s.rec.Name, "err", err)
	}
}

// afterPass persists the record of the snapshot that took over blocks
// (before the giver's new state is recorded: after a crash in between
// both claim them, which is harmless) or fails it if it could not.
func (v *Volume) afterPass(to *snap, broken error) {
	if to != nil && broken == nil {
		broken = v.persistRecord(to)
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

// passPending moves the pending blocks of s (failed or deleting: no
// longer readable, still on the copying list) to the next readable
// snapshot in the chain, making it copying again if need be, or to the
// live epoch's dirty set (durably). The caller holds passMu and no other
// lock: the store lookups and the tracker sync run without mu or a stripe
// lock.
//
// A block the successor has pending too already has its version there.
// One it does not have pending was either stored by it (or by a failed
// snapshot between them) after being written since s's seal — it has a
// version of its own — or was unchanged between the two seals, so its
// version is s's: what the live image and the redirected writes of
// epochs before the successor hold, which is what the successor reads.
//
// It returns the snapshot that took the blocks, whose record the caller
// must persist (nil when none, or when that snapshot's seal is not
// committed yet: its commit records them), and an error if the
// successor could not be made complete (the caller fails it).
func (v *Volume) passPending(s *snap) (to *snap, broken error) {
	for {
		v.mu.Lock()
		to = v.successor(s)
		if to != nil {
			to.incoming++ // it does not turn ready under us
			if to.rec.State == StateReady {
				to.rec.State = StateCopying
				v.addCopying(to)
			}
		}
		v.mu.Unlock()

		moved := s.pending.Members()
		var own map[uint64]bool
		if to == nil {
			err := v.track.Load().setAll(s.pending)
			if errors.Is(err, errRetired) {
				continue // sealed meanwhile: the new snapshot is the successor
			}
			v.trackErr(err)
		} else {
			own, broken = v.ownVersions(s, to, moved)
		}

		v.mu.Lock()
		if v.successor(s) != to {
			// A seal added a successor after a pass to the live epoch
			// (the blocks are in both: harmless), or to was given up.
			if to != nil {
				to.incoming--
				if to.rec.State == StateCopying {
					v.startWorker(to) // so it finishes if it was made copying above
				}
			}
			v.mu.Unlock()
			continue
		}
		v.mu.Unlock()

		added := uint64(0)
		for _, b := range moved {
			mu := v.stripe(b)
			mu.Lock()
			// Disks only grow, so a later snapshot's bitmap covers every
			// block of an earlier one.
			if to != nil && !own[b] && !to.pending.Test(b) {
				to.pending.Set(b)
				added++
			}
			s.pending.Clear(b)
			mu.Unlock()
		}

		v.mu.Lock()
		v.removeCopying(s)
		if to != nil {
			to.incoming--
			to.total += added
			if to.rec.State == StateCopying {
				v.startWorker(to)
			}
			if !to.committed {
				to.repersist = true
				to = nil
			}
		}
		v.notifyLocked()
		v.mu.Unlock()
		return to, broken
	}
}

// ownVersions reports which of blocks have a stored version newer than s
// at or before to (written after s's seal and copied out for to or for a
// failed snapshot between them). A lookup error breaks to.
func (v *Volume) ownVersions(s, to *snap, blocks []uint64) (map[uint64]bool, error) {
	own := map[uint64]bool{}
	for _, b := range blocks {
		if to.pending.Test(b) {
			continue
		}
		ref, found, err := v.st.Lookup(context.Background(), v.opts.DiskID, b, to.seq())
		if err != nil {
			return own, fmt.Errorf("take over block %d from snapshot %q: %w", b, s.rec.Name, err)
		}
		if found && ref.Seq > s.seq() {
			own[b] = true
		}
	}
	return own, nil
}
