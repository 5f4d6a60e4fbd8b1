package cow

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2/roaring64"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// Snapshot lifecycle (DESIGN.md "Snapshot mechanics"):
//
//   - CreateSnapshot seals the epoch (its dirty set becomes the snapshot's
//     pending set) and opens a new one under mu: microseconds, whatever the
//     size of the disk or of the change, and without waiting for writes in
//     flight (they finish in the sealed epoch; see tracker.seal). After they
//     have drained it makes the live image and the snapshot's record
//     durable and returns with the snapshot `copying`.
//   - A background worker composes each pending block (live image plus the
//     pages the copy-before-write journal saved) and stores it; a write over
//     a pending block first journals the old content of the pages it
//     overwrites, for every snapshot that has the block pending (a block
//     written in a later epoch while still pending for an earlier snapshot
//     is pending for both).
//   - With pending empty the snapshot is `ready`. If the store cannot keep
//     it, it turns `failed`; its pending blocks pass to its successor (or
//     back to the live epoch) so every other snapshot stays complete.
//   - Deleting a snapshot merges it into its successor in the store
//     (metadata only). Rollback writes the snapshot's version of every
//     block changed since back through the normal write path.
//
// Durability: a copy-on-write copy is durable (journal or store) before
// the overwrite is issued; the snapshot record is durable before
// CreateSnapshot returns; a write is provably in the epoch's dirty set
// (tracker file, or durable journal records) before it reaches the live
// image.

// Snapshot states.
const (
	StateCopying = "copying"
	StateReady   = "ready"
	StateFailed  = "failed"
	// StateDeleting: a delete began and has not finished; it is completed
	// at the next start if the daemon stopped part-way.
	StateDeleting = "deleting"
)

// errNoStore: the volume was opened without a store or read-only.
var errNoStore = &block.Error{Kind: block.ErrFailed, Msg: "this volume keeps no snapshots (opened read-only or without a store)"}

func notFound(name string) error {
	return block.Errorf(block.ErrNotFound, "snapshot %q not found", name)
}

// SnapshotMeta is what the caller says about a new snapshot.
type SnapshotMeta struct {
	Name        string
	Description string
	Kind        string // "manual" or "auto"
}

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	Seq          uint64        `json:"seq"`
	Name         string        `json:"name"`
	Description  string        `json:"description,omitempty"`
	Kind         string        `json:"kind"`
	Created      time.Time     `json:"created"`
	State        string        `json:"state"`
	Progress     float64       `json:"progress"` // 0..100
	Reason       string        `json:"reason,omitempty"`
	Size         int64         `json:"size"`
	WrittenBytes uint64        `json:"written_bytes"` // bytes changed in the epoch it sealed
	Hold         time.Duration `json:"hold_ns"`       // how long the epoch was sealed (writes arriving then wait at most this)
	Drain        time.Duration `json:"drain_ns"`      // from the seal until the old epoch's writes in flight had finished
}

