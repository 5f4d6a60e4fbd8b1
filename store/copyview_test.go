package store

import (
	"context"
	"testing"

	"github.com/cairn-storage/cairn/bitmap"
)

// TestCopyView: a clone's base takes the view of its layers (the first
// layer holding a block wins; zero entries too), references the same
// chunks, is idempotent, and its chunks are released when it goes.
func TestCopyView(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	put(t, s, 1, 1, Entry{0, filled(1, testBlock)}, Entry{1, filled(2, testBlock)}, Entry{2, filled(3, testBlock)})
	put(t, s, 1, 2, Entry{1, filled(4, testBlock)}, Entry{3, filled(5, testBlock)}) // past the view's seq 1
	put(t, s, 2, 1, Entry{2, filled(6, testBlock)}, Entry{4, make([]byte, testBlock)})
	chunks := storedChunks(t, s)
	layers := []Layer{{Disk: 2, Seq: 1}, {Disk: 1, Seq: 1}}
	for round := range 2 { // the second run rewrites in place
		if err := s.CopyView(ctx, layers, 3, 8, nil); err != nil {
			t.Fatal(err)
		}
		for b, want := range map[uint64][]byte{0: filled(1, testBlock), 1: filled(2, testBlock), 2: filled(6, testBlock),
			3: make([]byte, testBlock), 4: make([]byte, testBlock)} {
			wantRead(t, s, 3, b, 7, want)
		}
		if n := storedChunks(t, s); n != chunks {
			t.Fatalf("round %d: %d chunks, want %d (a copy stores no data)", round, n, chunks)
		}
		rep, err := s.Verify(ctx, 0, nil)
		if err != nil || len(rep.Faults) != 0 {
			t.Fatalf("round %d: verify: %v %v", round, rep.Faults, err)
		}
	}
	refs := storedRefs(t, s)
	if refs[hashBlock(filled(1, testBlock))] != 2 || refs[hashBlock(filled(6, testBlock))] != 2 || refs[hashBlock(filled(5, testBlock))] != 1 {
		t.Fatalf("references after the copy: %v", refs)
	}
	// The base is not a change of the chain.
	bm := bitmap.New(8)
	if err := s.Changed(ctx, 3, 0, 9, bm); err != nil || bm.Count() != 0 {
		t.Fatalf("base entries counted as changes: %v %v", bm.Members(), err)
	}
	// Disk 1 alone holds 2@1 (disk 2 overrides it in the view), 1@2 and
	// 3@2 (past the view); the copy shares the rest.
	if _, logical, err := s.ChainUnique(ctx, 1); err != nil || logical != 3*testBlock {
		t.Fatalf("unique bytes of disk 1: %d, %v; want 3 blocks (%d)", logical, err, 3*testBlock)
	}
	if _, logical, err := s.ChainUnique(ctx, 3); err != nil || logical != 0 {
		t.Fatalf("unique bytes of the copy: %d, %v; want 0 (it shares every chunk)", logical, err)
	}
	// The source can go; the copy keeps its chunks.
	if err := s.DropDisk(ctx, 2); err != nil {
		t.Fatal(err)
	}
	wantRead(t, s, 3, 2, 7, filled(6, testBlock))
	if err := s.DropDisk(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if refs := storedRefs(t, s); refs[hashBlock(filled(6, testBlock))] != 0 || refs[hashBlock(filled(1, testBlock))] != 1 {
		t.Fatalf("references after dropping both: %v", refs)
	}
	rep, err := s.Verify(ctx, 0, nil)
	if err != nil || len(rep.Faults) != 0 {
		t.Fatalf("verify at the end: %v %v", rep.Faults, err)
	}
}
