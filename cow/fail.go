package cow

import (
	"context"
	"errors"
	"fmt"

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
	to, broken := v.passPending(s)
	v.passMu.Unlock()
	v.afterPass(to, broken)
	if err := v.persistRecord(s); err != nil {
		// If the failure is not recorded, the next start finds the
		// snapshot copying and its successor holding its blocks too:
		// both claim them, which is harmless.
		v.log.Warn("could not record snapshot failure", "snapshot", name, "err", err)
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
