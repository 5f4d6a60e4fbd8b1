package cow

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// CreateSnapshot takes a crash-consistent snapshot: it holds every write
// acknowledged before the call and none issued after it returned. The
// snapshot's record is durable on return; the snapshot is `copying` until
// its blocks are in the store.
func (v *Volume) CreateSnapshot(ctx context.Context, meta SnapshotMeta) (SnapshotInfo, error) {
	infos, err := CreateSnapshots(ctx, []Member{{Volume: v, Meta: meta}}, GroupOptions{})
	if err != nil {
		return SnapshotInfo{}, err
	}
	return infos[0], nil
}

// Member is one snapshot of a group (CreateSnapshots).
type Member struct {
	Volume *Volume
	Meta   SnapshotMeta
}

// GroupOptions are CreateSnapshots' options.
type GroupOptions struct {
	// Records are written in the store transaction that commits the
	// group (keys of store/recordkeys.go, JSON values).
	Records map[string]any
	// Sealed, if set, runs right after the instant, before the live
	// images are synced and the group committed: a guest frozen for the
	// snapshot can be thawed there, so the freeze lasts microseconds plus
	// the writes in flight, not the syncs.
	Sealed func()
}

// CreateSnapshots takes one snapshot of every member's volume at one
// instant: no write acknowledged after the instant is in any of them, and
// every write acknowledged before it is in all of them (DESIGN.md
// invariant 1 for a group). The volumes must share one store. The members'
// records and opts.Records are written in one store transaction, so the
// group is committed whole or not at all, durably before it returns. On
// error no snapshot was taken.
//
// The instant: every volume's writes are held (a write arriving then
// waits) for as long as it takes to seal all their epochs, microseconds
// per volume; writes already in flight are not waited for and belong to
// the snapshots.
func CreateSnapshots(ctx context.Context, group []Member, opts GroupOptions) ([]SnapshotInfo, error) {
	if err := checkGroup(group); err != nil {
		return nil, err
	}
	// Seal locks in one order (by disk id), so two groups sharing a
	// volume cannot deadlock.
	order := make([]int, len(group))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmpUint(group[a].Volume.opts.DiskID, group[b].Volume.opts.DiskID)
	})
	for _, i := range order {
		group[i].Volume.sealMu.Lock()
		defer group[i].Volume.sealMu.Unlock()
	}
	seals := make([]*sealing, len(group))
	for i, m := range group {
		sl, err := m.Volume.prepareSeal(m.Meta)
		if err != nil {
			for _, p := range seals[:i] {
				p.next.remove()
			}
			return nil, err
		}
		seals[i] = sl
	}

	t0 := time.Now()
	if len(seals) > 1 {
		for _, sl := range seals {
			sl.v.holdWrites()
		}
	}
	for _, sl := range seals {
		sl.v.seal(sl)
		if h := sl.v.opts.hooks; h != nil {
			if f := h.afterSeal.Load(); f != nil {
				(*f)()
			}
		}
	}
	if len(seals) > 1 {
		for _, sl := range seals {
			sl.v.releaseWrites()
		}
	}
	hold := time.Since(t0)
	if opts.Sealed != nil {
		opts.Sealed()
	}
	// Writes of the old epochs still in flight finish before the live
	// images are synced for the snapshots; only reads of their pending
	// blocks wait for them too.
	for _, sl := range seals {
		<-sl.s.drained
		sl.v.mu.Lock()
		sl.s.total = sl.s.pending.Count()
		sl.s.rec.HoldNS = int64(hold)
		sl.s.rec.DrainNS = int64(time.Since(t0))
		sl.s.rec.Written = sl.s.total
		sl.v.mu.Unlock()
	}
	if err := commitSeals(seals, opts.Records); err != nil {
		for _, sl := range seals {
			sl.v.abandonSeal(sl)
		}
		return nil, err
	}
	infos := make([]SnapshotInfo, len(seals))
	for i, sl := range seals {
		infos[i] = sl.v.finishSeal(sl)
	}
	return infos, nil
}

