package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

func TestLookupSeekSemantics(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	// Neighbouring blocks and disks must never answer for block 5 of disk 2.
	put(t, s, 2, 1, Entry{4, textBlock(41, testBlock)}, Entry{6, textBlock(61, testBlock)})
	put(t, s, 1, 3, Entry{5, textBlock(99, testBlock)})
	put(t, s, 3, 1, Entry{5, textBlock(98, testBlock)})
	put(t, s, 2, 2, Entry{5, textBlock(2, testBlock)})
	put(t, s, 2, 5, Entry{5, filled(0, testBlock)})
	put(t, s, 2, 9, Entry{5, textBlock(9, testBlock)})

	tests := []struct {
		seq     uint64
		found   bool
		wantSeq uint64
		zero    bool
		content []byte
	}{
		{1, false, 0, false, filled(0, testBlock)},
		{2, true, 2, false, textBlock(2, testBlock)},
		{4, true, 2, false, textBlock(2, testBlock)},
		{5, true, 5, true, filled(0, testBlock)},
		{8, true, 5, true, filled(0, testBlock)},
		{9, true, 9, false, textBlock(9, testBlock)},
		{1 << 62, true, 9, false, textBlock(9, testBlock)},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("seq", tc.seq), func(t *testing.T) {
			ref, found, err := s.Lookup(ctx, 2, 5, tc.seq)
			if err != nil || found != tc.found || ref.Seq != tc.wantSeq || ref.Zero != tc.zero {
				t.Errorf("Lookup = %+v, %v, %v; want seq %d zero %v found %v", ref, found, err, tc.wantSeq, tc.zero, tc.found)
			}
			if found && !ref.Zero && ref.Hash != hashBlock(tc.content) {
				t.Errorf("Lookup hash %x, want %x", ref.Hash, hashBlock(tc.content))
			}
			buf := filled(0xee, testBlock)
			gotFound, err := s.ReadBlock(ctx, 2, 5, tc.seq, buf)
			if err != nil || gotFound != tc.found || string(buf) != string(tc.content) {
				t.Errorf("ReadBlock = found %v, %v, content %q; want found %v, %q", gotFound, err, head(buf), tc.found, head(tc.content))
			}
		})
	}
	if _, found, _ := s.Lookup(ctx, 2, 7, 100); found {
		t.Error("Lookup of a never-written block found an entry")
	}
	if _, found, _ := s.Lookup(ctx, 0, 5, 100); found {
		t.Error("Lookup on disk 0 found another disk's entry")
	}
}

