package cow

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/cairn-storage/cairn/store"
)

// The figures people see (a snapshot's WRITTEN and UNIQUE, a chain's
// capacity, the store's stats) checked against a model of the chain after
// every step of random writes, trims, snapshots, deletes at any position,
// rollbacks (also to a snapshot taken before the disk grew), grows and
// restarts: each figure must say what the model says, and
// every delete must free exactly what UNIQUE said it would.
//
// The model states the chain's rules, not the code's: a snapshot holds the
// blocks written since the one before; deleting one passes its blocks to
// its successor (the newest passes them to the next snapshot, the only one
// gives everything back and makes the next snapshot full); a store entry
// is dropped when a newer one at or before the successor overrides it, and
// a chunk is freed when no entry names it.

// figureModel is one disk and its chain as the rules say they are.
type figureModel struct {
	nblocks int
	live    []int        // content id of each block of the live disk; 0 reads as zeros
	alloc   []bool       // the block is allocated in the live image (written, not trimmed)
	dirty   map[int]bool // written in the current epoch
	// carried: blocks a deleted newest snapshot left to the next one.
	carried map[int]bool
	snaps   []*modelSnap
	entries map[[2]uint64]int // (block, seq) -> content id; 0 is a zero entry
	nextSeq uint64
}

type modelSnap struct {
	name    string
	seq     uint64
	content []int
	written map[int]bool // the blocks whose version it holds itself
}

func newFigureModel(nblocks int) *figureModel {
	return &figureModel{nblocks: nblocks, live: make([]int, nblocks), alloc: make([]bool, nblocks),
		dirty: map[int]bool{}, carried: map[int]bool{}, entries: map[[2]uint64]int{}, nextSeq: 1}
}

func (m *figureModel) clone() *figureModel {
	c := *m
	c.live, c.alloc = slices.Clone(m.live), slices.Clone(m.alloc)
	c.dirty, c.carried, c.entries = maps.Clone(m.dirty), maps.Clone(m.carried), maps.Clone(m.entries)
	c.snaps = nil
	for _, s := range m.snaps {
		cs := *s
		cs.written = maps.Clone(s.written)
		c.snaps = append(c.snaps, &cs)
	}
	return &c
}

func (m *figureModel) write(b, content int, allocated bool) {
	m.live[b], m.alloc[b], m.dirty[b] = content, allocated, true
}

func (m *figureModel) snapshot(name string) {
	s := &modelSnap{name: name, seq: m.nextSeq, content: slices.Clone(m.live), written: map[int]bool{}}
	m.nextSeq++
	for b := range m.dirty {
		s.written[b] = true
		m.entries[[2]uint64{uint64(b), s.seq}] = m.live[b]
	}
	for b := range m.carried {
		s.written[b] = true
	}
	m.dirty, m.carried = map[int]bool{}, map[int]bool{}
	m.snaps = append(m.snaps, s)
}

// chunks counts the entries naming each content (its chunk's references).
func (m *figureModel) chunks() map[int]int {
	refs := map[int]int{}
	for _, c := range m.entries {
		if c != 0 {
			refs[c]++
		}
	}
	return refs
}

// delete deletes snapshot i and returns the uncompressed bytes freed.
func (m *figureModel) delete(i int, bs int) uint64 {
	before := m.chunks()
	s := m.snaps[i]
	switch {
	case len(m.snaps) == 1:
		m.entries = map[[2]uint64]int{}
		m.carried = map[int]bool{}
		for b, a := range m.alloc {
			if a {
				m.dirty[b] = true
			}
		}
	default:
		var prev uint64
		if i > 0 {
			prev = m.snaps[i-1].seq
		}
		upper := uint64(math.MaxUint64)
		if i+1 < len(m.snaps) {
			upper = m.snaps[i+1].seq
		}
		for k := range m.entries {
			if k[1] <= prev || k[1] > s.seq {
				continue
			}
			drop := upper == math.MaxUint64 && m.dirty[int(k[0])]
			for o := range m.entries {
				drop = drop || o[0] == k[0] && o[1] > k[1] && o[1] <= upper
			}
			if drop {
				delete(m.entries, k)
			}
		}
		into := m.carried
		if i+1 < len(m.snaps) {
			into = m.snaps[i+1].written
		}
		for b := range s.written {
			into[b] = true
		}
	}
	m.snaps = slices.Delete(m.snaps, i, i+1)
	after := m.chunks()
	var freed uint64
	for c := range before {
		if after[c] == 0 {
			freed += uint64(bs)
		}
	}
	return freed
}

