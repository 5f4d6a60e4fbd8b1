package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

// A PutEntries transaction holds at most this many entries or this many
// bytes of new chunks; smaller groups retry cheaply after a conflict.
const (
	putGroupEntries = 1024
	putGroupBytes   = 16 << 20
	// entryOverhead is the space an entry's keys take beyond chunk data,
	// roughly, for the free-space guard.
	entryOverhead = 256
)

// prepared is one entry after the work done outside any transaction.
type prepared struct {
	block uint64
	zero  bool
	hash  [32]byte
	raw   []byte
	enc   []byte  // encoded chunk; nil until needed (absent from the store)
	buf   *[]byte // enc's buffer, back to encodeBufs when putEntries returns
}

func (s *Store) putEntries(ctx context.Context, disk, seq uint64, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if seq == 0 {
		return errors.New("store: PutEntries with sequence 0 (sequences start at 1)")
	}
	preps := prepare(entries)
	// Every transaction that could refer to an encoded chunk has
	// committed or been discarded by then.
	defer func() {
		for _, p := range preps {
			releaseChunkBuf(p.buf)
		}
	}()
	if err := s.encodeMissing(preps); err != nil {
		return s.wrapErr("put entries", err)
	}
	for rest := preps; len(rest) > 0; {
		n, bytes := 0, 0
		for n < len(rest) && n < putGroupEntries && bytes < putGroupBytes {
			bytes += len(rest[n].enc)
			n++
		}
		if err := s.putGroup(ctx, disk, seq, rest[:n]); err != nil {
			return s.wrapErr(fmt.Sprintf("put entries of disk %d seq %d", disk, seq), err)
		}
		rest = rest[n:]
	}
	return nil
}

// prepare keeps the last entry given for each block, and hashes and
// zero-checks them in parallel.
func prepare(entries []Entry) []*prepared {
	last := make(map[uint64]int, len(entries))
	for i, e := range entries {
		last[e.Block] = i
	}
	preps := make([]*prepared, 0, len(last))
	for i, e := range entries {
		if last[e.Block] == i {
			preps = append(preps, &prepared{block: e.Block, raw: e.Data})
		}
	}
	parallel(len(preps), func(i int) {
		p := preps[i]
		if p.zero = isZero(p.raw); !p.zero {
			p.hash = hashBlock(p.raw)
		}
	})
	return preps
}

// encodeMissing compresses the chunks the store does not hold yet, in
// parallel; a chunk already stored only gains a reference.
func (s *Store) encodeMissing(preps []*prepared) error {
	var missing []*prepared
	seen := make(map[[32]byte]bool)
	rewrite := s.suspect.Load() // every chunk is written again (fault.go)
	err := s.view(func(txn *badger.Txn) error {
		for _, p := range preps {
			if p.zero || seen[p.hash] {
				continue
			}
			seen[p.hash] = true
			_, found, err := getRef(txn, p.hash)
			if err != nil {
				return err
			}
			if !found || rewrite {
				missing = append(missing, p)
			}
		}
		return nil
	})
	parallel(len(missing), func(i int) { missing[i].enc, missing[i].buf = encodeChunk(missing[i].raw) })
	return err
}

