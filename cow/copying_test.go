package cow

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/store"
)

// holdCopyOut keeps every copy-out worker of volumes opened with hooks
// from starting its work until the returned release is called (or the
// volume closes).
func holdCopyOut(t testing.TB, hooks *testHooks) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	h := func(ctx context.Context) {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
	hooks.beforeCopyOut.Store(&h)
	released := false
	release = func() {
		if !released {
			released = true
			hooks.beforeCopyOut.Store(nil)
			close(ch)
		}
	}
	t.Cleanup(release)
	return release
}

func randBlock(r *rand.Rand) []byte {
	b := make([]byte, testBS)
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// copyingDisk is a 64-block disk filled with random data (from seed)
// whose first snapshot "s1" is copying with its worker held: writes to
// its blocks are redirected.
func copyingDisk(t *testing.T, seed uint64) (*testDisk, []byte, func()) {
	d := newTestDisk(t, 64*testBS)
	r := rand.New(rand.NewPCG(seed, seed+1))
	img := make([]byte, 0, 64*testBS)
	for range 64 {
		img = append(img, randBlock(r)...)
	}
	if err := d.v.WriteAt(context.Background(), img, 0, false); err != nil {
		t.Fatal(err)
	}
	release := holdCopyOut(t, &d.hooks)
	d.snapshot("s1")
	return d, img, release
}

func (d *testDisk) writeBlock(b uint64, p []byte) {
	d.t.Helper()
	if err := d.v.WriteAt(context.Background(), p, int64(b)*testBS, false); err != nil {
		d.t.Fatal(err)
	}
}

func (d *testDisk) stats() store.Stats {
	d.t.Helper()
	st, err := d.st.Stats(context.Background())
	if err != nil {
		d.t.Fatal(err)
	}
	return st
}

func (d *testDisk) find(name string) (*snap, bool) { return d.v.find(name) }

// TestSealDoesNotWaitForWritesInFlight: a write stuck in flight does not
// hold the seal nor other writes; the snapshot includes it (it began in
// the sealed epoch) and CreateSnapshot returns only after it finished.
func TestSealDoesNotWaitForWritesInFlight(t *testing.T) {
	d := newTestDisk(t, 16*testBS)
	ctx := context.Background()
	d.writeBlock(1, fill(1, testBS))
	d.writeBlock(2, fill(2, testBS))
	d.snapshot("base")
	d.wait("base")

	stuck, unstick := make(chan struct{}), make(chan struct{})
	h := func(off int64) {
		if off == 1*testBS {
			close(stuck)
			<-unstick
		}
	}
	d.hooks.inFlight.Store(&h)
	defer d.hooks.inFlight.Store(nil)

	wdone := make(chan error, 1)
	go func() { wdone <- d.v.WriteAt(ctx, fill(0xaa, testBS), 1*testBS, false) }()
	<-stuck
	type result struct {
		in  SnapshotInfo
		err error
	}
	sdone := make(chan result, 1)
	go func() {
		in, err := d.v.CreateSnapshot(ctx, SnapshotMeta{Name: "s", Kind: "manual"})
		sdone <- result{in, err}
	}()
	// The epoch is sealed without waiting: a write to another block of the
	// new epoch completes while the old write is still stuck.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, ok := d.find("s"); ok && s != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the seal waited for a write in flight")
		}
		time.Sleep(time.Millisecond)
	}
	if err := d.v.WriteAt(ctx, fill(0xbb, testBS), 5*testBS, false); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-sdone:
		t.Fatalf("CreateSnapshot returned (%+v, %v) before the old epoch's write finished", r.in, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	close(unstick)
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
	r := <-sdone
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.in.Hold > time.Second || r.in.Drain < 50*time.Millisecond {
		t.Fatalf("hold %v, drain %v: want a short hold and a drain covering the stuck write", r.in.Hold, r.in.Drain)
	}
	d.wait("s")
	got := d.readSnap("s")
	if !bytes.Equal(got[1*testBS:2*testBS], fill(0xaa, testBS)) {
		t.Fatal("the write in flight at the seal is missing from the snapshot")
	}
	if !bytes.Equal(got[5*testBS:6*testBS], make([]byte, testBS)) {
		t.Fatal("a write of the new epoch leaked into the snapshot")
	}
	if !bytes.Equal(got[2*testBS:3*testBS], fill(2, testBS)) {
		t.Fatal("an unchanged block reads wrong")
	}
}