func checkGroup(group []Member) error {
	if len(group) == 0 {
		return errors.New("create snapshots: no volume given")
	}
	var st *store.Store
	seen := map[*Volume]bool{}
	for _, m := range group {
		v := m.Volume
		if v.st == nil || v.readOnly {
			return errNoStore
		}
		if st != nil && v.st != st {
			return errors.New("create snapshots: the volumes do not share one store")
		}
		st = v.st
		if seen[v] {
			return block.Errorf(block.ErrInvalid, "create snapshots: disk %d is in the group twice", v.opts.DiskID)
		}
		seen[v] = true
	}
	return nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sealing is one snapshot being taken: prepared, sealed, then committed
// or abandoned.
type sealing struct {
	v    *Volume
	s    *snap
	next *tracker // the new epoch's tracker, made before the hold
	old  *tracker // the sealed epoch's, once sealed
}

// prepareSeal reserves a sequence and makes the next epoch's tracker
// file. Caller holds sealMu.
func (v *Volume) prepareSeal(meta SnapshotMeta) (*sealing, error) {
	if _, ok := v.find(meta.Name); ok {
		return nil, block.Errorf(block.ErrExists, "snapshot %q already exists", meta.Name)
	}
	v.mu.Lock()
	seq := v.nextSeq
	v.nextSeq++ // never reused, even if this seal fails
	v.mu.Unlock()
	next, err := createTracker(v.opts.TrackPrefix, seq, v.blocks(v.Size()), int(v.blockSize))
	if err != nil {
		return nil, err
	}
	created := meta.Created
	if created.IsZero() {
		created = time.Now()
	}
	s := newSnap(snapRecord{Seq: seq, Name: meta.Name, Description: meta.Description, Kind: meta.Kind,
		Policy: meta.Policy, RetentionDays: meta.RetentionDays, Created: created.UTC(), State: StateCopying})
	return &sealing{v: v, s: s, next: next}, nil
}

// holdWrites makes writes arriving from now on wait (in enter) until
// releaseWrites; writes in flight go on. Caller holds sealMu.
func (v *Volume) holdWrites() {
	ch := make(chan struct{})
	v.held.Store(&ch)
}

// releaseWrites lets held writes go on.
func (v *Volume) releaseWrites() {
	if ch := v.held.Swap(nil); ch != nil {
		close(*ch)
	}
}

// seal swaps the epoch: under mu the epoch's tracker becomes the
// snapshot's pending set and the next tracker takes its place, and the
// snapshot joins the chain (a failing snapshot hands its pending blocks on
// under mu too, so the chain and the epoch change together). No write
// waits for it: a write that prepared in the old epoch either entered it
// before the swap (it finishes in the old epoch, which the snapshot then
// holds) or sees the new shape and prepares again.
func (v *Volume) seal(sl *sealing) {
	s := sl.s
	v.mu.Lock()
	defer v.mu.Unlock()
	sl.old = v.track.Load()
	s.drained = sl.old.drained
	s.pending = sl.old.bits()
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
	v.sealing.Store(sl.old)
	v.track.Store(sl.next)
	v.shape.Add(1)
	sl.old.seal()
	v.notifyLocked()
}

// commitSeals makes everything the new snapshots depend on durable: each
// live image's content as of its seal (and its side files), then every
// snapshot's record with its chain's new epoch and the caller's records,
// in one store transaction.
func commitSeals(seals []*sealing, records map[string]any) error {
	errs := make([]error, len(seals))
	var wg sync.WaitGroup
	for i, sl := range seals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sl.v.sync()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	puts := make(map[string]any, 2*len(seals)+len(records))
	for k, r := range records {
		puts[k] = r
	}
	var names []string
	for _, sl := range seals {
		v, s := sl.v, sl.s
		v.mu.Lock()
		rec := s.rec
		v.mu.Unlock()
		pend, err := s.pending.MarshalBinary()
		if err != nil {
			return err
		}
		rec.Pending = pend
		disk := v.opts.DiskID
		puts[store.SnapshotKey(disk, rec.Seq)] = rec
		puts[store.ChainKey(disk)] = chainRecord{NextSeq: rec.Seq + 1, Epoch: rec.Seq}
		names = append(names, rec.Name)
	}
	v := seals[0].v
	if err := v.st.Update(puts, nil); err != nil {
		return fmt.Errorf("record snapshot %q: %w", names, err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return fmt.Errorf("record snapshot %q: %w", names, err)
	}
	return nil
}

// finishSeal starts the committed snapshot's copy-out and describes it.
func (v *Volume) finishSeal(sl *sealing) SnapshotInfo {
	s := sl.s
	v.sealing.Store(nil)
	sl.old.remove()
	v.mu.Lock()
	v.epoch = s.seq()
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
	defer v.mu.Unlock()
	v.startWorker(s)
	return v.info(s)
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
func (v *Volume) abandonSeal(sl *sealing) {
	s, old := sl.s, sl.old
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
	v.sealing.Store(nil)
	next.remove()
	if _, _, err := v.st.Merge(context.Background(), v.opts.DiskID, s.seq()-1, s.seq(), 0, func(uint64) bool { return true }); err != nil {
		v.log.Warn("could not drop the entries of an abandoned snapshot; they are dropped at the next start", "snapshot", s.rec.Name, "err", err)
	}
}
