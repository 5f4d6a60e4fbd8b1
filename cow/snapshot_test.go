package cow

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairn-storage/cairn/store"
)

const testBS = 64 << 10

type testDisk struct {
	t      *testing.T
	dir    string
	st     *store.Store
	v      *Volume
	diskID uint64
	size   int64
	// hooks hold or fail the volume at chosen points (kept across reopens).
	hooks testHooks
	// origin makes the volume a clone (Options.Origin).
	origin     []store.Layer
	copyOnRead bool
}

func newTestDisk(t *testing.T, size int64) *testDisk {
	t.Helper()
	d := &testDisk{t: t, dir: t.TempDir(), diskID: 7, size: size}
	f, err := os.Create(filepath.Join(d.dir, "live.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.st, err = store.Open(store.Options{Dir: filepath.Join(d.dir, "store"), ReserveBytes: 96 << 20})
	if err != nil {
		t.Fatal(err)
	}
	d.open()
	t.Cleanup(func() {
		if d.v != nil {
			d.v.Close()
		}
		d.st.Close()
	})
	return d
}

func (d *testDisk) open() {
	d.t.Helper()
	v, err := Open(filepath.Join(d.dir, "live.raw"), Options{BlockSize: testBS, Store: d.st, DiskID: d.diskID,
		TrackPrefix: filepath.Join(d.dir, "track"), hooks: &d.hooks, Origin: d.origin, CopyOnRead: d.copyOnRead})
	if err != nil {
		d.t.Fatal(err)
	}
	d.v = v
}

func (d *testDisk) reopen() {
	d.t.Helper()
	if err := d.v.Close(); err != nil {
		d.t.Fatal(err)
	}
	d.open()
}

func (d *testDisk) snapshot(name string) SnapshotInfo {
	d.t.Helper()
	in, err := d.v.CreateSnapshot(context.Background(), SnapshotMeta{Name: name, Kind: "manual"})
	if err != nil {
		d.t.Fatalf("snapshot %s: %v", name, err)
	}
	return in
}

func (d *testDisk) wait(name string) {
	d.t.Helper()
	if err := d.v.WaitReady(context.Background(), name); err != nil {
		d.t.Fatalf("wait %s: %v", name, err)
	}
}

func (d *testDisk) readSnap(name string) []byte {
	d.t.Helper()
	w, err := d.v.OpenView(name)
	if err != nil {
		d.t.Fatal(err)
	}
	defer w.Close()
	buf := make([]byte, w.Size())
	if err := w.ReadAt(context.Background(), buf, 0); err != nil {
		d.t.Fatalf("read snapshot %s: %v", name, err)
	}
	return buf
}

func (d *testDisk) readLive() []byte {
	d.t.Helper()
	buf := make([]byte, d.v.Size())
	if err := d.v.ReadAt(context.Background(), buf, 0); err != nil {
		d.t.Fatal(err)
	}
	return buf
}

func (d *testDisk) verify() {
	d.t.Helper()
	rep, err := d.st.Verify(context.Background(), 0, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	if len(rep.Faults) > 0 {
		d.t.Fatalf("store faults: %v", rep.Faults)
	}
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// TestAlibabaExample is the worked example of seeds/001: snapshots 1, 2
// and 3 over blocks A, B, C, D; deleting 2 frees B1 but keeps C1, and
// snapshot 3 still reads A, B2, C1, D.
func TestAlibabaExample(t *testing.T) {
	ctx := context.Background()
	d := newTestDisk(t, 4*testBS)
	w := func(block int, c byte) {
		if err := d.v.WriteAt(ctx, fill(c, testBS), int64(block)*testBS, false); err != nil {
			t.Fatal(err)
		}
	}
	w(0, 'A')
	w(1, 'B')
	w(2, 'C')
	w(3, 'D')
	d.snapshot("snap-1")
	w(1, 'b') // B1
	w(2, 'c') // C1
	d.snapshot("snap-2")
	w(1, '2') // B2
	d.snapshot("snap-3")
	for _, n := range []string{"snap-1", "snap-2", "snap-3"} {
		d.wait(n)
	}
	before, _ := d.st.Stats(ctx)
	freed, err := d.v.DeleteSnapshot(ctx, "snap-2")
	if err != nil {
		t.Fatal(err)
	}
	if freed.Bytes != testBS {
		t.Errorf("deleting snapshot 2 freed %d bytes, want %d (B1 only)", freed.Bytes, testBS)
	}
	after, _ := d.st.Stats(ctx)
	if before.Chunks-after.Chunks != 1 {
		t.Errorf("chunks %d -> %d, want one fewer (B1)", before.Chunks, after.Chunks)
	}
	want3 := append(append(append(fill('A', testBS), fill('2', testBS)...), fill('c', testBS)...), fill('D', testBS)...)
	if !bytes.Equal(d.readSnap("snap-3"), want3) {
		t.Error("snapshot 3 does not read A, B2, C1, D after deleting snapshot 2")
	}
	want1 := append(append(append(fill('A', testBS), fill('B', testBS)...), fill('C', testBS)...), fill('D', testBS)...)
	if !bytes.Equal(d.readSnap("snap-1"), want1) {
		t.Error("snapshot 1 changed after deleting snapshot 2")
	}
	d.verify()
}

// oracle is the expected content of a disk, kept by the test.
type oracle struct{ data []byte }

func (o *oracle) clone() []byte { return bytes.Clone(o.data) }

// TestOracle: random writes, trims and zero-writes with snapshots at
// random moments; every snapshot must read as the oracle did at that
// point, across deletes (first, middle, last), reopen and rollback; the
// store's references stay exact.
func TestOracle(t *testing.T) {
	ctx := context.Background()
	const size = 64 * testBS
	d := newTestDisk(t, size)
	o := &oracle{data: make([]byte, size)}
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string][]byte{}
	var names []string
	op := func() {
		off := rng.Int64N(size - 1)
		n := min(rng.Int64N(3*testBS)+1, size-off)
		switch rng.IntN(6) {
		case 0:
			if err := d.v.Trim(ctx, off, n, false); err != nil {
				t.Fatal(err)
			}
			clear(o.data[off : off+n])
		case 1:
			if err := d.v.Zero(ctx, off, n, 0); err != nil {
				t.Fatal(err)
			}
			clear(o.data[off : off+n])
		default:
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.IntN(4)) // compressible, with dedup across blocks
			}
			if err := d.v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			copy(o.data[off:], p)
		}
	}
	check := func(stage string) {
		t.Helper()
		for _, n := range names {
			if got := d.readSnap(n); !bytes.Equal(got, want[n]) {
				t.Fatalf("%s: snapshot %s differs from the oracle", stage, n)
			}
		}
	}
	for i := 0; i < 12; i++ {
		for j := rng.IntN(40); j > 0; j-- {
			op()
		}
		name := fmt.Sprintf("s%02d", i)
		d.snapshot(name)
		want[name] = o.clone()
		names = append(names, name)
	}
	check("while copying")
	for _, n := range names {
		d.wait(n)
	}
	check("ready")
	d.verify()

	del := func(i int) {
		n := names[i]
		if _, err := d.v.DeleteSnapshot(ctx, n); err != nil {
			t.Fatal(err)
		}
		names = append(names[:i:i], names[i+1:]...)
		delete(want, n)
	}
	del(0)              // first
	del(len(names) / 2) // middle
	del(len(names) - 1) // last
	check("after deletes")
	d.verify()

	for j := 0; j < 30; j++ {
		op()
	}
	d.reopen()
	check("after reopen")
	if !bytes.Equal(d.readLive(), o.data) {
		t.Fatal("live disk differs from the oracle after reopen")
	}
	// Snapshot after the deletes must hold what the live disk holds.
	d.snapshot("after")
	want["after"] = o.clone()
	names = append(names, "after")
	d.wait("after")
	check("new snapshot after deletes")

	target := names[2]
	if err := d.v.Rollback(ctx, target, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.readLive(), want[target]) {
		t.Fatal("live disk differs from the snapshot after rollback")
	}
	check("after rollback")
	for len(names) > 0 {
		del(rng.IntN(len(names)))
		check("deleting all")
	}
	d.verify()
	st, _ := d.st.Stats(ctx)
	if st.Chunks != 0 || st.DataEntries != 0 {
		t.Fatalf("after deleting every snapshot the store still holds %d chunks, %d entries", st.Chunks, st.DataEntries)
	}
}

// TestSnapshotUnderConcurrentWrites checks invariant 1 while writers run:
// each write stamps its block with an increasing version, and a snapshot
// must hold, per block, a version at least the last one acknowledged
// before the snapshot was requested and at most the last one issued before
// it returned.
func TestSnapshotUnderConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	const blocks = 32
	d := newTestDisk(t, blocks*testBS)
	var acked, issued [blocks]atomic.Uint64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			buf := make([]byte, 4096)
			for !stop.Load() {
				b := rng.IntN(blocks/4)*4 + w // each writer owns its blocks: versions increase per block
				ver := issued[b].Load() + 1
				issued[b].Store(ver)
				binary.LittleEndian.PutUint64(buf, ver)
				if err := d.v.WriteAt(ctx, buf, int64(b)*testBS, false); err != nil {
					t.Error(err)
					return
				}
				acked[b].Store(ver)
			}
		}(w)
	}
	type bound struct{ lo, hi [blocks]uint64 }
	bounds := map[string]*bound{}
	for i := 0; i < 20; i++ {
		bd := &bound{}
		for b := range blocks {
			bd.lo[b] = acked[b].Load()
		}
		name := fmt.Sprintf("c%02d", i)
		d.snapshot(name)
		for b := range blocks {
			bd.hi[b] = issued[b].Load()
		}
		bounds[name] = bd
	}
	stop.Store(true)
	wg.Wait()
	for name, bd := range bounds {
		d.wait(name)
		data := d.readSnap(name)
		for b := range blocks {
			ver := binary.LittleEndian.Uint64(data[b*testBS:])
			if ver < bd.lo[b] || ver > bd.hi[b] {
				t.Fatalf("snapshot %s block %d holds version %d, want %d..%d", name, b, ver, bd.lo[b], bd.hi[b])
			}
		}
	}
	d.verify()
}