// TestDeleteCopyingPassesPendingDurably: deleting a copying snapshot hands
// its pending blocks to its successor; that must be in the successor's
// record, or after a restart the successor reads old versions of them.
func TestDeleteCopyingPassesPendingDurably(t *testing.T) {
	d := newTestDisk(t, 16*testBS)
	ctx := context.Background()
	d.writeBlock(0, fill(1, testBS))
	d.snapshot("base")
	d.wait("base")
	release := holdCopyOut(t, &d.hooks)
	d.writeBlock(0, fill(2, testBS)) // pending for s1
	d.writeBlock(1, fill(3, testBS)) // pending for s1
	d.snapshot("s1")
	d.writeBlock(2, fill(4, testBS)) // pending for s2
	d.snapshot("s2")
	want := d.readSnap("s2")
	if _, err := d.v.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.readSnap("s2"), want) {
		t.Fatal("s2 changed when s1 was deleted")
	}
	d.reopen()
	if !bytes.Equal(d.readSnap("s2"), want) {
		t.Fatal("after a restart s2 lost the blocks s1 passed on")
	}
	release()
	d.wait("s2")
	if !bytes.Equal(d.readSnap("s2"), want) {
		t.Fatal("ready s2 wrong")
	}
	d.verify()
}

// TestPagesOfTwoSnapshots: 4 KiB writes redirect only the pages they
// write; a block written in a later epoch while still pending for an
// earlier snapshot is pending for both, each reading its own version;
// deleting the earlier snapshot hands its blocks to the later one where
// that one has no version of its own. Checked against an oracle before and
// after a reopen and after the copy-out.
func TestPagesOfTwoSnapshots(t *testing.T) {
	d, img, release := copyingDisk(t, 1)
	r := rand.New(rand.NewPCG(9, 10))
	live := bytes.Clone(img)
	write := func(off int64, n int) {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if err := d.v.WriteAt(context.Background(), p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(live[off:], p)
	}
	const pg = pageSize
	write(5*testBS+3*pg, pg) // block 5, page 3
	if got := d.v.rd.count.Load(); got != 1 {
		t.Fatalf("a 4 KiB write redirected %d pages, want 1", got)
	}
	write(5*testBS+2*pg, 3*pg) // pages 2-4: only 2 and 4 are new
	write(6*testBS-100, 200)   // unaligned, across blocks 5 and 6
	write(9*testBS+pg+7, 2*pg) // block 9, pages 1-3
	if got, want := d.v.rd.count.Load(), int64(1+2+2+3); got != want {
		t.Fatalf("%d pages redirected, want %d", got, want)
	}
	s1 := img // the disk at s1's seal
	d.snapshot("s2")
	s2 := bytes.Clone(live)
	write(5*testBS+3*pg, pg) // pending for s1 (saved) and s2 (not)
	write(5*testBS+8*pg, pg) // pending for both, saved for neither
	write(9*testBS, pg)      // pending for both
	write(20*testBS, pg)     // pending for s1 only (not written in s2's epoch)
	check := func(when string) {
		t.Helper()
		if !bytes.Equal(d.readSnap("s1"), s1) {
			t.Fatalf("%s: s1 wrong", when)
		}
		if !bytes.Equal(d.readSnap("s2"), s2) {
			t.Fatalf("%s: s2 wrong", when)
		}
		if !bytes.Equal(d.readLive(), live) {
			t.Fatalf("%s: live disk wrong", when)
		}
	}
	check("redirected")
	d.reopen()
	check("after reopen")
	// s2 stores its version of block 9 while s1 still has it pending:
	// reads of s2 must take the stored one.
	s2snap, _ := d.find("s2")
	if err := d.v.copyBlocks(context.Background(), s2snap, []uint64{9}); err != nil {
		t.Fatal(err)
	}
	check("s2 stored block 9")

	// Delete s1 while it copies: block 20's pages move to s2 (whose version
	// of block 20 is s1's).
	if _, err := d.v.DeleteSnapshot(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.readSnap("s2"), s2) {
		t.Fatal("s2 wrong after deleting s1")
	}
	d.reopen()
	if !bytes.Equal(d.readSnap("s2"), s2) {
		t.Fatal("s2 wrong after deleting s1 and a reopen")
	}
	release()
	d.wait("s2")
	if !bytes.Equal(d.readSnap("s2"), s2) {
		t.Fatal("ready s2 wrong")
	}
	if !bytes.Equal(d.readLive(), live) {
		t.Fatal("live disk wrong")
	}
	d.verify()
}

// TestPace: a copy-out batch is followed by a rest in proportion to the
// worker's share while the guest is busy, and by none while it is idle.
func TestPace(t *testing.T) {
	v := &Volume{opts: Options{CopyOutShare: 0.5}}
	ctx := context.Background()
	v.lastIO.Store(time.Now().UnixNano())
	t0 := time.Now()
	v.pace(ctx, 30*time.Millisecond)
	if d := time.Since(t0); d < 29*time.Millisecond {
		t.Fatalf("busy disk: rested %v after a 30ms batch at share 0.5, want 30ms", d)
	}
	v.lastIO.Store(time.Now().Add(-time.Second).UnixNano())
	t0 = time.Now()
	v.pace(ctx, time.Second)
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("idle disk: rested %v, want no rest", d)
	}
	v.opts.CopyOutShare = 1
	v.lastIO.Store(time.Now().UnixNano())
	t0 = time.Now()
	v.pace(ctx, time.Second)
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("share 1: rested %v, want no rest", d)
	}
}

