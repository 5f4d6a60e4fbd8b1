package store

import (
	"slices"
	"testing"
)

// TestScanRecords: forward from a key, backward from the end or a key,
// stopping when told, and never past the prefix.
func TestScanRecords(t *testing.T) {
	s := openTest(t, t.TempDir())
	defer s.Close()
	for id := uint64(1); id <= 5; id++ {
		if err := s.PutRecord(EventKey(id), id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutRecord("eventz", 99); err != nil { // shares "event" but not the prefix "event/"
		t.Fatal(err)
	}
	scan := func(from string, reverse bool, limit int) []string {
		var keys []string
		if err := s.ScanRecords(EventPrefix, from, reverse, func(key string, _ []byte) bool {
			keys = append(keys, key[len(EventPrefix):])
			return len(keys) < limit
		}); err != nil {
			t.Fatal(err)
		}
		return keys
	}
	ids := func(n ...int) []string {
		var out []string
		for _, i := range n {
			out = append(out, EventKey(uint64(i))[len(EventPrefix):])
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		from    string
		reverse bool
		limit   int
		want    []string
	}{
		{"all forward", "", false, 10, ids(1, 2, 3, 4, 5)},
		{"forward from 3", EventKey(3), false, 10, ids(3, 4, 5)},
		{"forward, two", "", false, 2, ids(1, 2)},
		{"newest two", "", true, 2, ids(5, 4)},
		{"backward from 3", EventKey(3), true, 10, ids(3, 2, 1)},
	} {
		if got := scan(tc.from, tc.reverse, tc.limit); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