// snapRecord is a snapshot's record in the store ("snap/<disk>/<seq>").
type snapRecord struct {
	Seq         uint64    `json:"seq"`
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Kind        string    `json:"kind"`
	Created     time.Time `json:"created"`
	State       string    `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	Size        int64     `json:"size"`
	HoldNS      int64     `json:"hold_ns"`
	DrainNS     int64     `json:"drain_ns,omitempty"`
	Written     uint64    `json:"written_blocks"`
	Pending     []byte    `json:"pending,omitempty"` // roaring64 of blocks to copy out, while copying
}

// chainRecord is a disk's chain bookkeeping ("chain/<disk>").
type chainRecord struct {
	NextSeq uint64 `json:"next_seq"` // every sequence below is used or abandoned
	Epoch   uint64 `json:"epoch"`    // the current epoch: the sequence whose seal opened it (0: none)
}

func snapKey(disk, seq uint64) string { return fmt.Sprintf("snap/%d/%020d", disk, seq) }
func snapPrefix(disk uint64) string   { return fmt.Sprintf("snap/%d/", disk) }
func chainKey(disk uint64) string     { return fmt.Sprintf("chain/%d", disk) }

const stripeCount = 1024

// chain is the snapshot state of a Volume.
type chain struct {
	st *store.Store // nil: no snapshots

	// sealMu serialises operations that change the chain's shape: create,
	// delete, rollback, grow.
	sealMu sync.Mutex

	mu      sync.Mutex // guards snaps, nextSeq, epoch and each snap's rec
	snaps   []*snap    // the chain, oldest first: copying, ready and failed snapshots
	nextSeq uint64
	epoch   uint64

	// copying lists the snapshots that still have pending blocks. The write
	// path reads it without locks; it is replaced (never mutated) under mu.
	copying atomic.Pointer[[]*snap]

	stripes   [stripeCount]sync.Mutex // per-block copy locks: a block is copied out at most once at a time
	storeSync *groupSync
	jr        *journal   // copy-before-write journal; nil: old blocks go to the store inside the write
	rd        *redirects // redirected writes (redirect.go); nil: none (no journal, or Options.Redirect off and none found)
	side      *sideFiles // where redirected writes are (side.go); nil without a journal

	stopCtx context.Context
	stop    context.CancelFunc
	workers sync.WaitGroup
}

// snap is one snapshot in memory.
type snap struct {
	rec     snapRecord // guarded by chain.mu
	pending *Bitmap    // blocks whose content is only in the live image; empty when ready
	total   uint64     // pending blocks at seal (for progress)
	views   atomic.Int32
	working bool               // a copy-out worker runs (guarded by chain.mu)
	cancel  context.CancelFunc // stops the worker (guarded by chain.mu)
	done    chan struct{}      // closed when the worker ends (guarded by chain.mu)

	// drained is closed once the writes of the epoch this snapshot sealed
	// have all finished: nothing reads its pending blocks from the live
	// image before.
	drained <-chan struct{}
	// committed: the record is durable (guarded by chain.mu); repersist:
	// pending grew before that and the record must be written again.
	committed, repersist bool

	jmu     sync.Mutex
	jblocks map[uint64]*jblock // pending blocks with pages in the journal (the map guarded by jmu)
}

// jblock is what the journal holds of one pending block: the pages
// overwritten since the seal. Guarded by the block's stripe lock.
type jblock struct {
	saved   []uint64 // page bitmap
	records []jrecord
}

// jrecord is one journal record of a block: pages first..first+n-1 at
// off+journalPage.
type jrecord struct {
	off      int64
	first, n uint32
}

// end is where the record ends in the journal.
func (r jrecord) end() int64 { return r.off + journalPage + int64(r.n)*journalPage }

func (jb *jblock) isSaved(p uint32) bool { return jb.saved[p/64]&(1<<(p%64)) != 0 }

func (jb *jblock) add(r jrecord) {
	jb.records = append(jb.records, r)
	for p := r.first; p < r.first+r.n; p++ {
		jb.saved[p/64] |= 1 << (p % 64)
	}
}

func newSnap(rec snapRecord) *snap {
	return &snap{rec: rec, drained: closedChan, jblocks: map[uint64]*jblock{}}
}

// jblock returns b's journal state for s, creating it if create. Caller
// holds b's stripe lock.
func (s *snap) jblock(b uint64, create bool, pages int) *jblock {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	jb := s.jblocks[b]
	if jb == nil && create {
		jb = &jblock{saved: make([]uint64, (pages+63)/64)}
		s.jblocks[b] = jb
	}
	return jb
}

// forget drops b's journal state and returns how many records it had.
// Caller holds b's stripe lock.
func (s *snap) forget(b uint64) int {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	jb := s.jblocks[b]
	if jb == nil {
		return 0
	}
	delete(s.jblocks, b)
	return len(jb.records)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (s *snap) seq() uint64 { return s.rec.Seq }

// nonce tells this snapshot from another that reuses its sequence number
// after an abandoned seal (journal slots carry it).
func (s *snap) nonce() uint64 { return uint64(s.rec.Created.UnixNano()) }

// readable: the snapshot can be read (copying or ready). Caller holds mu.
func (s *snap) readable() bool { return Readable(s.rec.State) }

// Readable reports whether a snapshot in state can be read (exported,
// opened, rolled back to, cloned): copying or ready.
func Readable(state string) bool { return state == StateCopying || state == StateReady }

// Readable reports whether the snapshot can be read (see Readable).
func (in SnapshotInfo) Readable() bool { return Readable(in.State) }

// openChain loads the chain from the store, recovers after a crash and
// resumes unfinished copy-out.
func (v *Volume) openChain() error {
	v.st = v.opts.Store
	v.stopCtx, v.stop = context.WithCancel(context.Background())
	nblocks := v.blocks(v.size)
	if v.st == nil || v.readOnly {
		t, err := createTracker("", 0, nblocks, int(v.blockSize))
		v.track.Store(t)
		v.nextSeq = 1
		return err
	}
	v.storeSync = newGroupSync(v.st.Sync)
	ctx := context.Background()
	disk := v.opts.DiskID

	var cr chainRecord
	fresh := false
	switch err := v.st.GetRecord(chainKey(disk), &cr); {
	case errors.Is(err, block.ErrNotFound):
		fresh = true
		cr = chainRecord{NextSeq: 1}
	case err != nil:
		return fmt.Errorf("load snapshot chain of disk %d: %w", disk, err)
	}
	v.nextSeq, v.epoch = cr.NextSeq, cr.Epoch

	// Entries at or past NextSeq belong to a seal whose record never
	// became durable: drop them.
	if _, err := v.st.Merge(ctx, disk, cr.NextSeq-1, math.MaxUint64, 0, func(uint64) bool { return true }); err != nil {
		return fmt.Errorf("drop unfinished snapshot of disk %d: %w", disk, err)
	}
	if err := v.loadSnaps(ctx); err != nil {
		return err
	}
	var adopted *Bitmap
	if v.opts.TrackPrefix != "" {
		var err error
		if adopted, err = v.replayJournal(nblocks); err != nil {
			return err
		}
	}
	if err := v.recoverTracker(fresh, nblocks); err != nil {
		return err
	}
	if adopted != nil && adopted.Count() > 0 {
		// Writes over blocks with journal records may not be in the
		// tracker (beginWrite): count them as changed.
		if err := v.track.Load().setAll(adopted); err != nil {
			return err
		}
	}
	for _, s := range append([]*snap(nil), v.snaps...) {
		if s.rec.State == StateDeleting {
			if _, err := v.finishDelete(ctx, s); err != nil {
				return fmt.Errorf("finish deleting snapshot %q: %w", s.rec.Name, err)
			}
		}
	}
	if fresh {
		if err := v.st.PutRecord(chainKey(disk), cr); err != nil {
			return fmt.Errorf("record snapshot chain of disk %d: %w", disk, err)
		}
		if err := v.storeSync.Wait(); err != nil {
			return fmt.Errorf("record snapshot chain of disk %d: %w", disk, err)
		}
	}
	v.mu.Lock()
	for _, s := range v.snaps {
		if s.rec.State == StateCopying {
			v.startWorker(s)
		}
	}
	v.mu.Unlock()
	v.kickRetire()
	return nil
}

// loadSnaps reads the snapshot records; a copying snapshot's pending set
// is its recorded one less the blocks already copied out.
func (v *Volume) loadSnaps(ctx context.Context) error {
	disk := v.opts.DiskID
	var copying []*snap
	err := v.st.ListRecords(snapPrefix(disk), func(key string, raw []byte) error {
		s := newSnap(snapRecord{})
		s.committed = true
		if err := jsonUnmarshal(raw, &s.rec); err != nil {
			return fmt.Errorf("snapshot record %s: %w", key, err)
		}
		s.pending = NewBitmap(uint64((s.rec.Size + v.blockSize - 1) >> v.shift))
		if s.rec.State == StateCopying {
			rb := roaring64.New()
			if err := rb.UnmarshalBinary(s.rec.Pending); err != nil {
				return fmt.Errorf("snapshot record %s: pending set: %w", key, err)
			}
			it := rb.Iterator()
			for it.HasNext() {
				b := it.Next()
				if b >= s.pending.Len() {
					continue
				}
				ref, found, err := v.st.Lookup(ctx, disk, b, s.rec.Seq)
				if err != nil {
					return err
				}
				if !found || ref.Seq != s.rec.Seq {
					s.pending.Set(b)
				}
			}
			s.total = rb.GetCardinality()
			copying = append(copying, s)
		}
		v.snaps = append(v.snaps, s)
		return nil
	})
	if err != nil {
		return fmt.Errorf("load snapshots of disk %d: %w", disk, err)
	}
	sort.Slice(v.snaps, func(i, j int) bool { return v.snaps[i].seq() < v.snaps[j].seq() })
	v.copying.Store(&copying)
	return nil
}

// replayJournal opens the copy-before-write journal and adopts every
// record that holds old pages of a block still pending for a copying
// snapshot (the live image may no longer have them): the snapshot's
// version of the block is composed from them and the live image.
func (v *Volume) replayJournal(nblocks uint64) (*Bitmap, error) {
	j, recs, err := openJournal(v.opts.TrackPrefix+".cbw", int(v.blockSize), v.opts.JournalMax)
	if err != nil {
		return nil, err
	}
	blocks := NewBitmap(nblocks)
	bySeq := map[uint64]*snap{}
	for _, s := range v.snaps {
		if s.rec.State == StateCopying {
			bySeq[s.seq()] = s
		}
	}
	adopted := 0
	for _, r := range recs {
		if r.nonce == rowNonce {
			// A redirect record of an earlier build, which kept redirected
			// writes in the journal; this one keeps them in side files.
			j.close()
			return nil, fmt.Errorf("copy-before-write journal %s.cbw holds redirected writes of an older cairnd: start that cairnd once with nothing copying so it merges them, or they are lost", v.opts.TrackPrefix)
		}
		s := bySeq[r.seq]
		if s == nil || s.nonce() != r.nonce || r.block >= s.pending.Len() || !s.pending.Test(r.block) {
			continue // stale: stored already, or its snapshot is gone or failed
		}
		s.jblock(r.block, true, v.pagesPerBlock()).add(jrecord{off: r.off, first: r.first, n: r.n})
		adopted++
		if r.block < blocks.Len() {
			blocks.Set(r.block)
		}
	}
	if err := j.start(adopted); err != nil {
		j.close()
		return nil, err
	}
	// Redirected writes (redirect.go) left by an earlier start, with
	// redirects on or off now: they are the newest content of their pages.
	v.side = newSideFiles(v.opts.TrackPrefix)
	if v.opts.Redirect {
		v.rd = newRedirects()
	}
	err = v.side.open(func(epoch uint64, pages []uint64) {
		if v.rd == nil {
			v.rd = newRedirects()
		}
		ppb := uint64(v.pagesPerBlock())
		for _, pg := range pages {
			b := pg / ppb
			v.rd.add(b, v.shift, uint32(pg%ppb), 1, epoch)
			// Written lazily marked: the blocks changed in the epoch
			// unless an earlier, committed seal took them.
			if epoch >= v.epoch && b < blocks.Len() {
				blocks.Set(b)
			}
		}
	})
	if err != nil {
		j.close()
		v.side.close()
		return nil, err
	}
	if adopted > 0 || v.rd.countOrZero() > 0 {
		v.log.Info("copy-before-write journal replayed", "live", v.path, "records", adopted,
			"redirected_pages", v.rd.countOrZero())
	}
	v.jr = j
	return blocks, nil
}

// recoverTracker opens the current epoch's tracker, folding in a tracker
// left by a seal that never committed and deleting ones already sealed.
func (v *Volume) recoverTracker(fresh bool, nblocks uint64) error {
	prefix := v.opts.TrackPrefix
	var cur *tracker
	var later []*tracker
	if prefix != "" {
		matches, _ := filepath.Glob(prefix + ".*")
		for _, m := range matches {
			e, err := strconv.ParseUint(strings.TrimPrefix(m, prefix+"."), 10, 64)
			if err != nil {
				if strings.HasSuffix(m, ".tmp") {
					os.Remove(m)
				}
				continue
			}
			switch {
			case e < v.epoch:
				os.Remove(m) // sealed into a committed snapshot
			case e == v.epoch:
				t, err := openTracker(m, int(v.blockSize))
				if err != nil {
					v.log.Warn("change-tracking file unreadable; the next snapshot will copy every allocated block", "file", m, "err", err)
					continue
				}
				cur = t
			default:
				t, err := openTracker(m, int(v.blockSize))
				if err == nil {
					later = append(later, t)
				} else {
					os.Remove(m)
				}
			}
		}
	}
	lost := cur == nil && !fresh && prefix != ""
	if cur == nil {
		t, err := createTracker(prefix, v.epoch, nblocks, int(v.blockSize))
		if err != nil {
			return err
		}
		cur = t
	}
	if cur.bits().Len() < nblocks {
		if err := cur.grow(nblocks); err != nil {
			return err
		}
	}
	v.track.Store(cur)
	for _, t := range later {
		if err := cur.setAll(t.bits()); err != nil {
			return err
		}
		t.remove()
	}
	if lost || fresh {
		// A new disk over an existing image (adopted) or a lost tracker:
		// every allocated block counts as changed.
		alloc, err := v.allocatedBlocks()
		if err != nil {
			return err
		}
		if lost {
			v.log.Warn("change-tracking file missing; the next snapshot will copy every allocated block", "live", v.path)
		}
		if err := cur.setAll(alloc); err != nil {
			return err
		}
	}
	return nil
}

// allocatedBlocks lists the blocks of the live image that hold data. The
// caller holds the gate (either side) or has the volume to itself.
func (v *Volume) allocatedBlocks() (*Bitmap, error) {
	bm := NewBitmap(v.blocks(v.size))
	if v.isDevice {
		if bm.Len() > 0 {
			bm.SetRange(0, bm.Len()-1)
		}
		return bm, nil
	}
	var off int64
	for off < v.size {
		ext, err := fileExtents(int(v.f.Fd()), off, v.size-off, v.size)
		if err != nil {
			return nil, err
		}
		if len(ext) == 0 {
			break
		}
		for _, e := range ext {
			if e.Flags&block.StateHole == 0 && e.Length > 0 {
				bm.SetRange(uint64(off>>v.shift), uint64((off+e.Length-1)>>v.shift))
			}
			off += e.Length
		}
	}
	return bm, nil
}

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
	seq := v.nextSeq
	v.nextSeq++ // never reused, even if this seal fails
	next, err := createTracker(v.opts.TrackPrefix, seq, v.blocks(v.Size()), int(v.blockSize))
	if err != nil {
		return SnapshotInfo{}, err
	}
	s := newSnap(snapRecord{Seq: seq, Name: meta.Name, Description: meta.Description, Kind: meta.Kind,
		Created: time.Now().UTC(), State: StateCopying})

	// The hold: the epoch's tracker is swapped under mu (a failing
	// snapshot hands its pending blocks to its successor or to the live
	// epoch under mu, so the chain and the epoch change together). No
	// write waits for it: a write that prepared in the old epoch either
	// entered it before the swap (it finishes in the old epoch, which the
	// snapshot then holds) or sees the new shape and prepares again.
	t0 := time.Now()
	v.mu.Lock()
	old := v.track.Load()
	s.drained = old.drained
	s.pending = old.bits()
	s.rec.Size = v.size
	if v.trackLost.Swap(false) && s.pending.Len() > 0 {
		// Tracking failed in this epoch: take every block (holes copy out
		// as zero entries, cheaply); no scan inside the hold.
		s.pending.SetRange(0, s.pending.Len()-1)
	}
	v.snaps = append(v.snaps, s)
	// The snapshot is published (with the channel its readers wait on)
	// before the epoch changes: a writer that sees the new shape then sees
	// its pending blocks and saves them first.
	v.addCopying(s)
	v.sealing.Store(old)
	v.track.Store(next)
	v.shape.Add(1)
	old.seal()
	v.mu.Unlock()
	hold := time.Since(t0)
	// Writes of the old epoch still in flight finish before the live
	// image is synced for the snapshot; only writes that must copy a
	// block of this snapshot out first wait for them too.
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

// persistRecord writes s's record (with its pending set while copying)
// durably.
func (v *Volume) persistRecord(s *snap) error {
	v.mu.Lock()
	rec := s.rec
	var err error
	if rec.State == StateCopying {
		rec.Pending, err = toRoaring(s.pending).ToBytes()
	} else {
		rec.Pending = nil
	}
	v.mu.Unlock()
	if err != nil {
		return err
	}
	if err := v.st.PutRecord(snapKey(v.opts.DiskID, rec.Seq), rec); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	if err := v.storeSync.Wait(); err != nil {
		return fmt.Errorf("record snapshot %q: %w", rec.Name, err)
	}
	return nil
}

// commitSeal makes everything the new snapshot depends on durable: the
// live image's content as of the seal and the snapshot's record.
func (v *Volume) commitSeal(s *snap) error {
	if err := v.sync(); err != nil {
		return err
	}
	rec := s.rec
	pend, err := toRoaring(s.pending).ToBytes()
	if err != nil {
		return err
	}
	rec.Pending = pend
	cr := chainRecord{NextSeq: rec.Seq + 1, Epoch: rec.Seq}
	disk := v.opts.DiskID
	if err := v.st.Update(map[string]any{snapKey(disk, rec.Seq): rec, chainKey(disk): cr}, nil); err != nil {
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
// copied on write for the abandoned snapshot are dropped.
func (v *Volume) abandonSeal(s *snap, old *tracker) {
	v.gate.Lock()
	v.mu.Lock()
	v.removeCopying(s)
	for i, x := range v.snaps {
		if x == s {
			v.snaps = append(v.snaps[:i:i], v.snaps[i+1:]...)
			break
		}
	}
	next := v.track.Load()
	// s.pending is old's bitmap; blocks copied on write were cleared from
	// it, but the writes marked them in next.
	if err := old.setAll(next.bits()); err != nil && !v.trackLost.Swap(true) {
		v.log.Error("change tracking failed; the next snapshot will copy every allocated block", "err", err)
	}
	old.unseal()
	v.track.Store(old)
	v.shape.Add(1)
	v.mu.Unlock()
	v.gate.Unlock()
	next.remove()
	// Pages journaled for the abandoned snapshot: its blocks are dirty in
	// the epoch again (above), so nothing needs them.
	v.dropJournal(s)
	if _, err := v.st.Merge(context.Background(), v.opts.DiskID, s.seq()-1, s.seq(), 0, func(uint64) bool { return true }); err != nil {
		v.log.Warn("could not drop the entries of an abandoned snapshot; they are dropped at the next start", "snapshot", s.rec.Name, "err", err)
	}
}

func toRoaring(bm *Bitmap) *roaring64.Bitmap {
	rb := roaring64.New()
	for _, b := range bm.Members() {
		rb.Add(b)
	}
	rb.RunOptimize()
	return rb
}

// addCopying and removeCopying replace the copying list. Caller holds mu.
func (v *Volume) addCopying(s *snap) {
	old := v.copying.Load()
	var list []*snap
	if old != nil {
		list = append(list, *old...)
	}
	list = append(list, s)
	v.copying.Store(&list)
}

func (v *Volume) removeCopying(s *snap) {
	old := v.copying.Load()
	if old == nil {
		return
	}
	list := make([]*snap, 0, len(*old))
	for _, x := range *old {
		if x != s {
			list = append(list, x)
		}
	}
	v.copying.Store(&list)
	if len(list) == 0 {
		v.kickRetire()
	}
}

// find returns the snapshot named name. Takes mu.
func (v *Volume) find(name string) (*snap, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.findLocked(name)
}

func (v *Volume) findLocked(name string) (*snap, bool) {
	for _, s := range v.snaps {
		if s.rec.Name == name {
			return s, true
		}
	}
	return nil, false
}

// neighbours returns the snapshots before and after s in the chain (nil
// when none). Caller holds mu.
func (v *Volume) neighbours(s *snap) (prev, next *snap) {
	for i, x := range v.snaps {
		if x == s {
			if i > 0 {
				prev = v.snaps[i-1]
			}
			if i+1 < len(v.snaps) {
				next = v.snaps[i+1]
			}
		}
	}
	return prev, next
}

// info describes s. Caller holds mu.
func (v *Volume) info(s *snap) SnapshotInfo {
	r := s.rec
	in := SnapshotInfo{Seq: r.Seq, Name: r.Name, Description: r.Description, Kind: r.Kind, Created: r.Created,
		State: r.State, Reason: r.Reason, Size: r.Size, WrittenBytes: r.Written * uint64(v.blockSize),
		Hold: time.Duration(r.HoldNS), Drain: time.Duration(r.DrainNS), Progress: 100}
	if r.State == StateCopying && s.total > 0 {
		left := s.pending.Count()
		in.Progress = 100 * float64(s.total-min(left, s.total)) / float64(s.total)
	}
	return in
}

// Snapshots lists the chain, oldest first.
func (v *Volume) Snapshots() []SnapshotInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]SnapshotInfo, 0, len(v.snaps))
	for _, s := range v.snaps {
		out = append(out, v.info(s))
	}
	return out
}

// Snapshot describes the snapshot named name.
func (v *Volume) Snapshot(name string) (SnapshotInfo, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.findLocked(name)
	if !ok {
		return SnapshotInfo{}, notFound(name)
	}
	return v.info(s), nil
}

// WaitReady blocks until the named snapshot is ready (nil) or failed
// (block.ErrFailed), or ctx ends. For tests and the CLI's --wait.
func (v *Volume) WaitReady(ctx context.Context, name string) error {
	for {
		in, err := v.Snapshot(name)
		if err != nil {
			return err
		}
		switch in.State {
		case StateReady:
			return nil
		case StateFailed, StateDeleting:
			return block.Errorf(block.ErrFailed, "snapshot %q is %s: %s", name, in.State, in.Reason)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// DropChain deletes everything a deleted disk's chain holds: its entries
// (releasing their chunks), its snapshot and chain records and its
// change-tracking files. It is idempotent, so a crash part-way is finished
// by running it again (the daemon sweeps chains whose disk is gone at start).
func DropChain(ctx context.Context, st *store.Store, disk uint64, trackPrefix string) error {
	if err := st.DropDisk(ctx, disk); err != nil {
		return fmt.Errorf("drop the chunks of disk %d: %w", disk, err)
	}
	var keys []string
	if err := st.ListRecords(snapPrefix(disk), func(key string, _ []byte) error {
		keys = append(keys, key)
		return nil
	}); err != nil {
		return err
	}
	if err := st.Update(nil, append(keys, chainKey(disk))); err != nil {
		return fmt.Errorf("drop the snapshot records of disk %d: %w", disk, err)
	}
	if err := st.Sync(); err != nil {
		return err
	}
	if trackPrefix != "" {
		matches, _ := filepath.Glob(trackPrefix + ".*")
		for _, m := range matches {
			os.Remove(m)
		}
	}
	return nil
}

// Chains lists the disk ids that have a chain in the store.
func Chains(st *store.Store) ([]uint64, error) {
	var ids []uint64
	err := st.ListRecords("chain/", func(key string, _ []byte) error {
		id, err := strconv.ParseUint(strings.TrimPrefix(key, "chain/"), 10, 64)
		if err == nil {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}
