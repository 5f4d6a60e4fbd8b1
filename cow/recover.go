package cow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

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
	switch err := v.st.GetRecord(store.ChainKey(disk), &cr); {
	case errors.Is(err, block.ErrNotFound):
		fresh = true
		cr = chainRecord{NextSeq: 1}
	case err != nil:
		return fmt.Errorf("load snapshot chain of disk %d: %w", disk, err)
	}
	v.nextSeq, v.epoch = cr.NextSeq, cr.Epoch

	// Entries at or past NextSeq belong to a seal whose record never
	// became durable: drop them.
	if _, _, err := v.st.Merge(ctx, disk, cr.NextSeq-1, math.MaxUint64, 0, func(uint64) bool { return true }); err != nil {
		return fmt.Errorf("drop unfinished snapshot of disk %d: %w", disk, err)
	}
	if err := v.loadSnaps(ctx); err != nil {
		return err
	}
	if err := v.dropOldJournal(); err != nil {
		return err
	}
	if err := v.recover(ctx, fresh, nblocks, cr); err != nil {
		v.side.close()
		if t := v.track.Load(); t != nil {
			t.close()
		}
		return err
	}
	if err := v.failMarked(); err != nil {
		return err
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

// failMarked fails the copying snapshots the failure marks name: they
// failed (or began a delete) before cairnd stopped and that never reached
// the store. Their blocks may have been overwritten in place since, so
// copying them out again would read newer data and call it ready. Marks
// of snapshots whose new state did reach the store are dropped.
func (v *Volume) failMarked() error {
	marks, err := openFailMarks(v.opts.TrackPrefix+".failed", v.log)
	if err != nil {
		return err
	}
	v.marks = marks
	for _, mark := range marks.list() {
		seq := mark &^ markDelete
		var s *snap
		v.mu.Lock()
		for _, x := range v.snaps {
			if x.seq() == seq && x.rec.State == StateCopying {
				s = x
			}
		}
		v.mu.Unlock()
		switch {
		case s == nil:
			marks.remove(seq)
		case mark&markDelete != 0:
			v.log.Warn("finishing the delete of a copying snapshot that began before cairnd stopped", "snapshot", s.rec.Name)
			if _, err := v.finishDelete(context.Background(), s); err != nil {
				return fmt.Errorf("finish deleting snapshot %q: %w", s.rec.Name, err)
			}
		default:
			v.log.Warn("a snapshot failed before cairnd stopped and its failure was not recorded; recording it now", "snapshot", s.rec.Name)
			v.failSnapshot(s, errors.New("it failed before cairnd stopped, and that could not be recorded then"))
		}
	}
	return nil
}

// recover rebuilds the redirect index and the current epoch's tracker,
// finishes deletes and records a new chain.
func (v *Volume) recover(ctx context.Context, fresh bool, nblocks uint64, cr chainRecord) error {
	redirected, err := v.openRedirects(nblocks)
	if err != nil {
		return err
	}
	if err := v.recoverTracker(fresh, nblocks); err != nil {
		return err
	}
	if redirected.Count() > 0 {
		// Redirected writes mark the tracker lazily: their side files
		// prove them (redirect.go).
		if err := v.track.Load().setAll(redirected); err != nil {
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
	if !fresh {
		return nil
	}
	err = v.st.PutRecord(store.ChainKey(v.opts.DiskID), cr)
	if err == nil {
		err = v.storeSync.Wait()
	}
	if err != nil {
		return fmt.Errorf("record snapshot chain of disk %d: %w", v.opts.DiskID, err)
	}
	return nil
}

// loadSnaps reads the snapshot records; a copying snapshot's pending set
// is its recorded one less the blocks already copied out.
func (v *Volume) loadSnaps(ctx context.Context) error {
	disk := v.opts.DiskID
	var copying []*snap
	err := v.st.ListRecords(store.SnapshotPrefix(disk), func(key string, raw []byte) error {
		s := newSnap(snapRecord{})
		s.committed = true
		if err := json.Unmarshal(raw, &s.rec); err != nil {
			return fmt.Errorf("snapshot record %s: %w", key, err)
		}
		n := v.blocks(s.rec.Size)
		if s.rec.State != StateCopying {
			s.pending = bitmap.New(n)
			v.snaps = append(v.snaps, s)
			return nil
		}
		recorded, err := bitmap.Unmarshal(n, s.rec.Pending)
		if err != nil {
			return fmt.Errorf("snapshot record %s: pending set: %w", key, err)
		}
		s.pending = bitmap.New(n)
		for _, b := range recorded.Members() {
			ref, found, err := v.st.Lookup(ctx, disk, b, s.rec.Seq)
			if err != nil {
				return err
			}
			if !found || ref.Seq != s.rec.Seq {
				s.pending.Set(b)
			}
		}
		s.total = recorded.Count()
		copying = append(copying, s)
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

// dropOldJournal deals with the copy-before-write journal
// ("<prefix>.cbw") that cairnd kept before redirect-on-write became its
// only write strategy. Its records matter only to snapshots still
// copying, and this cairnd cannot read them: with none copying the file is
// deleted; otherwise the disk is refused, never misread.
func (v *Volume) dropOldJournal() error {
	path := v.opts.TrackPrefix + ".cbw"
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if len(v.copyingList()) > 0 {
		return fmt.Errorf("open live image %s: its copy-before-write journal %s was written by an older cairnd and snapshots are still copying out of it; "+
			"start that cairnd once, wait until no snapshot of the disk is copying (cairn snapshot list), then start this one", v.path, path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove the old copy-before-write journal: %w", err)
	}
	return nil
}

// openRedirects opens the side files left by an earlier start and
// rebuilds the redirect index from them (their pages are the newest
// content of those pages). It returns the blocks redirected in the
// current epoch or later, which the tracker may have marked lazily only.
func (v *Volume) openRedirects(nblocks uint64) (*bitmap.Bitmap, error) {
	v.side = newSideFiles(v.opts.TrackPrefix, v.opts.hooks)
	v.rd = newRedirects()
	blocks := bitmap.New(nblocks)
	ppb := uint64(v.pagesPerBlock())
	err := v.side.open(func(epoch uint64, pages []uint64) {
		for _, pg := range pages {
			b := pg / ppb
			v.rd.add(b, v.shift, uint32(pg%ppb), 1, epoch)
			// A committed seal took the blocks of earlier epochs.
			if epoch >= v.epoch && b < blocks.Len() {
				blocks.Set(b)
			}
		}
	})
	if err != nil {
		v.side.close()
		return nil, err
	}
	if n := v.rd.count.Load(); n > 0 {
		v.log.Info("redirected writes recovered", "live", v.path, "pages", n)
	}
	return blocks, nil
}

// recoverTracker opens the current epoch's tracker, folding in trackers
// left by a seal that never committed and deleting ones already sealed.
func (v *Volume) recoverTracker(fresh bool, nblocks uint64) error {
	prefix := v.opts.TrackPrefix
	var cur *tracker
	var later []*tracker
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
			if t, err := openTracker(m, int(v.blockSize)); err == nil {
				later = append(later, t)
			} else {
				os.Remove(m)
			}
		}
	}
	lost := cur == nil && !fresh
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
func (v *Volume) allocatedBlocks() (*bitmap.Bitmap, error) {
	bm := bitmap.New(v.blocks(v.size))
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

// DropChain deletes everything a deleted disk's chain holds: its entries
// (releasing their chunks), its snapshot and chain records and its
// change-tracking files. It is idempotent, so a crash part-way is finished
// by running it again (the daemon sweeps chains whose disk is gone at start).
func DropChain(ctx context.Context, st *store.Store, disk uint64, trackPrefix string) error {
	if err := st.DropDisk(ctx, disk); err != nil {
		return fmt.Errorf("drop the chunks of disk %d: %w", disk, err)
	}
	var keys []string
	if err := st.ListRecords(store.SnapshotPrefix(disk), func(key string, _ []byte) error {
		keys = append(keys, key)
		return nil
	}); err != nil {
		return err
	}
	if err := st.Update(nil, append(keys, store.ChainKey(disk))); err != nil {
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
	err := st.ListRecords(store.ChainPrefix, func(key string, _ []byte) error {
		if id, ok := store.ParseChainKey(key); ok {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}
