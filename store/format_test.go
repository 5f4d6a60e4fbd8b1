package store

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestFormatVersion: a new store records the current format; a store
// without one (written before versions) is format 1 and is upgraded; a
// store of a newer format is refused with a message that says what to
// do, and is left as it was.
func TestFormatVersion(t *testing.T) {
	dir := t.TempDir()
	read := func() uint64 {
		t.Helper()
		db, err := badger.Open(badgerOptions(Options{Dir: dir}))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v uint64
		db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(bookkeepKey(keyFormat))
			if err != nil {
				return err
			}
			return item.Value(func(b []byte) error { v = binary.BigEndian.Uint64(b); return nil })
		})
		return v
	}
	write := func(v uint64, drop bool) {
		t.Helper()
		db, err := badger.Open(badgerOptions(Options{Dir: dir}))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.Update(func(txn *badger.Txn) error {
			if drop {
				return txn.Delete(bookkeepKey(keyFormat))
			}
			return txn.Set(bookkeepKey(keyFormat), binary.BigEndian.AppendUint64(nil, v))
		}); err != nil {
			t.Fatal(err)
		}
	}

	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutRecord("disk/a", map[string]int{"id": 1}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := read(); got != FormatVersion {
		t.Fatalf("a new store records format %d, want %d", got, FormatVersion)
	}

	write(0, true) // as a store written before versions
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("a store of format 1 (no version): %v", err)
	}
	s.Close()
	if got := read(); got != FormatVersion {
		t.Fatalf("an old store was not upgraded: format %d", got)
	}

	write(FormatVersion+1, false)
	_, err = Open(Options{Dir: dir})
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "newer cairnd") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("a newer format opened: %v", err)
	}
	if got := read(); got != FormatVersion+1 {
		t.Fatalf("refusing a newer store changed its format to %d", got)
	}
}
