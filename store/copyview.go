package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Layer is one chain of a view: the entries of Disk at or before Seq.
// A view is a list of layers; a block reads from the first layer that has
// an entry for it (a clone's own chain, then its origin's, and so on).
type Layer struct{ Disk, Seq uint64 }

// BaseSeq is the sequence of a chain's base: entries copied from another
// view (CopyView) that every snapshot of the chain sees under its own.
// Snapshots start at 1, so changes (Changed, Merge, Unique) never count
// the base.
const BaseSeq = 0

// copyViewBlocks is how many blocks CopyView reads per pass.
const copyViewBlocks = 4096

// CopyView writes into toDisk's base (sequence BaseSeq) an entry for every
// block below nblocks that the view layers gives, referencing the same
// chunk: metadata only, whatever the data. Blocks no layer holds are not
// written. A block that already has a base entry is rewritten in place,
// so CopyView is idempotent and a run a crash interrupted is finished by
// running it again. progress (may be nil) gets blocks done of nblocks.
// Durable after Sync.
func (s *Store) CopyView(ctx context.Context, layers []Layer, toDisk, nblocks uint64, progress func(done, total uint64)) error {
	for lo := uint64(0); lo < nblocks; lo += copyViewBlocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		hi := min(lo+copyViewBlocks, nblocks)
		view, err := s.viewRange(layers, lo, hi)
		if err != nil {
			return s.wrapErr("copy view", err)
		}
		if err := s.putBase(ctx, toDisk, view); err != nil {
			return s.wrapErr(fmt.Sprintf("copy view into disk %d", toDisk), err)
		}
		if progress != nil {
			progress(hi, nblocks)
		}
	}
	return nil
}

// viewRange is the view's entry of each block in [lo, hi) that has one.
func (s *Store) viewRange(layers []Layer, lo, hi uint64) (map[uint64]Ref, error) {
	view := map[uint64]Ref{}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, l := range layers {
			layer := map[uint64]Ref{}
			it := txn.NewIterator(badger.IteratorOptions{Prefix: entryDiskPrefix(l.Disk)})
			for it.Seek(entryKey(l.Disk, lo, 0)); it.Valid(); it.Next() {
				_, b, sq, ok := parseEntryKey(it.Item().Key())
				if !ok || b >= hi {
					break
				}
				if sq > l.Seq {
					continue
				}
				var ref Ref
				err := it.Item().Value(func(v []byte) error {
					var err error
					ref.Zero, ref.Hash, err = parseEntryValue(v)
					return err
				})
				if err != nil {
					it.Close()
					return err
				}
				ref.Seq = sq
				layer[b] = ref // entries of a block come oldest first: the last one wins
			}
			it.Close()
			for b, ref := range layer {
				if _, ok := view[b]; !ok {
					view[b] = ref
				}
			}
		}
		return nil
	})
	return view, err
}

// putBase writes base entries of disk, in groups.
func (s *Store) putBase(ctx context.Context, disk uint64, view map[uint64]Ref) error {
	blocks := make([]uint64, 0, len(view))
	for b := range view {
		blocks = append(blocks, b)
	}
	for len(blocks) > 0 {
		n := min(len(blocks), putGroupEntries)
		if err := s.putBaseGroup(ctx, disk, blocks[:n], view); err != nil {
			return err
		}
		blocks = blocks[n:]
	}
	return nil
}

func (s *Store) putBaseGroup(ctx context.Context, disk uint64, blocks []uint64, view map[uint64]Ref) error {
	var done applied
	err := s.updateGuarded(ctx, writeMeta, uint64(len(blocks))*entryOverhead, func(txn *badger.Txn) error {
		deltas := refDeltas{}
		for _, b := range blocks {
			ref := view[b]
			ek := entryKey(disk, b, BaseSeq)
			old, found, err := getEntry(txn, ek)
			if err != nil {
				return err
			}
			if found && !old.Zero {
				deltas[old.Hash]--
			}
			if !ref.Zero {
				deltas[ref.Hash]++
			}
			if err := txn.Set(ek, entryValue(ref.Zero, ref.Hash)); err != nil {
				return err
			}
			if err := txn.Set(bySeqKey(disk, BaseSeq, b), nil); err != nil {
				return err
			}
		}
		var err error
		done, err = applyRefDeltas(txn, deltas, nil) // every chunk copied is stored: it gains a reference only
		return err
	})
	if errors.Is(err, badger.ErrTxnTooBig) && len(blocks) > 1 {
		half := len(blocks) / 2
		if err := s.putBaseGroup(ctx, disk, blocks[:half], view); err != nil {
			return err
		}
		return s.putBaseGroup(ctx, disk, blocks[half:], view)
	}
	if err == nil {
		s.reclaim.add(done.freedStored)
	}
	return err
}

// ChainUnique is what dropping disk's whole chain would free: the stored
// and uncompressed bytes of the chunks only its entries reference (an
// image's own capacity).
func (s *Store) ChainUnique(ctx context.Context, disk uint64) (stored, logical uint64, err error) {
	counts := make(map[[32]byte]uint64)
	err = s.scanEntries(ctx, disk, func(_, _ uint64, zero bool, h [32]byte) error {
		if !zero {
			counts[h]++
		}
		return nil
	})
	if err == nil {
		err = s.db.View(func(txn *badger.Txn) error {
			for h, n := range counts {
				ref, _, err := getRef(txn, h)
				if err != nil {
					return err
				}
				if ref.refs == n {
					stored += ref.stored
					logical += ref.raw
				}
			}
			return nil
		})
	}
	return stored, logical, s.wrapErr(fmt.Sprintf("unique bytes of disk %d", disk), err)
}
