package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

// maxFaults caps the fault lines of one report; the last line says how
// many more there were.
const maxFaults = 1000

// faultList collects fault lines from several goroutines.
type faultList struct {
	mu     sync.Mutex // guards lines and more
	lines  []string
	more   int
	counts map[string]int // by kind, for tests and summaries
}

func (f *faultList) add(kind, format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.counts == nil {
		f.counts = make(map[string]int)
	}
	f.counts[kind]++
	if len(f.lines) >= maxFaults {
		f.more++
		return
	}
	f.lines = append(f.lines, kind+": "+fmt.Sprintf(format, args...))
}

func (f *faultList) report() []string {
	if f.more > 0 {
		return append(f.lines, fmt.Sprintf("... and %d more faults", f.more))
	}
	return f.lines
}

// Fault kinds, the first word of each fault line.
const (
	faultCorrupt  = "corrupt chunk"
	faultMissing  = "missing chunk"
	faultOrphan   = "orphan chunk"
	faultRefcount = "refcount mismatch"
	faultIndex    = "index mismatch"
	faultEntry    = "bad entry"
)

// verifyState is what the passes of one Verify share.
type verifyState struct {
	disk    uint64 // 0: every disk
	stored  map[[32]byte]bool
	refs    map[[32]byte]chunkRef
	counted map[[32]byte]uint64   // data entries naming each chunk, over all disks
	inScope map[[32]byte]struct{} // chunks the checked disk uses (disk != 0)
	faults  faultList
	report  VerifyReport
}

func (v *verifyState) scoped(h [32]byte) bool {
	if v.disk == 0 {
		return true
	}
	_, ok := v.inScope[h]
	return ok
}

// verify is Verify; afterPass (may be nil) runs after each of its passes
// over the keys, so a test can change the store between them.
func (s *Store) verify(ctx context.Context, disk uint64, progress func(done, total uint64), afterPass func()) (VerifyReport, error) {
	v := &verifyState{
		disk:    disk,
		stored:  make(map[[32]byte]bool),
		refs:    make(map[[32]byte]chunkRef),
		counted: make(map[[32]byte]uint64),
		inScope: make(map[[32]byte]struct{}),
	}
	// Every pass reads the same read transaction, one consistent view of
	// the store: a copy-out that stores chunks and entries while verify
	// runs is either all seen or not at all (read separately, an entry
	// stored after the chunk pass looked like a missing chunk).
	err := s.view(func(txn *badger.Txn) error {
		for _, pass := range []func(context.Context, *badger.Txn, *verifyState) error{
			s.verifyListChunks, s.verifyRefs, s.verifyEntries, s.verifyIndex,
		} {
			if err := pass(ctx, txn, v); err != nil {
				return err
			}
			if afterPass != nil {
				afterPass()
			}
		}
		v.checkCounts()
		return s.verifyContent(ctx, txn, v, progress)
	})
	if err != nil {
		return v.report, s.wrapErr("verify", err)
	}
	v.report.Faults = v.faults.report()
	if disk == 0 && len(v.report.Faults) == 0 {
		s.clearSuspect() // the whole store is sound (fault.go)
	}
	return v.report, nil
}

// verifyListChunks notes which chunks are stored (keys only).
func (s *Store) verifyListChunks(ctx context.Context, txn *badger.Txn, v *verifyState) error {
	return scanKeys(ctx, txn, []byte{prefixChunk}, func(item *badger.Item) error {
		if h, ok := hashFromKey(item.Key()); ok {
			v.stored[h] = true
		}
		return nil
	})
}

func (s *Store) verifyRefs(ctx context.Context, txn *badger.Txn, v *verifyState) error {
	return scanKeys(ctx, txn, []byte{prefixRef}, func(item *badger.Item) error {
		h, _ := hashFromKey(item.Key())
		return item.Value(func(val []byte) error {
			ref, err := parseChunkRef(val)
			if err != nil {
				v.faults.add(faultRefcount, "chunk %x: %v", h, err)
				return nil
			}
			v.refs[h] = ref
			return nil
		})
	})
}

