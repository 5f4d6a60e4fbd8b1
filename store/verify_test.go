package store

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestVerifyReportsEachFault(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	random := randomBlock(rng, testBlock) // stored raw, only by disk 1 block 0
	text := textBlock(77, testBlock)      // stored compressed, only by disk 1 block 1
	shared := textBlock(78, testBlock)    // disks 1 and 2
	only2 := textBlock(79, testBlock)     // disk 2 alone
	build := func(t *testing.T) *Store {
		s := openTest(t, "")
		put(t, s, 1, 1, Entry{0, random}, Entry{1, text}, Entry{2, shared}, Entry{3, filled(0, testBlock)})
		put(t, s, 2, 1, Entry{0, shared}, Entry{1, only2})
		return s
	}
	flip := func(s *Store, t *testing.T, data []byte, at int) {
		v := rawGet(t, s, chunkKey(hashBlock(data)))
		v[at] ^= 0x40
		rawSet(t, s, chunkKey(hashBlock(data)), v)
	}
	tests := []struct {
		name    string
		corrupt func(t *testing.T, s *Store)
		kind    string
		disk    uint64 // Verify's disk argument
		clean   bool   // the fault is outside the checked disk
	}{
		{"raw chunk content", func(t *testing.T, s *Store) { flip(s, t, random, 10) }, faultCorrupt, 0, false},
		{"compressed chunk content", func(t *testing.T, s *Store) { flip(s, t, text, 30) }, faultCorrupt, 0, false},
		{"reference count", func(t *testing.T, s *Store) {
			rawSet(t, s, refKey(hashBlock(shared)), chunkRef{refs: 3, stored: uint64(len(rawGet(t, s, chunkKey(hashBlock(shared))))), raw: testBlock}.encode())
		}, faultRefcount, 0, false},
		{"stored size", func(t *testing.T, s *Store) {
			rawSet(t, s, refKey(hashBlock(random)), chunkRef{refs: 1, stored: 5, raw: testBlock}.encode())
		}, faultCorrupt, 0, false},
		{"orphan chunk", func(t *testing.T, s *Store) {
			rawSet(t, s, entryKey(1, 1, 1), nil)
			rawSet(t, s, bySeqKey(1, 1, 1), nil)
		}, faultOrphan, 0, false},
		{"missing chunk", func(t *testing.T, s *Store) { rawSet(t, s, chunkKey(hashBlock(shared)), nil) }, faultMissing, 0, false},
		{"missing chunk seen from one disk", func(t *testing.T, s *Store) { rawSet(t, s, chunkKey(hashBlock(only2)), nil) }, faultMissing, 2, false},
		{"missing chunk of another disk", func(t *testing.T, s *Store) { rawSet(t, s, chunkKey(hashBlock(only2)), nil) }, faultMissing, 1, true},
		{"sequence index", func(t *testing.T, s *Store) { rawSet(t, s, bySeqKey(2, 1, 0), nil) }, faultIndex, 0, false},
		{"bad entry value", func(t *testing.T, s *Store) { rawSet(t, s, entryKey(1, 3, 1), []byte{9}) }, faultEntry, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := build(t)
			var calls, lastDone, lastTotal uint64
			rep, err := s.Verify(context.Background(), tc.disk, func(done, total uint64) { calls++; lastDone, lastTotal = done, total })
			if err != nil || len(rep.Faults) != 0 {
				t.Fatalf("Verify before corrupting: %v, faults %v", err, rep.Faults)
			}
			if calls == 0 || lastDone != lastTotal || rep.ChunksChecked != lastTotal {
				t.Errorf("progress: %d calls, last %d/%d, %d chunks checked", calls, lastDone, lastTotal, rep.ChunksChecked)
			}
			tc.corrupt(t, s)
			rep, err = s.Verify(context.Background(), tc.disk, nil)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			found := false
			for _, f := range rep.Faults {
				found = found || strings.HasPrefix(f, tc.kind+": ")
			}
			if tc.clean && len(rep.Faults) != 0 {
				t.Errorf("Verify(disk %d) reported another disk's fault: %v", tc.disk, rep.Faults)
			}
			if !tc.clean && !found {
				t.Errorf("Verify(disk %d) faults %q; want one of kind %q", tc.disk, rep.Faults, tc.kind)
			}
		})
	}
}

func TestVerifyCountsEntries(t *testing.T) {
	s := openTest(t, "")
	put(t, s, 1, 1, Entry{0, textBlock(1, testBlock)}, Entry{1, filled(0, testBlock)})
	put(t, s, 2, 1, Entry{0, textBlock(2, testBlock)})
	for _, tc := range []struct{ disk, entries, chunks uint64 }{{0, 3, 2}, {1, 2, 1}, {2, 1, 1}, {3, 0, 0}} {
		rep, err := s.Verify(context.Background(), tc.disk, nil)
		if err != nil || len(rep.Faults) > 0 || rep.EntriesChecked != tc.entries || rep.ChunksChecked != tc.chunks {
			t.Errorf("Verify(disk %d) = %+v, %v; want %d entries, %d chunks, no faults", tc.disk, rep, err, tc.entries, tc.chunks)
		}
	}
}

// TestVerifyOneView: verify reads one consistent view of the store. A
// snapshot's chunks and entries stored while verify runs (here between
// each of its passes, as a copy-out can) are either seen whole or not at
// all, never as entries whose chunks are missing or counts that differ.
func TestVerifyOneView(t *testing.T) {
	s := openTest(t, "")
	put(t, s, 1, 1, Entry{0, textBlock(1, testBlock)}, Entry{1, textBlock(2, testBlock)})
	seq := uint64(1)
	storeSnapshot := func() {
		seq++
		// A new chunk, and another reference to one already stored.
		put(t, s, 1, seq, Entry{0, textBlock(int(100+seq), testBlock)}, Entry{1, textBlock(1, testBlock)})
	}
	rep, err := s.verify(context.Background(), 0, nil, storeSnapshot)
	if err != nil || len(rep.Faults) > 0 || rep.EntriesChecked != 2 || rep.ChunksChecked != 2 {
		t.Fatalf("Verify while snapshots are stored = %+v, %v; want the 2 entries and 2 chunks of before it began, no faults", rep, err)
	}
	if seq < 3 {
		t.Fatalf("the hook stored %d snapshots during verify; the test needs several passes", seq-1)
	}
	rep, err = s.Verify(context.Background(), 0, nil)
	if want := 2 + 2*(seq-1); err != nil || len(rep.Faults) > 0 || rep.EntriesChecked != want {
		t.Fatalf("Verify afterwards = %+v, %v; want %d entries, no faults", rep, err, want)
	}
}
