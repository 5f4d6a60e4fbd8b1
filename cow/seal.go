package cow

import (
	"context"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// CreateSnapshot takes a crash-consistent snapshot: it holds every write
// acknowledged before the call and none issued after it returned. The
// snapshot's record is durable on return; the snapshot is `copying` until
// its blocks are in the store.
func (v *Volume) CreateSnapshot(ctx context.Context, meta SnapshotMeta) (SnapshotInfo, error) {
	if v.st == nil || v.readOnly {
		return SnapshotInfo{}, errNoStore
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	if _, ok := v.find(meta.Name); ok {
		return SnapshotInfo{}, block.Errorf(block.ErrExists, "snapshot %q already exists", meta.Name)
	}
	v.mu.Lock()
	seq := v.nextSeq
	v.nextSeq++ // never reused, even if this seal fails
	v.mu.Unlock()
	next, err := createTracker(v.opts.TrackPrefix, seq, v.blocks(v.Size()), int(v.blockSize))
	if err != nil {
		return SnapshotInfo{}, err
	}
	s := newSnap(snapRecord{Seq: seq, Name: meta.Name, Description: meta.Description, Kind: meta.Kind,
		Created: time.Now().UTC(), State: StateCopying})
	t0 := time.Now()
	old, hold := v.seal(s, next)
	// Writes of the old epoch still in flight finish before the live
	// image is synced for the snapshot; only reads of the snapshot's
	// pending blocks wait for them too.
	<-s.drained
	drain := time.Since(t0)

	v.mu.Lock()
	s.total = s.pending.Count()
	s.rec.HoldNS = int64(hold)
	s.rec.DrainNS = int64(drain)
	s.rec.Written = s.total
	v.mu.Unlock()
	if err := v.commitSeal(s); err != nil {
		v.abandonSeal(s, old)
		v.sealing.Store(nil)
		return SnapshotInfo{}, err
	}
	v.sealing.Store(nil)
	old.remove()
	v.mu.Lock()
	v.epoch = seq
	s.committed = true
	again := s.repersist && s.rec.State == StateCopying
	v.mu.Unlock()
	if again {
		// A failing older snapshot passed blocks to this one before its
		// record was durable.
		if err := v.persistRecord(s); err != nil {
			v.failSnapshot(s, err)
		}
	}
	v.mu.Lock()
	v.startWorker(s)
	info := v.info(s)
	v.mu.Unlock()
	return info, nil
}

// seal is the hold: under mu the epoch's tracker becomes s's pending set
// and next takes its place, and s joins the chain (a failing snapshot
// hands its pending blocks on under mu too, so the chain and the epoch
// change together). No write waits for it: a write that prepared in the
// old epoch either entered it before the swap (it finishes in the old
// epoch, which the snapshot then holds) or sees the new shape and
// prepares again. It returns the old tracker and how long the hold took.
func (v *Volume) seal(s *snap, next *tracker) (old *tracker, hold time.Duration) {
	t0 := time.Now()
	v.mu.Lock()
	old = v.track.Load()
	s.drained = old.drained
	s.pending = old.bits()
	s.rec.Size = v.size // only Grow changes it, under sealMu, which the caller holds
	if v.trackLost.Swap(false) && s.pending.Len() > 0 {
		// Tracking failed in this epoch: take every block (holes copy out
		// as zero entries, cheaply); no scan inside the hold.
		s.pending.SetRange(0, s.pending.Len()-1)
	}
	v.snaps = append(v.snaps, s)
	// The snapshot is published (with the channel its readers wait on)
	// before the epoch changes: a writer that sees the new shape then sees
	// its pending blocks and redirects its writes.
	v.addCopying(s)
	v.sealing.Store(old)
	v.track.Store(next)
	v.shape.Add(1)
	old.seal()
	v.notifyLocked()
	v.mu.Unlock()
	return old, time.Since(t0)
}

// commitSeal makes everything the new snapshot depends on durable: the
// live image's content as of the seal (and the side files) and the
// snapshot's record with the chain's new epoch.
func (v *Volume) commitSeal(s *snap) error {
	if err := v.sync(); err != nil {
		return err
	}
	v.mu.Lock()
	rec := s.rec
	v.mu.Unlock()
	pend, err := s.pending.MarshalBinary()
	if err != nil {
		return err
	}
	rec.Pending = pend
	cr := chainRecord{NextSeq: rec.Seq + 1, Epoch: rec.Seq}
	disk := v.opts.DiskID
	if err := v.st.Update(map[string]any{store.SnapshotKey(disk, rec.Seq): rec, store.ChainKey(disk): cr}, nil); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	return nil
}

// persistRecord writes s's record (with its pending set while copying)
// durably, as it is when the write begins: records are written one at a
// time, so an older copy never lands over a newer one.
func (v *Volume) persistRecord(s *snap) error {
	v.recMu.Lock()
	defer v.recMu.Unlock()
	v.mu.Lock()
	rec := s.rec
	v.mu.Unlock()
	if h := v.opts.hooks; h != nil {
		if err := h.recordErr.Load(); err != nil {
			return fmt.Errorf("record snapshot %q: %w", rec.Name, *err)
		}
	}
	rec.Pending = nil
	if rec.State == StateCopying {
		var err error
		if rec.Pending, err = s.pending.MarshalBinary(); err != nil {
			return err
		}
	}
	if err := v.st.PutRecord(store.SnapshotKey(v.opts.DiskID, rec.Seq), rec); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	return nil
}

// abandonSeal undoes a seal whose record could not be made durable: the
// epoch goes on in the old tracker (whose file the chain record still
// names), with the blocks written since the seal folded in, and entries
// copied for the abandoned snapshot are dropped.
func (v *Volume) abandonSeal(s *snap, old *tracker) {
	v.passMu.Lock() // no pass is handing s blocks meanwhile
	defer v.passMu.Unlock()
	v.gate.Lock()
	v.mu.Lock()
	v.removeCopying(s)
	v.dropLocked(s)
	next := v.track.Load()
	if err := old.setAll(next.bits()); err != nil {
		v.trackErr(err)
	}
	old.unseal()
	v.track.Store(old)
	v.shape.Add(1)
	v.mu.Unlock()
	v.gate.Unlock()
	next.remove()
	if _, err := v.st.Merge(context.Background(), v.opts.DiskID, s.seq()-1, s.seq(), 0, func(uint64) bool { return true }); err != nil {
		v.log.Warn("could not drop the entries of an abandoned snapshot; they are dropped at the next start", "snapshot", s.rec.Name, "err", err)
	}
}
