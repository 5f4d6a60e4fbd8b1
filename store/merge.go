package store

import (
	"context"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// mergePageSize is how many of a snapshot's entries one merge transaction
// handles; each costs a few keys, well under Badger's transaction limit.
const mergePageSize = 256

// mergeArgs are Merge's and Unique's arguments.
type mergeArgs struct {
	disk, prev, seq, next uint64
	overridden            func(block uint64) bool
}

func (a mergeArgs) validate() error {
	if a.seq == 0 || a.prev >= a.seq || (a.next != 0 && a.next <= a.seq) {
		return fmt.Errorf("store: merge of disk %d: sequences must satisfy prev < seq < next (or next = 0), got prev %d seq %d next %d",
			a.disk, a.prev, a.seq, a.next)
	}
	return nil
}

// upper is the newest sequence whose entries override the snapshot's.
func (a mergeArgs) upper() uint64 {
	if a.next != 0 {
		return a.next
	}
	return a.seq
}

// seqBlock names one entry found through the sequence index.
type seqBlock struct{ seq, block uint64 }

// dropped is an entry a merge removes.
type dropped struct {
	seqBlock
	zero bool
	hash [32]byte
}

// snapshotPage returns up to mergePageSize entries with a sequence in
// (prev, seq], from the sequence index, starting at cursor (nil: the
// start), and the cursor for the next page.
func (s *Store) snapshotPage(a mergeArgs, cursor []byte) (page []seqBlock, next []byte, err error) {
	if cursor == nil {
		cursor = bySeqKey(a.disk, a.prev+1, 0)
	}
	prefix := bySeqDiskPrefix(a.disk)
	err = s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(cursor); it.Valid() && len(page) < mergePageSize; it.Next() {
			_, sq, block, ok := parseBySeqKey(it.Item().Key())
			if !ok || sq > a.seq {
				break
			}
			page = append(page, seqBlock{sq, block})
			// The smallest key after this one.
			next = append(it.Item().KeyCopy(nil), 0)
		}
		return nil
	})
	return page, next, err
}

// planDrops decides which entries of page the merge drops: entry (B, s) is
// dropped when B has a newer entry at or before upper (one reverse seek
// per block), or when it is B's newest there and overridden(B) says a
// later epoch overrides it. Reads go through txn, so a concurrent write of
// an overriding entry makes the merge's commit conflict and retry.
func planDrops(txn *badger.Txn, a mergeArgs, page []seqBlock) ([]dropped, error) {
	it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: entryDiskPrefix(a.disk)})
	defer it.Close()
	newest := make(map[uint64]uint64, len(page)) // block -> newest seq at or before upper
	var drops []dropped
	for _, e := range page {
		top, ok := newest[e.block]
		if !ok {
			ref, found, err := seekEntry(it, a.disk, e.block, a.upper())
			if err != nil {
				return nil, err
			}
			if !found {
				continue // the index names an entry that is gone
			}
			top = ref.Seq
			newest[e.block] = top
		}
		switch {
		case top < e.seq:
			continue
		case top == e.seq && (a.overridden == nil || !a.overridden(e.block)):
			continue
		}
		ref, found, err := getEntry(txn, entryKey(a.disk, e.block, e.seq))
		if err != nil {
			return nil, err
		}
		if found {
			drops = append(drops, dropped{seqBlock: e, zero: ref.Zero, hash: ref.Hash})
		}
	}
	return drops, nil
}

func (s *Store) merge(ctx context.Context, a mergeArgs) (stored, logical uint64, err error) {
	if err := a.validate(); err != nil {
		return 0, 0, err
	}
	var cursor []byte
	for {
		page, next, err := s.snapshotPage(a, cursor)
		if err != nil || len(page) == 0 {
			return stored, logical, s.wrapErr(fmt.Sprintf("merge disk %d seq %d", a.disk, a.seq), err)
		}
		var done applied
		err = s.updateGuarded(ctx, writeMeta, uint64(len(page))*entryOverhead, func(txn *badger.Txn) error {
			drops, err := planDrops(txn, a, page)
			if err != nil {
				return err
			}
			deltas := make(refDeltas, len(drops))
			for _, d := range drops {
				if err := deleteEntry(txn, a.disk, d.block, d.seq); err != nil {
					return err
				}
				if !d.zero {
					deltas[d.hash]--
				}
			}
			done, err = applyRefDeltas(txn, deltas, nil)
			return err
		})
		if err != nil {
			return stored, logical, s.wrapErr(fmt.Sprintf("merge disk %d seq %d", a.disk, a.seq), err)
		}
		stored += done.freedStored
		logical += done.freedRaw
		s.reclaim.add(done.freedStored)
		cursor = next
	}
}