// TestChanges: the changed blocks between snapshots and to the live disk.
func TestChanges(t *testing.T) {
	ctx := context.Background()
	d := newTestDisk(t, 16*testBS)
	wr := func(b int) {
		if err := d.v.WriteAt(ctx, fill(byte(b+1), 100), int64(b)*testBS+10, false); err != nil {
			t.Fatal(err)
		}
	}
	wr(1)
	d.snapshot("a")
	wr(3)
	wr(4)
	d.snapshot("b")
	wr(9)
	cases := []struct {
		from, to string
		want     []uint64
	}{
		{"a", "b", []uint64{3, 4}},
		{"a", "", []uint64{3, 4, 9}},
		{"b", "", []uint64{9}},
	}
	for _, c := range cases {
		bm, err := d.v.Changes(ctx, c.from, c.to)
		if err != nil {
			t.Fatal(err)
		}
		if got := bm.Members(); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("changes %s..%q = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	ctxs := d.v.DirtyBitmapContexts("b")
	mc, ok := ctxs["qemu:dirty-bitmap:a"]
	if !ok || len(ctxs) != 2 {
		t.Fatalf("contexts at b: %v", ctxs)
	}
	ext, err := mc.Extents(ctx, 0, 16*testBS)
	if err != nil {
		t.Fatal(err)
	}
	wantExt := fmt.Sprint([]string{"3:0", "2:1", "11:0"})
	var got []string
	for _, e := range ext {
		got = append(got, fmt.Sprintf("%d:%d", e.Length/testBS, e.Flags))
	}
	if fmt.Sprint(got) != wantExt {
		t.Errorf("dirty bitmap extents %v, want %v", got, wantExt)
	}
	// Its twin reports the same blocks as allocation: changed ones as
	// data (0), the rest as holes (StateHole, not StateZero).
	ext, err = ctxs["cairn:since:a"].Extents(ctx, 0, 16*testBS)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, e := range ext {
		got = append(got, fmt.Sprintf("%d:%d", e.Length/testBS, e.Flags))
	}
	if want := fmt.Sprint([]string{"3:1", "2:0", "11:1"}); fmt.Sprint(got) != want {
		t.Errorf("cairn:since extents %v, want %v", got, want)
	}
}

// TestTrackerSurvivesReopenWithoutSnapshot: blocks written before a crash
// (simulated by dropping the volume without Close) are in the next
// snapshot, found from the tracker file.
func TestTrackerSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	d := newTestDisk(t, 8*testBS)
	d.snapshot("base")
	d.wait("base")
	if err := d.v.WriteAt(ctx, fill(7, 10), 5*testBS, false); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: no Close, so nothing is flushed or saved on the way out.
	d.v.stopWorkers()
	d.v.f.Close()
	d.v.track.Load().close()
	d.open()
	if got := d.v.DirtyBlocks(); fmt.Sprint(got) != "[5]" {
		t.Fatalf("dirty after crash = %v, want [5]", got)
	}
}

// TestDeleteNewestFirstFreesEverything: deleting the newest snapshot keeps
// its entries for the next snapshot; once the chain is empty nothing may
// stay behind, and while it is not, entries shadowed by newer kept entries
// are released.
func TestDeleteNewestFirstFreesEverything(t *testing.T) {
	ctx := context.Background()
	d := newTestDisk(t, 8*testBS)
	for i, name := range []string{"a", "b", "c"} {
		if err := d.v.WriteAt(ctx, fill(byte('A'+i), testBS), 0, false); err != nil {
			t.Fatal(err)
		}
		if err := d.v.WriteAt(ctx, fill(byte('a'+i), testBS), int64(i+1)*testBS, false); err != nil {
			t.Fatal(err)
		}
		d.snapshot(name)
		d.wait(name)
	}
	for _, name := range []string{"c", "b"} {
		if _, err := d.v.DeleteSnapshot(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	// Only "a" is left: block 0 has a's, b's and c's versions stored; b's is
	// shadowed by c's kept entry and must be gone.
	st, _ := d.st.Stats(ctx)
	if st.DataEntries != 5 {
		t.Errorf("with a left: %d data entries, want 5 (a: blocks 0,1; kept from b: block 2; kept from c: blocks 0,3)", st.DataEntries)
	}
	d.snapshot("d")
	d.wait("d")
	if got := d.readSnap("d"); !bytes.Equal(got, d.readLive()) {
		t.Fatal("a snapshot after deleting the newest ones differs from the live disk")
	}
	for _, name := range []string{"d", "a"} {
		if _, err := d.v.DeleteSnapshot(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	st, _ = d.st.Stats(ctx)
	if st.Chunks != 0 || st.DataEntries != 0 || st.ZeroEntries != 0 {
		t.Fatalf("after deleting every snapshot: %+v", st)
	}
	d.verify()
}

// TestTryReadAt: cached reads succeed and read the live content.
func TestTryReadAt(t *testing.T) {
	d := newTestDisk(t, 4*testBS)
	if err := d.v.WriteAt(context.Background(), fill(9, 4096), testBS, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if !d.v.TryReadAt(got, testBS) || !bytes.Equal(got, fill(9, 4096)) {
		t.Fatal("TryReadAt of just-written (cached) data failed or read wrong bytes")
	}
	if d.v.TryReadAt(nil, 0) {
		t.Fatal("TryReadAt of nothing claimed success")
	}
}