// rollback makes the live disk read as snapshot i by writing back the
// blocks changed since it: written in later snapshots, left to the next
// snapshot by a deleted newest one, or in the current epoch. It returns
// them.
func (m *figureModel) rollback(i int) []int {
	changed := maps.Clone(m.dirty)
	maps.Copy(changed, m.carried)
	for _, s := range m.snaps[i+1:] {
		maps.Copy(changed, s.written)
	}
	// Blocks past the snapshot's size are zeroed (the disk keeps its size).
	for b := len(m.snaps[i].content); b < m.nblocks; b++ {
		changed[b] = true
	}
	blocks := slices.Sorted(maps.Keys(changed))
	for _, b := range blocks {
		c := 0
		if b < len(m.snaps[i].content) {
			c = m.snaps[i].content[b]
		}
		m.write(b, c, c != 0)
	}
	return blocks
}

func (m *figureModel) grow(n int) {
	m.nblocks += n
	m.live = append(m.live, make([]int, n)...)
	m.alloc = append(m.alloc, make([]bool, n)...)
}

// contentBytes is what content id c holds: zeros for 0, else a block
// that compresses for even ids and one that does not for odd ones.
func contentBytes(c, bs int) []byte {
	p := make([]byte, bs)
	switch {
	case c == 0:
	case c%2 == 0:
		copy(p, bytes.Repeat([]byte(fmt.Sprintf("content %d ", c)), bs/8))
	default:
		r := rand.New(rand.NewPCG(uint64(c), 99))
		for i := range p {
			p[i] = byte(r.Uint32())
		}
	}
	return p
}

// TestFiguresAgainstModel runs random sequences of writes, trims,
// snapshots, deletes (first, middle, last, only), rollbacks and restarts,
// and after every step checks each snapshot's WRITTEN and UNIQUE, the
// chain's capacity and the store's stats against the model, and that
// every delete frees exactly what UNIQUE said. CAIRN_FIGURES_SEEDS and
// CAIRN_FIGURES_STEPS make it longer (make test-long runs 40 x 400).
func TestFiguresAgainstModel(t *testing.T) {
	seeds, steps := 4, 100
	if s, err := strconv.Atoi(os.Getenv("CAIRN_FIGURES_SEEDS")); err == nil {
		seeds = s
	}
	if s, err := strconv.Atoi(os.Getenv("CAIRN_FIGURES_STEPS")); err == nil {
		steps = s
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runFigures(t, uint64(seed), steps) })
	}
}