// TestOpStreamOracle runs the crash test's operation stream in process,
// with the copy-out workers racing it, and checks the live disk after
// every operation and every snapshot every few operations.
func TestOpStreamOracle(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	d := newTestDisk(t, crashDiskBlocks*testBS)
	ctx := context.Background()
	model := &crashModel{live: make([]byte, crashDiskBlocks*testBS), snaps: map[string][]byte{}}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CAIRN_ORACLE_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (CAIRN_ORACLE_SEED repeats a run)", seed)
	g := &crashGen{rng: rand.New(rand.NewPCG(seed, 78))}
	for i := 0; i < n; i++ {
		op := g.op()
		if err := applyToVolume(ctx, d.v, op); err != nil {
			t.Fatalf("op %d %+v: %v", i, op, err)
		}
		model.apply(op)
		if i%53 == 52 {
			d.reopen() // unfinished copy-outs leave redirected writes to recover
		}
		if !bytes.Equal(d.readLive(), model.live) {
			t.Fatalf("op %d %+v: live disk differs from the oracle", i, op)
		}
		if i%7 == 0 || op.kind == "snap" || op.kind == "delete" || op.kind == "rollback" {
			for name, want := range model.snaps {
				if got := d.readSnap(name); !bytes.Equal(got, want) {
					for b := 0; b < crashDiskBlocks; b++ {
						lo, hi := b*testBS, (b+1)*testBS
						if !bytes.Equal(got[lo:hi], want[lo:hi]) {
							t.Logf("block %d differs", b)
						}
					}
					in, _ := d.v.Snapshot(name)
					t.Fatalf("op %d %+v: snapshot %s (%s, seq %d) differs from the oracle", i, op, name, in.State, in.Seq)
				}
			}
		}
	}
	// Store.Verify reads chunks and entries in separate passes: a copy-out
	// storing between them looks like a missing chunk. Verify at rest.
	for name := range model.snaps {
		d.wait(name)
	}
	d.verify()
}

