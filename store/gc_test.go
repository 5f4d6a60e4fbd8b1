package store

import (
	"context"
	"math/rand/v2"
	"testing"
)

// TestGCGivesSpaceBack deletes three quarters of the chunks and checks
// that RunGC shrinks the directory and the reclaim estimate, while another
// disk keeps writing (the memtable flush blocks writes for a moment and
// they must be retried, not fail).
func TestGCGivesSpaceBack(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), ReserveBytes: 1 << 20, tune: tinyBadger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(9, 9))
	var last []Entry
	for seq := uint64(1); seq <= 4; seq++ {
		last = nil
		for b := range uint64(64) {
			last = append(last, Entry{b, randomBlock(rng, 64<<10)})
		}
		put(t, s, 1, seq, last...)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if _, _, err := s.Merge(ctx, 1, 0, seq, seq+1, nil); err != nil {
			t.Fatal(err)
		}
	}
	before, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.ReclaimBytes < 3*64*64<<10 {
		t.Fatalf("ReclaimBytes %d after freeing 192 chunks of 64 KiB", before.ReclaimBytes)
	}

	writes := make(chan error, 1)
	go func() {
		for seq := uint64(1); seq <= 50; seq++ {
			if err := s.PutEntries(ctx, 2, seq, []Entry{{0, textBlock(int(seq), testBlock)}}); err != nil {
				writes <- err
				return
			}
		}
		writes <- nil
	}()
	if err := s.RunGC(); err != nil {
		t.Fatal(err)
	}
	if err := <-writes; err != nil {
		t.Fatalf("PutEntries during GC: %v", err)
	}
	after, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.DiskBytes > before.DiskBytes/2 || after.ReclaimBytes >= before.ReclaimBytes {
		t.Errorf("after GC: %d bytes on disk (was %d), reclaim %d (was %d); want the freed chunks' space back",
			after.DiskBytes, before.DiskBytes, after.ReclaimBytes, before.ReclaimBytes)
	}
	for _, e := range last {
		wantRead(t, s, 1, e.Block, 4, e.Data)
	}
	wantClean(t, s)
}