func runFigures(t *testing.T, seed uint64, steps int) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 13))
	d := newTestDisk(t, 8*testBS)
	m := newFigureModel(8)
	nextContent, names := 1, 0
	for step := range steps {
		var what string
		switch op := rng.IntN(100); {
		case op < 40: // write a block: new content, shared content, or zeros
			b := rng.IntN(m.nblocks)
			c := rng.IntN(4) // a few contents recur, so chunks are shared
			if rng.IntN(3) == 0 {
				nextContent++
				c = 4 + nextContent
			}
			if err := d.v.WriteAt(ctx, contentBytes(c, testBS), int64(b)*testBS, false); err != nil {
				t.Fatal(err)
			}
			m.write(b, c, true)
			what = fmt.Sprintf("write block %d content %d", b, c)
		case op < 45:
			b := rng.IntN(m.nblocks)
			if err := d.v.Trim(ctx, int64(b)*testBS, testBS, false); err != nil {
				t.Fatal(err)
			}
			m.write(b, 0, false)
			what = fmt.Sprintf("trim block %d", b)
		case op < 62 && len(m.snaps) < 6:
			names++
			name := fmt.Sprint("s", names)
			d.snapshot(name)
			d.wait(name)
			m.snapshot(name)
			what = "snapshot " + name
		case op < 80 && len(m.snaps) > 0:
			i := rng.IntN(len(m.snaps))
			name := m.snaps[i].name
			u, err := d.v.Usage(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			statsBefore, err := d.st.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			freed, err := d.v.DeleteSnapshot(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			want := m.delete(i, testBS)
			what = fmt.Sprintf("delete %s (%d of %d)", name, i+1, len(m.snaps)+1)
			if freed != u.Unique || freed.Bytes != want {
				t.Fatalf("seed %d step %d, %s: freed %+v; UNIQUE said %+v, the model frees %d bytes", seed, step, what, freed, u.Unique, want)
			}
			statsAfter, err := d.st.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := statsBefore.StoredBytes - statsAfter.StoredBytes; got != freed.StoredBytes {
				t.Fatalf("seed %d step %d, %s: store stats' stored bytes fell by %d; the delete freed %d", seed, step, what, got, freed.StoredBytes)
			}
		case op < 90 && len(m.snaps) > 0:
			i := rng.IntN(len(m.snaps))
			if err := d.v.Rollback(ctx, m.snaps[i].name, nil); err != nil {
				t.Fatal(err)
			}
			blocks := m.rollback(i)
			what = fmt.Sprintf("rollback to %s (blocks %v)", m.snaps[i].name, blocks)
			changes, err := d.v.Changes(ctx, m.snaps[i].name, "")
			if err != nil {
				t.Fatal(err)
			}
			for b := len(m.snaps[i].content); b < m.nblocks; b++ {
				if !changes.Test(uint64(b)) {
					t.Fatalf("seed %d step %d, %s: the changes since it leave out block %d, past its size", seed, step, what, b)
				}
			}
		case op < 93 && m.nblocks < 20:
			n := 1 + rng.IntN(3)
			if err := d.v.Grow(int64(m.nblocks+n) * testBS); err != nil {
				t.Fatal(err)
			}
			m.grow(n)
			what = fmt.Sprintf("grow by %d blocks", n)
		default:
			d.reopen()
			what = "restart"
		}
		checkFigures(t, d, m, fmt.Sprintf("seed %d step %d, after %s", seed, step, what))
	}
}

// checkFigures compares every figure with the model.
func checkFigures(t *testing.T, d *testDisk, m *figureModel, where string) {
	t.Helper()
	ctx := context.Background()
	if got := d.readLive(); !bytes.Equal(got, modelDisk(m.live)) {
		t.Fatalf("%s: the live disk differs from the model", where)
	}
	infos := d.v.Snapshots()
	if len(infos) != len(m.snaps) {
		t.Fatalf("%s: %d snapshots, the model has %d", where, len(infos), len(m.snaps))
	}
	for i, s := range m.snaps {
		if infos[i].Name != s.name {
			t.Fatalf("%s: snapshot %d is %s, the model's is %s", where, i, infos[i].Name, s.name)
		}
		u, err := d.v.Usage(ctx, s.name)
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(len(s.written)) * testBS; u.WrittenBytes != want {
			t.Fatalf("%s: %s WRITTEN %d bytes; the model says %d (blocks %v)", where, s.name, u.WrittenBytes, want, slices.Sorted(maps.Keys(s.written)))
		}
		if want := m.clone().delete(i, testBS); u.Unique.Bytes != want {
			t.Fatalf("%s: %s UNIQUE %d bytes; the model says deleting it frees %d", where, s.name, u.Unique.Bytes, want)
		}
		if got := d.readSnap(s.name); !bytes.Equal(got, modelDisk(s.content)) {
			t.Fatalf("%s: snapshot %s reads differently from the model", where, s.name)
		}
	}
	chain, err := d.st.ChainBytes(ctx, d.diskID)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := d.st.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refs := m.chunks()
	var data, zero, logical uint64
	for _, c := range m.entries {
		if c == 0 {
			zero++
		} else {
			data++
			logical += testBS
		}
	}
	want := store.ChainUsage{Entries: uint64(len(m.entries)), Uncompressed: uint64(len(refs)) * testBS, Stored: stats.StoredBytes}
	if chain != want {
		t.Fatalf("%s: chain capacity %+v; the model says %+v (stored: as the store's stats)", where, chain, want)
	}
	if stats.Chunks != uint64(len(refs)) || stats.UniqueBytes != want.Uncompressed || stats.LogicalBytes != logical ||
		stats.DataEntries != data || stats.ZeroEntries != zero {
		t.Fatalf("%s: store stats %+v; the model has %d chunks, %d logical bytes, %d data and %d zero entries",
			where, stats, len(refs), logical, data, zero)
	}
}

func modelDisk(content []int) []byte {
	var out []byte
	for _, c := range content {
		out = append(out, contentBytes(c, testBS)...)
	}
	return out
}