// putGroup writes one group's entries and references in one transaction.
// ErrTxnTooBig (tiny memtables) splits the group in halves.
func (s *Store) putGroup(ctx context.Context, disk, seq uint64, group []*prepared) error {
	byHash := make(map[[32]byte]*prepared, len(group))
	var size uint64
	for _, p := range group {
		if !p.zero && byHash[p.hash] == nil {
			byHash[p.hash] = p
			size += uint64(len(p.enc))
		}
		size += entryOverhead
	}
	payload := func(h [32]byte) ([]byte, uint64) {
		p := byHash[h]
		if p.enc == nil { // freed by a concurrent merge since encodeMissing looked
			p.enc, p.buf = encodeChunk(p.raw)
		}
		return p.enc, uint64(len(p.raw))
	}
	var done applied
	err := s.updateGuarded(ctx, writeData, size, func(txn *badger.Txn) error {
		deltas := make(refDeltas, len(byHash))
		for _, p := range group {
			ek := entryKey(disk, p.block, seq)
			// An entry rewritten for the same (disk, block, seq) after a
			// crash moves its reference instead of adding one.
			old, found, err := getEntry(txn, ek)
			if err != nil {
				return err
			}
			if found && !old.Zero {
				deltas[old.Hash]--
			}
			if !p.zero {
				deltas[p.hash]++
			}
			if err := txn.Set(ek, entryValue(p.zero, p.hash)); err != nil {
				return err
			}
			if err := txn.Set(bySeqKey(disk, seq, p.block), nil); err != nil {
				return err
			}
		}
		var err error
		if done, err = applyRefDeltas(txn, deltas, payload); err != nil {
			return err
		}
		if s.suspect.Load() {
			// Repair: the content at hand over whatever the disk kept.
			for h := range byHash {
				if err := rewriteChunk(txn, h, payload); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if errors.Is(err, badger.ErrTxnTooBig) && len(group) > 1 {
		half := len(group) / 2
		if err := s.putGroup(ctx, disk, seq, group[:half]); err != nil {
			return err
		}
		return s.putGroup(ctx, disk, seq, group[half:])
	}
	if err == nil {
		s.reclaim.add(done.freedStored)
	}
	return err
}

// getEntry reads one entry by its exact key.
func getEntry(txn *badger.Txn, key []byte) (ref Ref, found bool, err error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ref, false, nil
	}
	if err != nil {
		return ref, false, err
	}
	err = item.Value(func(v []byte) error {
		ref.Zero, ref.Hash, err = parseEntryValue(v)
		return err
	})
	_, _, ref.Seq, _ = parseEntryKey(key)
	return ref, err == nil, err
}

// lookup finds the newest entry of (disk, block) at or before seq: one
// reverse seek to e<disk><block><seq>, which lands on the greatest key not
// above it, and a prefix check that it is still the same block.
func lookup(txn *badger.Txn, disk, block, seq uint64) (ref Ref, found bool, err error) {
	it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: entryBlockPrefix(disk, block)})
	defer it.Close()
	return seekEntry(it, disk, block, seq)
}

// seekEntry is lookup on an open reverse iterator, for callers that look
// up many blocks.
func seekEntry(it *badger.Iterator, disk, block, seq uint64) (ref Ref, found bool, err error) {
	it.Seek(entryKey(disk, block, seq))
	if !it.Valid() {
		return ref, false, nil
	}
	item := it.Item()
	d, b, sq, ok := parseEntryKey(item.Key())
	if !ok || d != disk || b != block {
		return ref, false, nil
	}
	ref.Seq = sq
	err = item.Value(func(v []byte) error {
		ref.Zero, ref.Hash, err = parseEntryValue(v)
		return err
	})
	return ref, err == nil, err
}

func (s *Store) lookup(ctx context.Context, disk, block, seq uint64) (ref Ref, found bool, err error) {
	if err := ctx.Err(); err != nil {
		return ref, false, err
	}
	err = s.view(func(txn *badger.Txn) error {
		ref, found, err = lookup(txn, disk, block, seq)
		return err
	})
	return ref, found, s.wrapErr("lookup", err)
}

func (s *Store) readBlock(ctx context.Context, disk, block, seq uint64, buf []byte) (found bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	err = s.view(func(txn *badger.Txn) error {
		var ref Ref
		ref, found, err = lookup(txn, disk, block, seq)
		if err != nil {
			return err
		}
		if !found || ref.Zero {
			clear(buf)
			return nil
		}
		if err := readChunk(txn, ref.Hash, buf); err != nil {
			return fmt.Errorf("disk %d block %d (entry seq %d): %w", disk, block, ref.Seq, err)
		}
		return nil
	})
	return found, s.wrapErr("read block", err)
}

// changed walks the sequence index s<disk><after+1> .. s<disk><upto>: the
// cost is the entries changed in that range, not the disk's size.
func (s *Store) changed(ctx context.Context, disk, after, upto uint64, into *bitmap.Bitmap) error {
	if upto <= after {
		return nil
	}
	n := 0
	prefix := bySeqDiskPrefix(disk)
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(bySeqKey(disk, after+1, 0)); it.Valid(); it.Next() {
			_, sq, block, ok := parseBySeqKey(it.Item().Key())
			if !ok || sq > upto {
				break
			}
			if block < into.Len() {
				into.Set(block)
			}
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return s.wrapErr("changed blocks", err)
}

// allocated walks the disk's entries in (block, seq) order, keeping for
// each block the kind of its last entry at or before seq.
func (s *Store) allocated(ctx context.Context, disk, seq uint64, into *bitmap.Bitmap) error {
	err := s.scanEntries(ctx, disk, func(block, sq uint64, zero bool, _ [32]byte) error {
		if sq > seq || block >= into.Len() {
			return nil
		}
		// Entries of a block come oldest first: the last one seen wins.
		if zero {
			into.Clear(block)
		} else {
			into.Set(block)
		}
		return nil
	})
	return s.wrapErr("allocated blocks", err)
}

// scanEntries calls fn for every entry of disk, in (block, seq) order.
func (s *Store) scanEntries(ctx context.Context, disk uint64, fn func(block, seq uint64, zero bool, h [32]byte) error) error {
	return s.scanEntryRange(ctx, entryDiskPrefix(disk), func(_, block, seq uint64, zero bool, h [32]byte) error {
		return fn(block, seq, zero, h)
	})
}

// scanEntryRange calls fn for every entry whose key starts with prefix.
func (s *Store) scanEntryRange(ctx context.Context, prefix []byte, fn func(disk, block, seq uint64, zero bool, h [32]byte) error) error {
	return s.scanKeys(ctx, prefix, func(item *badger.Item) error {
		d, b, sq, ok := parseEntryKey(item.Key())
		if !ok {
			return fmt.Errorf("%w: malformed entry key %x", block.ErrCorrupt, item.Key())
		}
		var zero bool
		var h [32]byte
		if err := item.Value(func(v []byte) (err error) {
			zero, h, err = parseEntryValue(v)
			return err
		}); err != nil {
			return fmt.Errorf("disk %d block %d seq %d: %w", d, b, sq, err)
		}
		return fn(d, b, sq, zero, h)
	})
}
