package store

import (
	"bytes"

	"github.com/dgraph-io/badger/v4"
)

// ScanRecords calls fn with the records whose keys start with prefix, in
// key order from the first key at or after from ("" or prefix: the
// first), or, reverse, in reverse order from the last key at or before
// from ("": the last). fn returns false to stop. For logs whose keys sort
// by time or id (events, capacity samples): a page of them costs what it
// reads, whatever the log's length.
func (s *Store) ScanRecords(prefix, from string, reverse bool, fn func(key string, raw []byte) bool) error {
	p := recordKey(prefix)
	start := recordKey(from)
	if from == "" {
		start = p
		if reverse {
			start = append(bytes.Clone(p), 0xff) // past every key of the prefix
		}
	}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p, PrefetchValues: true, PrefetchSize: 64, Reverse: reverse})
		defer it.Close()
		for it.Seek(start); it.Valid(); it.Next() {
			item := it.Item()
			raw, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if !fn(string(item.Key()[1:]), raw) {
				return nil
			}
		}
		return nil
	})
	return s.wrapErr("scan records", err)
}
