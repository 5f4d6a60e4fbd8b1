package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

const testBlock = 4 << 10

// randomBlock is incompressible content from rng.
func randomBlock(rng *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for i := 0; i < size; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < size; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// textBlock is compressible content that differs per seed.
func textBlock(seed, size int) []byte {
	var buf bytes.Buffer
	for i := 0; buf.Len() < size; i++ {
		fmt.Fprintf(&buf, "line %d of block %d: the quick brown fox jumps over the lazy dog\n", i, seed)
	}
	return buf.Bytes()[:size]
}

// filled is a block of one repeated byte (0 makes a zero block).
func filled(c byte, size int) []byte { return bytes.Repeat([]byte{c}, size) }

// concurrently runs fn(0..n-1) on n goroutines and fails t with the
// first error any of them returned.
func concurrently(t testing.TB, n int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func put(t testing.TB, s *Store, disk, seq uint64, entries ...Entry) {
	t.Helper()
	if err := s.PutEntries(context.Background(), disk, seq, entries); err != nil {
		t.Fatalf("PutEntries(disk %d, seq %d): %v", disk, seq, err)
	}
}

// wantRead checks block's content as of seq.
func wantRead(t testing.TB, s *Store, disk, block, seq uint64, want []byte) {
	t.Helper()
	buf := filled(0xee, len(want))
	if _, err := s.ReadBlock(context.Background(), disk, block, seq, buf); err != nil {
		t.Fatalf("ReadBlock(disk %d block %d seq %d): %v", disk, block, seq, err)
	}
	if !bytes.Equal(buf, want) {
		t.Errorf("ReadBlock(disk %d block %d seq %d) = %q..., want %q...", disk, block, seq, head(buf), head(want))
	}
}

func head(b []byte) []byte { return b[:min(len(b), 12)] }

// storedRefs reads every r<hash> directly from Badger.
func storedRefs(t testing.TB, s *Store) map[[32]byte]uint64 {
	t.Helper()
	refs := make(map[[32]byte]uint64)
	err := s.scanKeys(context.Background(), []byte{prefixRef}, func(item *badger.Item) error {
		h, _ := hashFromKey(item.Key())
		return item.Value(func(v []byte) error {
			ref, err := parseChunkRef(v)
			refs[h] = ref.refs
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

// storedChunks counts c<hash> keys directly.
func storedChunks(t testing.TB, s *Store) int {
	t.Helper()
	n := 0
	if err := s.scanKeys(context.Background(), []byte{prefixChunk}, func(*badger.Item) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func wantClean(t testing.TB, s *Store) {
	t.Helper()
	rep, err := s.Verify(context.Background(), 0, nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(rep.Faults) > 0 {
		t.Fatalf("Verify found %d faults, first: %v", len(rep.Faults), rep.Faults[:min(5, len(rep.Faults))])
	}
}

// rawSet writes a Badger key directly, to corrupt the store on purpose.
func rawSet(t testing.TB, s *Store, key, val []byte) {
	t.Helper()
	if err := s.db.Update(func(txn *badger.Txn) error {
		if val == nil {
			return txn.Delete(key)
		}
		return txn.Set(key, val)
	}); err != nil {
		t.Fatal(err)
	}
}

func rawGet(t testing.TB, s *Store, key []byte) []byte {
	t.Helper()
	var v []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatal(err)
	}
	return v
}