// verifyEntries counts references over every disk's entries and checks
// that the chunks the checked entries name are stored.
func (s *Store) verifyEntries(ctx context.Context, txn *badger.Txn, v *verifyState) error {
	return scanKeys(ctx, txn, []byte{prefixEntry}, func(item *badger.Item) error {
		d, b, sq, ok := parseEntryKey(item.Key())
		if !ok {
			v.faults.add(faultEntry, "malformed entry key %x", item.Key())
			return nil
		}
		var zero bool
		var h [32]byte
		err := item.Value(func(val []byte) (err error) {
			zero, h, err = parseEntryValue(val)
			return err
		})
		switch {
		case errors.Is(err, block.ErrCorrupt):
			v.faults.add(faultEntry, "disk %d block %d seq %d: %v", d, b, sq, err)
			return nil
		case err != nil:
			return err
		}
		v.checkEntry(d, b, sq, zero, h)
		return nil
	})
}

// checkEntry counts one entry's reference.
func (v *verifyState) checkEntry(d, b, sq uint64, zero bool, h [32]byte) {
	if v.disk != 0 && d != v.disk {
		if !zero {
			v.counted[h]++
		}
		return
	}
	v.report.EntriesChecked++
	if zero {
		return
	}
	v.counted[h]++
	v.inScope[h] = struct{}{}
	if !v.stored[h] {
		v.faults.add(faultMissing, "disk %d block %d seq %d names chunk %x, which is not stored", d, b, sq, h)
	}
}

// verifyIndex checks that every entry has its sequence-index key and no
// index key lacks its entry: counted per disk, then, for a disk whose
// counts differ, key by key.
func (s *Store) verifyIndex(ctx context.Context, txn *badger.Txn, v *verifyState) error {
	entries := make(map[uint64]uint64)
	index := make(map[uint64]uint64)
	count := func(into map[uint64]uint64) func(*badger.Item) error {
		return func(item *badger.Item) error {
			if d, ok := diskOfKey(item.Key()); ok {
				into[d]++
			}
			return nil
		}
	}
	if err := scanKeys(ctx, txn, []byte{prefixEntry}, count(entries)); err != nil {
		return err
	}
	if err := scanKeys(ctx, txn, []byte{prefixBySeq}, count(index)); err != nil {
		return err
	}
	for d, n := range entries {
		if index[d] != n && (v.disk == 0 || d == v.disk) {
			if err := verifyDiskIndex(ctx, txn, v, d); err != nil {
				return err
			}
		}
	}
	for d, n := range index {
		if _, ok := entries[d]; !ok && (v.disk == 0 || d == v.disk) {
			v.faults.add(faultIndex, "disk %d: %d sequence-index keys but no entries", d, n)
		}
	}
	return nil
}

// verifyDiskIndex names each entry of disk without its index key and each
// index key without its entry.
func verifyDiskIndex(ctx context.Context, txn *badger.Txn, v *verifyState, disk uint64) error {
	check := func(prefix []byte, other func(k []byte) []byte, what string) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := it.Item().Key()
			if _, err := txn.Get(other(k)); err == badger.ErrKeyNotFound {
				v.faults.add(faultIndex, "%s %x has no counterpart", what, k)
			} else if err != nil {
				return err
			}
		}
		return nil
	}
	err := check(entryDiskPrefix(disk), func(k []byte) []byte {
		d, b, sq, _ := parseEntryKey(k)
		return bySeqKey(d, sq, b)
	}, "entry")
	if err != nil {
		return err
	}
	return check(bySeqDiskPrefix(disk), func(k []byte) []byte {
		d, sq, b, _ := parseBySeqKey(k)
		return entryKey(d, b, sq)
	}, "sequence-index key")
}

