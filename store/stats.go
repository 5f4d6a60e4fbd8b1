package store

import (
	"context"

	"github.com/dgraph-io/badger/v4"
)

// stats walks the reference records (one per chunk) and the entries; its
// cost grows with the store, so callers should not poll it per request.
func (s *Store) stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.scanKeys(ctx, []byte{prefixRef}, func(item *badger.Item) error {
		return item.Value(func(v []byte) error {
			ref, err := parseChunkRef(v)
			if err != nil {
				return err
			}
			st.Chunks++
			st.UniqueBytes += ref.raw
			st.StoredBytes += ref.stored
			st.LogicalBytes += ref.refs * ref.raw
			return nil
		})
	})
	if err == nil {
		err = s.scanEntryRange(ctx, []byte{prefixEntry}, func(_, _, _ uint64, zero bool, _ [32]byte) error {
			if zero {
				st.ZeroEntries++
			} else {
				st.DataEntries++
			}
			return nil
		})
	}
	if err != nil {
		return st, s.wrapErr("stats", err)
	}
	st.ReclaimBytes = s.reclaim.bytes.Load()
	st.DiskBytes = diskUsage(s.dir, "")
	return st, nil
}
