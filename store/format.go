package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// The store's format version: z<format>, a u64, written when a store is
// created and checked at every open. Bump FormatVersion with any change
// an older cairnd would misread (a key family, an entry or chunk codec, a
// record field whose absence means something else); an older cairnd then
// refuses the store instead of misreading it.
//
//	1  the first release: chunks, entries, disk and snapshot records. Stores
//	   written before the version existed have no z<format> and are format 1.
//	2  clones (a disk record's origin layers: an older cairnd would read a
//	   clone's unwritten blocks as zeros), images, machines, tasks.
const FormatVersion = 2

const keyFormat = "format" // z<format>

// ErrFormat is the error of opening a store of a newer format.
var ErrFormat = errors.New("store format unknown to this cairnd")

// checkFormat reads the store's format version, refuses one newer than
// FormatVersion and records FormatVersion (an older store is read as it
// is: every format change so far only adds).
func checkFormat(db *badger.DB, dir string) error {
	key := bookkeepKey(keyFormat)
	var have uint64
	empty := true
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err == nil {
			return item.Value(func(v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("%w: %s: the format record is %d bytes, not 8", ErrFormat, dir, len(v))
				}
				have = binary.BigEndian.Uint64(v)
				return nil
			})
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		empty = !it.Valid()
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: read the format of %s: %w", dir, err)
	}
	if have == 0 && !empty {
		have = 1
	}
	if have > FormatVersion {
		return fmt.Errorf("%w: %s is format %d, written by a newer cairnd; this cairnd reads formats up to %d and would misread it: run the newer cairnd (or restore this data directory's backup)",
			ErrFormat, dir, have, FormatVersion)
	}
	if have == FormatVersion {
		return nil
	}
	val := binary.BigEndian.AppendUint64(nil, FormatVersion)
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set(key, val) }); err != nil {
		return fmt.Errorf("store: record the format of %s: %w", dir, err)
	}
	return nil
}
