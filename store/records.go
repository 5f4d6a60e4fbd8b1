package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

// recordOverhead is what one small key costs on disk beyond its bytes,
// roughly (write-ahead log and table entry headers).
const recordOverhead = 64

func (s *Store) updateRecords(puts map[string]any, deletes []string) error {
	encoded := make(map[string][]byte, len(puts))
	var size uint64
	for key, v := range puts {
		if key == "" {
			return errors.New("store: record with an empty key")
		}
		if slices.Contains(deletes, key) {
			return fmt.Errorf("store: record %q both put and deleted in one update", key)
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("store: encode record %q: %w", key, err)
		}
		encoded[key] = raw
		size += uint64(len(key)+len(raw)) + recordOverhead
	}
	size += uint64(len(deletes)) * recordOverhead
	err := s.updateGuarded(context.Background(), writeMeta, size, func(txn *badger.Txn) error {
		for key, raw := range encoded {
			if err := txn.Set(recordKey(key), raw); err != nil {
				return err
			}
		}
		for _, key := range deletes {
			if err := txn.Delete(recordKey(key)); err != nil {
				return err
			}
		}
		return nil
	})
	return s.wrapErr("write records", err)
}

func (s *Store) getRecord(key string, v any) error {
	err := s.view(func(txn *badger.Txn) error {
		item, err := txn.Get(recordKey(key))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("record %q: %w", key, block.ErrNotFound)
		}
		if err != nil {
			return err
		}
		return item.Value(func(raw []byte) error {
			if err := json.Unmarshal(raw, v); err != nil {
				return fmt.Errorf("decode record %q: %w", key, err)
			}
			return nil
		})
	})
	if errors.Is(err, block.ErrNotFound) {
		return err
	}
	return s.wrapErr("read record", err)
}

func (s *Store) listRecords(prefix string, fn func(key string, raw []byte) error) error {
	p := recordKey(prefix)
	var cbErr error
	err := s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Seek(p); it.Valid(); it.Next() {
			item := it.Item()
			raw, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := fn(string(item.Key()[1:]), raw); err != nil {
				cbErr = err
				return err
			}
		}
		return nil
	})
	if cbErr != nil {
		return cbErr // the caller's own error, untouched
	}
	return s.wrapErr("list records", err)
}

func (s *Store) nextID(name string) (uint64, error) {
	if name == "" {
		return 0, errors.New("store: id sequence with an empty name")
	}
	var id uint64
	err := s.updateGuarded(context.Background(), writeMeta, recordOverhead, func(txn *badger.Txn) error {
		id = 0
		item, err := txn.Get(idKey(name))
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := item.Value(func(v []byte) error {
				last, err := decodeU64(v)
				id = last
				return err
			}); err != nil {
				return err
			}
		}
		id++
		return txn.Set(idKey(name), encodeU64(id))
	})
	if err != nil {
		return 0, s.wrapErr(fmt.Sprintf("next id %q", name), err)
	}
	return id, nil
}