func TestDedupAcrossDisks(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	img := textBlock(7, 64<<10)
	put(t, s, 1, 1, Entry{0, img}, Entry{1, img})
	put(t, s, 2, 1, Entry{10, img})
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Chunks != 1 || st.DataEntries != 3 || st.LogicalBytes != 3*64<<10 || st.UniqueBytes != 64<<10 || st.StoredBytes >= 64<<10 {
		t.Errorf("Stats = %+v; want 1 chunk, 3 data entries, 3 blocks logical, 1 unique, compressed", st)
	}
	if refs := storedRefs(t, s); refs[hashBlock(img)] != 3 {
		t.Errorf("refcount %d, want 3", refs[hashBlock(img)])
	}
	u1, err := s.ChainBytes(ctx, 1)
	if err != nil || u1.Entries != 2 || u1.Stored != st.StoredBytes || u1.Uncompressed != st.UniqueBytes {
		t.Errorf("ChainBytes(1) = %+v, %v; want %d stored, %d uncompressed, 2 entries (a chunk counted once per disk)", u1, err, st.StoredBytes, st.UniqueBytes)
	}
	if err := s.DropDisk(ctx, 1); err != nil {
		t.Fatal(err)
	}
	wantRead(t, s, 2, 10, 1, img)
	if refs := storedRefs(t, s); refs[hashBlock(img)] != 1 {
		t.Errorf("refcount after dropping disk 1: %d, want 1", refs[hashBlock(img)])
	}
	wantClean(t, s)
	if err := s.DropDisk(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if n := storedChunks(t, s); n != 0 {
		t.Errorf("%d chunks left after dropping every disk", n)
	}
	if st, _ := s.Stats(ctx); st.ReclaimBytes == 0 {
		t.Error("ReclaimBytes is 0 after deleting a chunk")
	}
	wantClean(t, s)
}

func TestZeroEntries(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	put(t, s, 1, 1, Entry{0, textBlock(1, testBlock)}, Entry{1, textBlock(2, testBlock)}, Entry{2, filled(0, testBlock)})
	put(t, s, 1, 2, Entry{1, filled(0, testBlock)})
	ref, found, err := s.Lookup(ctx, 1, 2, 1)
	if err != nil || !found || !ref.Zero {
		t.Errorf("Lookup of a zero block = %+v, %v, %v; want a zero entry", ref, found, err)
	}
	wantRead(t, s, 1, 2, 1, filled(0, testBlock))
	wantRead(t, s, 1, 1, 2, filled(0, testBlock))
	st, _ := s.Stats(ctx)
	if st.ZeroEntries != 2 || st.DataEntries != 2 || st.Chunks != 2 {
		t.Errorf("Stats = %+v; want 2 zero entries, 2 data entries, 2 chunks", st)
	}
	for _, tc := range []struct {
		seq  uint64
		want []uint64
	}{{1, []uint64{0, 1}}, {2, []uint64{0}}, {0, nil}} {
		bm := bitmap.New(64)
		err := s.Allocated(ctx, 1, tc.seq, bm)
		if err != nil || !slices.Equal(bm.Members(), tc.want) {
			t.Errorf("Allocated(seq %d) = %v, %v; want %v", tc.seq, bm.Members(), err, tc.want)
		}
	}
}

func TestCompressionOnlyWhenItHelps(t *testing.T) {
	s := openTest(t, "")
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name  string
		data  []byte
		codec byte
	}{
		{"random", randomBlock(rng, 64<<10), codecRaw},
		{"text", textBlock(3, 64<<10), codecS2},
		// Half random, half zeros: saves about half, well over an eighth.
		{"half", append(randomBlock(rng, 32<<10), filled(0, 32<<10)...), codecS2},
		// An eighth of zeros does not save an eighth once framing is paid.
		{"mostly random", append(randomBlock(rng, 60<<10), filled(0, 4<<10)...), codecRaw},
		// Random pages, but one page repeated: the sample before S2 must
		// see through it.
		{"one random page repeated", bytes.Repeat(randomBlock(rng, 4<<10), 16), codecS2},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			put(t, s, 1, 1, Entry{uint64(i), tc.data})
			v := rawGet(t, s, chunkKey(hashBlock(tc.data)))
			if v[0] != tc.codec {
				t.Errorf("codec %d (stored %d of %d bytes), want %d", v[0], len(v), len(tc.data), tc.codec)
			}
			if tc.codec == codecRaw && len(v) != len(tc.data)+1 {
				t.Errorf("raw chunk stored in %d bytes, want %d", len(v), len(tc.data)+1)
			}
			wantRead(t, s, 1, uint64(i), 1, tc.data)
		})
	}
}

func TestPutEntriesRepeatedMovesReference(t *testing.T) {
	s := openTest(t, "")
	a, b := textBlock(1, testBlock), textBlock(2, testBlock)
	put(t, s, 1, 1, Entry{0, a})
	put(t, s, 1, 1, Entry{0, a}) // copy-out repeated after a crash
	if refs := storedRefs(t, s); refs[hashBlock(a)] != 1 {
		t.Errorf("refcount after repeating an entry: %d, want 1", refs[hashBlock(a)])
	}
	put(t, s, 1, 1, Entry{0, b})
	refs := storedRefs(t, s)
	if _, ok := refs[hashBlock(a)]; ok || refs[hashBlock(b)] != 1 || storedChunks(t, s) != 1 {
		t.Errorf("after replacing a by b: refs %v, chunks %d; want only b, once", refs, storedChunks(t, s))
	}
	// The same block twice in one call: the last one is what the disk held.
	put(t, s, 1, 2, Entry{0, a}, Entry{0, b})
	wantRead(t, s, 1, 0, 2, b)
	wantClean(t, s)
}