func (s *Store) unique(ctx context.Context, a mergeArgs) (stored, logical uint64, err error) {
	if err := a.validate(); err != nil {
		return 0, 0, err
	}
	released := make(map[[32]byte]uint64)
	var cursor []byte
	for {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		page, next, err := s.snapshotPage(a, cursor)
		if err != nil {
			return 0, 0, s.wrapErr("unique bytes", err)
		}
		if len(page) == 0 {
			break
		}
		err = s.view(func(txn *badger.Txn) error {
			drops, err := planDrops(txn, a, page)
			for _, d := range drops {
				if !d.zero {
					released[d.hash]++
				}
			}
			return err
		})
		if err != nil {
			return 0, 0, s.wrapErr("unique bytes", err)
		}
		cursor = next
	}
	err = s.view(func(txn *badger.Txn) error {
		for h, n := range released {
			ref, found, err := getRef(txn, h)
			if err != nil {
				return err
			}
			if found && ref.refs <= n {
				stored += ref.stored
				logical += ref.raw
			}
		}
		return nil
	})
	return stored, logical, s.wrapErr("unique bytes", err)
}

// deleteEntry removes one entry and its sequence-index key.
func deleteEntry(txn *badger.Txn, disk, block, seq uint64) error {
	if err := txn.Delete(entryKey(disk, block, seq)); err != nil {
		return err
	}
	return txn.Delete(bySeqKey(disk, seq, block))
}

func (s *Store) dropDisk(ctx context.Context, disk uint64) error {
	prefix := entryDiskPrefix(disk)
	for {
		var n int
		var done applied
		err := s.updateGuarded(ctx, writeMeta, mergePageSize*entryOverhead, func(txn *badger.Txn) error {
			n = 0
			var drops []dropped
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			for it.Seek(prefix); it.Valid() && len(drops) < mergePageSize; it.Next() {
				ref, _, err := getEntry(txn, it.Item().KeyCopy(nil))
				if err != nil {
					it.Close()
					return err
				}
				_, block, _, _ := parseEntryKey(it.Item().Key())
				drops = append(drops, dropped{seqBlock{ref.Seq, block}, ref.Zero, ref.Hash})
			}
			it.Close()
			n = len(drops)
			deltas := make(refDeltas)
			for _, d := range drops {
				if err := deleteEntry(txn, disk, d.block, d.seq); err != nil {
					return err
				}
				if !d.zero {
					deltas[d.hash]--
				}
			}
			var err error
			done, err = applyRefDeltas(txn, deltas, nil)
			return err
		})
		if err != nil {
			return s.wrapErr(fmt.Sprintf("drop disk %d", disk), err)
		}
		s.reclaim.add(done.freedStored)
		if n == 0 {
			return nil
		}
	}
}

func (s *Store) chainBytes(ctx context.Context, disk uint64) (u ChainUsage, err error) {
	chunks := make(map[[32]byte]struct{})
	err = s.scanEntries(ctx, disk, func(_, _ uint64, zero bool, h [32]byte) error {
		u.Entries++
		if !zero {
			chunks[h] = struct{}{}
		}
		return nil
	})
	if err == nil {
		err = s.view(func(txn *badger.Txn) error {
			for h := range chunks {
				ref, _, err := getRef(txn, h)
				if err != nil {
					return err
				}
				u.Stored += ref.stored
				u.Uncompressed += ref.raw
			}
			return nil
		})
	}
	return u, s.wrapErr(fmt.Sprintf("chain bytes of disk %d", disk), err)
}
