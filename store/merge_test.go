package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestAlibabaExample is the worked example of seeds/001: snapshots 1, 2, 3
// of one disk over blocks A, B, C, D; snapshot 2 holds B1 and C1, snapshot
// 3 holds B2. Deleting snapshot 2 frees B1 and keeps C1, which snapshot 3
// still reads.
func TestAlibabaExample(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	blk := func(name string) []byte { // "B1" and "B2" must differ
		id := int(name[0]) * 10
		if len(name) > 1 {
			id += int(name[1]-'0') + 1
		}
		return textBlock(id, 64<<10)
	}
	const disk = 1
	put(t, s, disk, 1, Entry{0, blk("A")}, Entry{1, blk("B")}, Entry{2, blk("C")}, Entry{3, blk("D")})
	put(t, s, disk, 2, Entry{1, blk("B1")}, Entry{2, blk("C1")})
	put(t, s, disk, 3, Entry{1, blk("B2")})

	stored, logical, err := s.Unique(ctx, disk, 1, 2, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if logical != 64<<10 || stored != uint64(len(rawGet(t, s, chunkKey(hashBlock(blk("B1")))))) {
		t.Errorf("Unique(snapshot 2) = %d stored, %d logical; want B1's chunk alone", stored, logical)
	}
	freedStored, freed, err := s.Merge(ctx, disk, 1, 2, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if freedStored != stored {
		t.Errorf("Merge freed %d stored bytes, Unique said %d", freedStored, stored)
	}
	if freed != logical {
		t.Errorf("Merge freed %d bytes, Unique said %d", freed, logical)
	}
	if v := rawGet(t, s, chunkKey(hashBlock(blk("B1")))); v != nil {
		t.Error("B1's chunk is still stored after deleting snapshot 2")
	}
	if v := rawGet(t, s, chunkKey(hashBlock(blk("C1")))); v == nil {
		t.Error("C1's chunk was freed though snapshot 3 reads it")
	}
	for i, name := range []string{"A", "B2", "C1", "D"} {
		wantRead(t, s, disk, uint64(i), 3, blk(name))
	}
	for i, name := range []string{"A", "B", "C", "D"} {
		wantRead(t, s, disk, uint64(i), 1, blk(name))
	}
	wantClean(t, s)
}

// chain3 builds disk 1 with snapshots 1, 2, 3 over blocks 0..3:
//
//	seq 1: a0 a1 a2 a3
//	seq 2: b0 b1 .. ..
//	seq 3: .. c1 c2 00   (block 3 zeroed)
func chain3(t *testing.T, s *Store) map[uint64][][]byte {
	t.Helper()
	b := func(tag string) []byte { return textBlock(int(tag[0])*100+int(tag[1]), testBlock) }
	zero := filled(0, testBlock)
	put(t, s, 1, 1, Entry{0, b("a0")}, Entry{1, b("a1")}, Entry{2, b("a2")}, Entry{3, b("a3")})
	put(t, s, 1, 2, Entry{0, b("b0")}, Entry{1, b("b1")})
	put(t, s, 1, 3, Entry{1, b("c1")}, Entry{2, b("c2")}, Entry{3, zero})
	return map[uint64][][]byte{
		1: {b("a0"), b("a1"), b("a2"), b("a3")},
		2: {b("b0"), b("b1"), b("a2"), b("a3")},
		3: {b("b0"), b("c1"), b("c2"), zero},
	}
}

func TestMergeFirstMiddleLast(t *testing.T) {
	tests := []struct {
		name            string
		prev, seq, next uint64
		overridden      []uint64
		freedBlocks     uint64
		survivors       []uint64
	}{
		{name: "first", prev: 0, seq: 1, next: 2, freedBlocks: 2, survivors: []uint64{2, 3}},
		{name: "middle", prev: 1, seq: 2, next: 3, freedBlocks: 1, survivors: []uint64{1, 3}},
		{name: "last", prev: 2, seq: 3, next: 0, freedBlocks: 0, survivors: []uint64{1, 2}},
		{name: "last with dirty blocks", prev: 2, seq: 3, next: 0, overridden: []uint64{2, 3}, freedBlocks: 1, survivors: []uint64{1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, "")
			ctx := context.Background()
			want := chain3(t, s)
			var over func(uint64) bool
			if tc.overridden != nil {
				over = func(b uint64) bool {
					for _, o := range tc.overridden {
						if o == b {
							return true
						}
					}
					return false
				}
			}
			_, logical, err := s.Unique(ctx, 1, tc.prev, tc.seq, tc.next, over)
			if err != nil {
				t.Fatal(err)
			}
			_, freed, err := s.Merge(ctx, 1, tc.prev, tc.seq, tc.next, over)
			if err != nil {
				t.Fatal(err)
			}
			if freed != tc.freedBlocks*testBlock || logical != freed {
				t.Errorf("Merge freed %d, Unique said %d; want %d blocks", freed, logical, tc.freedBlocks)
			}
			for _, sq := range tc.survivors {
				for b, content := range want[sq] {
					wantRead(t, s, 1, uint64(b), sq, content)
				}
			}
			if tc.next == 0 {
				// Blocks the live epoch does not override still read
				// through to the deleted snapshot's entries.
				for b, content := range want[tc.seq] {
					if !containsBlock(tc.overridden, uint64(b)) {
						wantRead(t, s, 1, uint64(b), tc.seq, content)
					}
				}
			}
			wantClean(t, s)
			// Merging again is harmless: a retried delete after a crash.
			if _, again, err := s.Merge(ctx, 1, tc.prev, tc.seq, tc.next, over); err != nil || again != 0 {
				t.Errorf("second Merge freed %d, %v; want 0", again, err)
			}
		})
	}
}

func containsBlock(list []uint64, b uint64) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

func TestMergeSharedChunkKept(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	same := textBlock(5, testBlock)
	put(t, s, 1, 1, Entry{0, same})
	put(t, s, 1, 2, Entry{0, textBlock(6, testBlock)})
	put(t, s, 2, 1, Entry{9, same}) // another disk holds the same bytes
	_, freed, err := s.Merge(ctx, 1, 0, 1, 2, nil)
	if err != nil || freed != 0 {
		t.Errorf("Merge = %d, %v; want 0 freed (chunk shared with disk 2)", freed, err)
	}
	wantRead(t, s, 2, 9, 1, same)
	wantClean(t, s)
}

func TestMergeBadArguments(t *testing.T) {
	s := openTest(t, "")
	for _, a := range [][3]uint64{{2, 2, 3}, {0, 0, 0}, {1, 3, 2}, {1, 3, 3}} {
		if _, _, err := s.Merge(context.Background(), 1, a[0], a[1], a[2], nil); err == nil {
			t.Errorf("Merge(prev %d, seq %d, next %d) succeeded", a[0], a[1], a[2])
		}
	}
}

// chainModel is the property test's oracle: what every snapshot holds,
// and the chain entries the merge rule leaves, computed the simple way.
type chainModel struct {
	disks   map[uint64]*diskModel
	entries map[[3]uint64]int // (disk, block, seq) -> content id; 0 is a zero block
}

type diskModel struct {
	live    map[uint64]int // block -> content id of the live image
	dirty   map[uint64]bool
	snaps   []uint64 // live snapshots, oldest first
	content map[uint64]map[uint64]int
	lastSeq uint64
}

func contentOf(id int) []byte {
	if id == 0 {
		return filled(0, testBlock)
	}
	return textBlock(id, testBlock)
}

// refs are the references the model's entries hold, by chunk.
func (m *chainModel) refs() map[[32]byte]uint64 {
	refs := make(map[[32]byte]uint64)
	for _, id := range m.entries {
		if id != 0 {
			refs[hashBlock(contentOf(id))]++
		}
	}
	return refs
}

// merge applies the merge rule to the model and returns the bytes freed.
func (m *chainModel) merge(disk, prev, seq, next uint64, over func(uint64) bool) uint64 {
	upper := max(next, seq)
	before := m.refs()
	for k := range m.entries {
		if k[0] != disk || k[2] <= prev || k[2] > seq {
			continue
		}
		drop := over != nil && over(k[1])
		for s2 := k[2] + 1; s2 <= upper && !drop; s2++ {
			_, drop = m.entries[[3]uint64{disk, k[1], s2}]
		}
		if drop {
			delete(m.entries, k)
		}
	}
	after := m.refs()
	var freed uint64
	for h := range before {
		if after[h] == 0 {
			freed += testBlock
		}
	}
	return freed
}

// TestRefcountsAgainstModel runs random writes, snapshots, deletes (first,
// middle, last; with and without dirty blocks) and disk drops over three
// disks sharing content, and checks after every step that the stored
// references equal the model's, that every live snapshot reads what the
// model says, and that Unique predicted what Merge freed.
func TestRefcountsAgainstModel(t *testing.T) {
	s := openTest(t, "")
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(2024, 11))
	const disks, blocks, contents, steps = 3, 16, 40, 300
	m := &chainModel{disks: map[uint64]*diskModel{}, entries: map[[3]uint64]int{}}
	for d := uint64(1); d <= disks; d++ {
		m.disks[d] = &diskModel{live: map[uint64]int{}, dirty: map[uint64]bool{}, content: map[uint64]map[uint64]int{}}
	}
	for step := 0; step < steps; step++ {
		d := uint64(rng.IntN(disks) + 1)
		dm := m.disks[d]
		var what string
		switch op := rng.IntN(10); {
		case op < 4:
			what = "write"
			for range rng.IntN(6) + 1 {
				b := uint64(rng.IntN(blocks))
				dm.live[b] = rng.IntN(contents) // 0: a zero write
				dm.dirty[b] = true
			}
		case op < 7:
			what = "snapshot"
			dm.lastSeq++
			seq := dm.lastSeq
			var entries []Entry
			for b := range dm.dirty {
				entries = append(entries, Entry{b, contentOf(dm.live[b])})
				m.entries[[3]uint64{d, b, seq}] = dm.live[b]
			}
			put(t, s, d, seq, entries...)
			dm.snaps = append(dm.snaps, seq)
			dm.content[seq] = copyMap(dm.live)
			clear(dm.dirty)
		case op < 9 && len(dm.snaps) > 0:
			i := rng.IntN(len(dm.snaps))
			prev, seq, next := uint64(0), dm.snaps[i], uint64(0)
			if i > 0 {
				prev = dm.snaps[i-1]
			}
			if i+1 < len(dm.snaps) {
				next = dm.snaps[i+1]
			}
			what = fmt.Sprintf("delete %d (prev %d next %d)", seq, prev, next)
			var over func(uint64) bool
			if next == 0 {
				dirty := copyMap(dm.dirty)
				over = func(b uint64) bool { return dirty[b] }
			}
			uniqueStored, unique, err := s.Unique(ctx, d, prev, seq, next, over)
			if err != nil {
				t.Fatal(err)
			}
			freedStored, freed, err := s.Merge(ctx, d, prev, seq, next, over)
			if freedStored != uniqueStored {
				t.Fatalf("step %d: Merge freed %d stored bytes, Unique said %d", step, freedStored, uniqueStored)
			}
			if err != nil {
				t.Fatal(err)
			}
			if wantFreed := m.merge(d, prev, seq, next, over); freed != wantFreed || unique != freed {
				t.Fatalf("step %d %s: Merge freed %d, Unique said %d, model frees %d", step, what, freed, unique, wantFreed)
			}
			dm.snaps = append(dm.snaps[:i], dm.snaps[i+1:]...)
			delete(dm.content, seq)
		case op == 9 && rng.IntN(4) == 0:
			what = "drop disk"
			if err := s.DropDisk(ctx, d); err != nil {
				t.Fatal(err)
			}
			for k := range m.entries {
				if k[0] == d {
					delete(m.entries, k)
				}
			}
			// The disk starts again, empty; sequences are never reused.
			*dm = diskModel{live: map[uint64]int{}, dirty: map[uint64]bool{}, content: map[uint64]map[uint64]int{}, lastSeq: dm.lastSeq}
		default:
			continue
		}
		checkRefs(t, s, m, step, what)
		if step%25 == 0 {
			checkSnapshots(t, s, m, blocks)
		}
	}
	checkSnapshots(t, s, m, blocks)
	wantClean(t, s)
}

func checkRefs(t *testing.T, s *Store, m *chainModel, step int, what string) {
	t.Helper()
	got, want := storedRefs(t, s), m.refs()
	if len(got) != len(want) || storedChunks(t, s) != len(want) {
		t.Fatalf("step %d (%s): %d reference records, %d chunks; model has %d", step, what, len(got), storedChunks(t, s), len(want))
	}
	for h, n := range want {
		if got[h] != n {
			t.Fatalf("step %d (%s): chunk %x has %d references, model %d", step, what, h[:4], got[h], n)
		}
	}
}

func checkSnapshots(t *testing.T, s *Store, m *chainModel, blocks uint64) {
	t.Helper()
	for d, dm := range m.disks {
		for seq, content := range dm.content {
			for b := range blocks {
				id, written := content[b]
				want := contentOf(id)
				if !written {
					want = filled(0, testBlock)
				}
				wantRead(t, s, d, b, seq, want)
			}
		}
	}
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