// checkCounts compares stored reference counts with the entries. Missing
// chunks named by entries were reported, entry by entry, in verifyEntries.
func (v *verifyState) checkCounts() {
	for h, ref := range v.refs {
		if !v.scoped(h) {
			continue
		}
		switch n := v.counted[h]; {
		case n == 0 && v.stored[h]:
			v.faults.add(faultOrphan, "chunk %x: stored with refcount %d but no entry names it", h, ref.refs)
		case n == 0:
			v.faults.add(faultOrphan, "chunk %x: reference record (refcount %d) without chunk or entries", h, ref.refs)
		case ref.refs != n:
			v.faults.add(faultRefcount, "chunk %x: stored refcount %d, %d entries name it", h, ref.refs, n)
		}
	}
	for h, n := range v.counted {
		if _, ok := v.refs[h]; !ok && v.scoped(h) {
			v.faults.add(faultRefcount, "chunk %x: no reference record, %d entries name it", h, n)
		}
	}
	for h := range v.stored {
		if _, ok := v.refs[h]; !ok && v.scoped(h) && v.counted[h] == 0 {
			v.faults.add(faultOrphan, "chunk %x: stored without a reference record or entries", h)
		}
	}
}

// verifyContent re-hashes every chunk in scope on all cores.
func (s *Store) verifyContent(ctx context.Context, txn *badger.Txn, v *verifyState, progress func(done, total uint64)) error {
	var total uint64
	for h := range v.stored {
		if v.scoped(h) {
			total++
		}
	}
	type chunk struct {
		h   [32]byte
		val []byte
	}
	work := make(chan chunk, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards done and the progress calls
	var done uint64
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for c := range work {
				s.verifyChunk(v, c.h, c.val, &buf)
				mu.Lock()
				done++
				if progress != nil && (done%256 == 0 || done == total) {
					progress(done, total)
				}
				mu.Unlock()
			}
		}()
	}
	err := scanKeys(ctx, txn, []byte{prefixChunk}, func(item *badger.Item) error {
		h, _ := hashFromKey(item.Key())
		if !v.scoped(h) {
			return nil
		}
		var val []byte
		err := faultSafe(func() (err error) { val, err = item.ValueCopy(nil); return err })
		if err != nil {
			v.faults.add(faultCorrupt, "chunk %x: cannot read: %v", h, err)
			return nil
		}
		work <- chunk{h, val}
		return nil
	})
	close(work)
	wg.Wait()
	v.report.ChunksChecked = done
	if progress != nil && done == 0 {
		progress(0, total)
	}
	return err
}

// verifyChunk decodes and re-hashes one chunk; buf is the worker's scratch.
func (s *Store) verifyChunk(v *verifyState, h [32]byte, val []byte, buf *[]byte) {
	n, err := rawLen(val)
	if err != nil {
		v.faults.add(faultCorrupt, "chunk %x: %v", h, err)
		return
	}
	if ref, ok := v.refs[h]; ok {
		if ref.stored != uint64(len(val)) || ref.raw != uint64(n) {
			v.faults.add(faultCorrupt, "chunk %x: %d bytes stored decoding to %d, its reference record says %d and %d",
				h, len(val), n, ref.stored, ref.raw)
			return
		}
	}
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	if err := decodeChunk(h, val, (*buf)[:n]); err != nil {
		v.faults.add(faultCorrupt, "%v", err)
	}
}

// scanKeys calls fn for every item of txn whose key starts with prefix.
// Values are never prefetched: Badger prefetches on goroutines of its
// own, where a disk's read error in a mapped file would be a fatal
// SIGBUS; fn reads them on the caller's, where it is an error (fault.go).
func scanKeys(ctx context.Context, txn *badger.Txn, prefix []byte, fn func(item *badger.Item) error) error {
	opts := badger.IteratorOptions{Prefix: prefix}
	it := txn.NewIterator(opts)
	defer it.Close()
	n := 0
	for it.Seek(prefix); it.Valid(); it.Next() {
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(it.Item()); err != nil {
			return err
		}
	}
	return nil
}

// scanKeys is scanKeys in a read transaction of its own.
func (s *Store) scanKeys(ctx context.Context, prefix []byte, fn func(item *badger.Item) error) error {
	return s.view(func(txn *badger.Txn) error {
		return scanKeys(ctx, txn, prefix, fn)
	})
}