// TestDeleteKeepsSuccessorsStoredVersion: a block pending for a deleted
// copying snapshot is not handed to its successor when the successor has
// already stored a version of its own (written between the two seals).
func TestDeleteKeepsSuccessorsStoredVersion(t *testing.T) {
	d, img, release := copyingDisk(t, 1)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(11, 12))
	v2 := randBlock(r)
	d.writeBlock(5, v2) // redirected for s1; block 5 is dirty in s2's epoch
	d.snapshot("s2")
	s2, _ := d.find("s2")
	if err := d.v.copyBlocks(ctx, s2, []uint64{5}); err != nil { // s2 stores its version
		t.Fatal(err)
	}
	d.writeBlock(5, randBlock(r)) // redirected in the live epoch
	want2 := bytes.Clone(img)
	copy(want2[5*testBS:], v2)
	if _, err := d.v.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.readSnap("s2"), want2) {
		t.Fatal("s2 wrong after deleting s1")
	}
	release()
	d.wait("s2")
	if !bytes.Equal(d.readSnap("s2"), want2) {
		t.Fatal("s2 took s1's version of block 5 when s1 was deleted")
	}
	d.verify()
}

// TestSealBetweenSplitAndWrite: a write that chose to go in place and is
// overtaken by a seal that makes its block pending before it marks it
// must be redirected instead, or it would overwrite the new snapshot's
// version in the live image.
func TestSealBetweenSplitAndWrite(t *testing.T) {
	d := newTestDisk(t, 16*testBS)
	ctx := context.Background()
	d.writeBlock(1, fill(1, testBS))
	release := holdCopyOut(t, &d.hooks)
	var once atomic.Bool
	h := func(off int64) {
		if off == 1*testBS && once.CompareAndSwap(false, true) {
			// The write is past its split and has marked nothing yet.
			if _, err := d.v.CreateSnapshot(ctx, SnapshotMeta{Name: "s", Kind: "manual"}); err != nil {
				t.Error(err)
			}
		}
	}
	d.hooks.beforeMark.Store(&h)
	d.writeBlock(1, fill(2, testBS))
	d.hooks.beforeMark.Store(nil)
	if !once.Load() {
		t.Fatal("the hook did not run: the write did not go in place")
	}
	if got := d.readSnap("s"); !bytes.Equal(got[testBS:2*testBS], fill(1, testBS)) {
		t.Fatal("a write issued after the seal returned reached the snapshot")
	}
	if got := d.readLive(); !bytes.Equal(got[testBS:2*testBS], fill(2, testBS)) {
		t.Fatal("the live disk lost the write")
	}
	release()
	d.wait("s")
	if got := d.readSnap("s"); !bytes.Equal(got[testBS:2*testBS], fill(1, testBS)) {
		t.Fatal("ready snapshot holds a write issued after the seal returned")
	}
	d.verify()
}

// TestOldJournal: the copy-before-write journal of an earlier cairnd is
// deleted when no snapshot copies, and the disk is refused (never
// misread) while one does.
func TestOldJournal(t *testing.T) {
	d := newTestDisk(t, 16*testBS)
	d.writeBlock(1, fill(1, testBS))
	journal := filepath.Join(d.dir, "track.cbw")
	if err := os.WriteFile(journal, []byte("CAIRNCBJ"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.reopen()
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("old journal with nothing copying: %v, want it removed", err)
	}
	release := holdCopyOut(t, &d.hooks)
	d.snapshot("s")
	d.v.Close()
	d.v = nil
	release()
	if err := os.WriteFile(journal, []byte("CAIRNCBJ"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := Open(filepath.Join(d.dir, "live.raw"), Options{BlockSize: testBS, Store: d.st, DiskID: d.diskID,
		TrackPrefix: filepath.Join(d.dir, "track")})
	if err == nil {
		v.Close()
		t.Fatal("a disk whose copying snapshot may need an old journal opened")
	}
	if !strings.Contains(err.Error(), "older cairnd") {
		t.Fatalf("refusal %q does not say why", err)
	}
	if _, err := os.Stat(journal); err != nil {
		t.Fatalf("the refused disk's journal is gone: %v", err)
	}
}