// TestPutEntriesLargeBatch writes more entries than one transaction takes:
// with default settings (groups of putGroupEntries) and with a memtable so
// small that Badger refuses a whole group (ErrTxnTooBig splits it).
func TestPutEntriesLargeBatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		tune func(*badger.Options)
	}{{"default", nil}, {"tiny transactions", tinyBadger}} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(Options{Dir: t.TempDir(), ReserveBytes: 1 << 20, tune: tc.tune})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			entries := make([]Entry, 3*putGroupEntries+17)
			for i := range entries {
				entries[i] = Entry{uint64(i), textBlock(i%500, testBlock)}
			}
			put(t, s, 1, 1, entries...)
			if n := storedChunks(t, s); n != 500 {
				t.Errorf("%d chunks, want 500", n)
			}
			for _, i := range []int{0, putGroupEntries, len(entries) - 1} {
				wantRead(t, s, 1, uint64(i), 1, entries[i].Data)
			}
			if _, freed, err := s.Merge(context.Background(), 1, 0, 1, 0, func(uint64) bool { return true }); err != nil || freed != 500*testBlock {
				t.Errorf("Merge of the whole batch freed %d, %v; want 500 blocks", freed, err)
			}
			wantClean(t, s)
		})
	}
}

func TestChanged(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	put(t, s, 1, 1, Entry{0, textBlock(0, testBlock)}, Entry{1, textBlock(1, testBlock)}, Entry{2, textBlock(2, testBlock)})
	put(t, s, 1, 2, Entry{1, textBlock(11, testBlock)})
	put(t, s, 1, 4, Entry{2, filled(0, testBlock)}, Entry{7, textBlock(7, testBlock)})
	put(t, s, 2, 3, Entry{5, textBlock(5, testBlock)})
	for _, tc := range []struct {
		after, upto uint64
		want        []uint64
	}{
		{0, 1, []uint64{0, 1, 2}},
		{1, 2, []uint64{1}},
		{1, 4, []uint64{1, 2, 7}},
		{2, 3, nil},
		{0, 100, []uint64{0, 1, 2, 7}},
		{4, 4, nil},
	} {
		bm := bitmap.New(64)
		err := s.Changed(ctx, 1, tc.after, tc.upto, bm)
		if err != nil || !slices.Equal(bm.Members(), tc.want) {
			t.Errorf("Changed(%d, %d) = %v, %v; want %v", tc.after, tc.upto, bm.Members(), err, tc.want)
		}
	}
}

func TestReadBlockCorruptChunk(t *testing.T) {
	s := openTest(t, "")
	data := randomBlock(rand.New(rand.NewPCG(3, 4)), testBlock)
	put(t, s, 1, 1, Entry{0, data})
	h := hashBlock(data)
	v := rawGet(t, s, chunkKey(h))
	v[100] ^= 1
	rawSet(t, s, chunkKey(h), v)
	buf := make([]byte, testBlock)
	_, err := s.ReadBlock(context.Background(), 1, 0, 1, buf)
	if !errors.Is(err, block.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("%x", h)) {
		t.Errorf("ReadBlock of a corrupt chunk: %v; want block.ErrCorrupt naming %x", err, h)
	}
	if err := s.ReadChunk(context.Background(), h, buf); !errors.Is(err, block.ErrCorrupt) {
		t.Errorf("ReadChunk of a corrupt chunk: %v; want block.ErrCorrupt", err)
	}
}

// TestConcurrentDedup writes the same new chunks from several disks at
// once: each chunk must be stored once with exactly one reference per
// entry, whoever wins each race.
func TestConcurrentDedup(t *testing.T) {
	s := openTest(t, "")
	const disks, rounds, blocks = 4, 8, 64
	concurrently(t, disks, func(i int) error {
		d := uint64(i + 1)
		for r := uint64(1); r <= rounds; r++ {
			entries := make([]Entry, blocks)
			for b := range entries {
				entries[b] = Entry{uint64(b), textBlock(int(r)*1000+b, testBlock)}
			}
			if err := s.PutEntries(context.Background(), d, r, entries); err != nil {
				return err
			}
			if r > 1 { // delete the previous snapshot: it is overridden
				if _, _, err := s.Merge(context.Background(), d, 0, r-1, r, nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
	refs := storedRefs(t, s)
	if len(refs) != blocks {
		t.Errorf("%d chunks referenced, want %d (the last round's)", len(refs), blocks)
	}
	for h, n := range refs {
		if n != disks {
			t.Errorf("chunk %x: %d references, want %d", h[:4], n, disks)
		}
	}
	if n := storedChunks(t, s); n != blocks {
		t.Errorf("%d chunks stored, want %d", n, blocks)
	}
	wantClean(t, s)
}
