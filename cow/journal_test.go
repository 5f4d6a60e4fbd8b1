package cow

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/store"
)

// holdCopyOut keeps every copy-out worker from starting its work until
// the returned release is called (or the volume closes).
func holdCopyOut(t testing.TB) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	h := func(ctx context.Context) {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
	testCopyOutHook.Store(&h)
	released := false
	release = func() {
		if !released {
			released = true
			testCopyOutHook.Store(nil)
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

// journalDisk is a 64-block disk filled with random data whose first
// snapshot "s1" is copying with its worker held; writes take the
// copy-before-write path.
func journalDisk(t *testing.T) (*testDisk, []byte, func()) {
	return copyingDisk(t, false, 1)
}

// copyingDisk is journalDisk with Options.Redirect as given and the random
// data from seed.
func copyingDisk(t *testing.T, redirect bool, seed uint64) (*testDisk, []byte, func()) {
	d := newTestDisk(t, 64*testBS)
	if redirect {
		d.redirect = true
		d.reopen()
	}
	r := rand.New(rand.NewPCG(seed, seed+1))
	img := make([]byte, 0, 64*testBS)
	for range 64 {
		img = append(img, randBlock(r)...)
	}
	if err := d.v.WriteAt(context.Background(), img, 0, false); err != nil {
		t.Fatal(err)
	}
	release := holdCopyOut(t)
	d.snapshot("s1")
	return d, img, release
}

func (d *testDisk) writeBlock(b uint64, p []byte) {
	d.t.Helper()
	if err := d.v.WriteAt(context.Background(), p, int64(b)*testBS, false); err != nil {
		d.t.Fatal(err)
	}
}

// journalUsed is how many bytes of journal records are written since the
// journal last started over.
func (d *testDisk) journalUsed() int64 { return d.v.jr.used() }

const wholeRec = journalPage + testBS // a record of a whole block

// TestJournalCopyOnWrite: writes over blocks pending for a copying
// snapshot put the old content in the journal, not the store; the snapshot
// reads it from there, survives a reopen (the journal is replayed), and
// once the worker stores the blocks the journal is emptied.
func TestJournalCopyOnWrite(t *testing.T) {
	d, img, release := journalDisk(t)
	live := bytes.Clone(img)
	r := rand.New(rand.NewPCG(3, 4))
	for _, b := range []uint64{3, 10, 20, 63} {
		p := randBlock(r)
		d.writeBlock(b, p)
		copy(live[b*testBS:], p)
	}
	if st := d.stats(); st.Chunks != 0 {
		t.Fatalf("copy-on-write stored %d chunks with the worker held; want 0 (the journal takes them)", st.Chunks)
	}
	if got, want := d.journalUsed(), int64(4*wholeRec); got != want {
		t.Fatalf("journal holds %d bytes, want %d (4 whole blocks)", got, want)
	}
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("s1 does not read as the disk at the snapshot (journal + live)")
	}
	if !bytes.Equal(d.readLive(), live) {
		t.Fatal("live disk lost a write")
	}
	in, _ := d.v.Snapshot("s1")
	if in.State != StateCopying {
		t.Fatalf("s1 is %s with its worker held", in.State)
	}

	// Reopen with the worker still held: the journal is replayed.
	d.reopen()
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("after reopen s1 does not read as the disk at the snapshot")
	}
	// A second overwrite of a journaled block must not journal again.
	p := randBlock(r)
	d.writeBlock(3, p)
	copy(live[3*testBS:], p)
	if got, want := d.journalUsed(), int64(4*wholeRec); got != want {
		t.Fatalf("journal holds %d bytes after rewriting a journaled block, want %d", got, want)
	}

	release()
	d.wait("s1")
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("ready s1 does not read as the disk at the snapshot")
	}
	if got := d.journalUsed(); got != 0 {
		t.Fatalf("journal holds %d bytes after the copy-out, want 0 (started over)", got)
	}
	if !bytes.Equal(d.readLive(), live) {
		t.Fatal("live disk lost a write")
	}
	d.verify()
}

// TestJournalReplayIgnoresStaleRecords: records with a bad checksum,
// another snapshot's nonce, or a block that is not pending are not
// believed.
func TestJournalReplayIgnoresStaleRecords(t *testing.T) {
	d, img, _ := journalDisk(t)
	r := rand.New(rand.NewPCG(5, 6))
	d.writeBlock(7, randBlock(r)) // one genuine record
	s1, _ := d.find("s1")
	seq, nonce := s1.seq(), s1.nonce()
	if err := d.v.Close(); err != nil {
		t.Fatal(err)
	}
	d.v = nil

	j, recs, err := openJournal(filepath.Join(d.dir, "track.cbw"), testBS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].block != 7 || recs[0].seq != seq || recs[0].nonce != nonce || recs[0].first != 0 || recs[0].n != testBS/journalPage {
		t.Fatalf("journal holds %+v, want one record of block 7 of seq %d", recs, seq)
	}
	garbage := randBlock(r)
	if _, err := j.append(seq, nonce+1, 8, 0, garbage); err != nil { // another snapshot that reused the sequence
		t.Fatal(err)
	}
	if _, err := j.append(seq+5, nonce, 9, 0, garbage); err != nil { // a snapshot that does not exist
		t.Fatal(err)
	}
	if _, err := j.append(seq, nonce, 10, 0, garbage[:journalPage]); err != nil { // not pending after the store check below
		t.Fatal(err)
	}
	off, err := j.append(seq, nonce, 11, 2, garbage[:2*journalPage]) // right snapshot, torn below
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.f.WriteAt([]byte{0xff ^ garbage[100]}, off+journalPage+100); err != nil {
		t.Fatal(err)
	}
	j.close()
	// Block 10's version is in the store already (as if copied out before
	// a crash): its record is stale.
	if err := d.st.PutEntries(context.Background(), d.diskID, seq, []store.Entry{{Block: 10, Data: img[10*testBS : 11*testBS]}}); err != nil {
		t.Fatal(err)
	}

	d.open()
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("a stale or torn journal record was believed")
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

// TestJournalFullFallsBackToStore: past JournalMax, copy-on-write stores
// the block directly and the snapshot is still right.
func TestJournalFullFallsBackToStore(t *testing.T) {
	d, img, release := journalDisk(t)
	d.v.Close()
	v, err := Open(filepath.Join(d.dir, "live.raw"), Options{BlockSize: testBS, Store: d.st, DiskID: d.diskID,
		TrackPrefix: filepath.Join(d.dir, "track"), JournalMax: journalPage + 2*wholeRec})
	if err != nil {
		t.Fatal(err)
	}
	d.v = v
	r := rand.New(rand.NewPCG(7, 8))
	for b := uint64(0); b < 5; b++ {
		d.writeBlock(b, randBlock(r))
	}
	if got, want := d.journalUsed(), int64(2*wholeRec); got != want {
		t.Fatalf("journal holds %d bytes, want %d (full at 2 records)", got, want)
	}
	if st := d.stats(); st.Chunks != 3 {
		t.Fatalf("%d chunks stored, want 3 (the writes past the full journal)", st.Chunks)
	}
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("s1 wrong with a full journal")
	}
	release()
	d.wait("s1")
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("ready s1 wrong")
	}
	d.verify()
}

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
	testWriteHook.Store(&h)
	defer testWriteHook.Store(nil)

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
	release := holdCopyOut(t)
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

// TestJournalPages: 4 KiB writes journal only the pages they overwrite;
// a block written in a later epoch while still pending for an earlier
// snapshot is pending for both, each composing its own version; deleting
// the earlier snapshot hands its journaled pages to the later one where
// that one has no version of its own. Checked against an oracle before and
// after a reopen and after the copy-out.
func TestJournalPages(t *testing.T) {
	d, img, release := journalDisk(t)
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
	const pg = journalPage
	write(5*testBS+3*pg, pg) // block 5, page 3
	if got := d.journalUsed(); got != 2*pg {
		t.Fatalf("a 4 KiB write journaled %d bytes, want %d (header + one page)", got, 2*pg)
	}
	write(5*testBS+2*pg, 3*pg) // pages 2-4: only 2 and 4 are new
	write(6*testBS-100, 200)   // unaligned, across blocks 5 and 6
	write(9*testBS+pg+7, 2*pg) // block 9, pages 1-3
	if got, want := d.journalUsed(), int64(2*pg+2*2*pg+2*pg+2*pg+4*pg); got != want {
		t.Fatalf("journal holds %d bytes, want %d", got, want)
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
	check("journaled")
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
	if got := d.journalUsed(); got != 0 {
		t.Fatalf("journal holds %d bytes after the copy-out, want 0", got)
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
	v.opts.CopyOutShare = 0.1
	v.jr = &journal{max: 100 * journalPage, tail: 80 * journalPage} // three quarters full
	t0 = time.Now()
	v.pace(ctx, time.Second)
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Fatalf("busy disk, journal three quarters full: rested %v, want no rest", d)
	}
}

// TestWriteWaitsForOthersJournalRecord: a write to pages another write
// has just journaled must not reach the live image before that record is
// durable, even though it journals nothing itself.
func TestWriteWaitsForOthersJournalRecord(t *testing.T) {
	d, _, _ := journalDisk(t)
	ctx := context.Background()
	gate := make(chan struct{})
	jr := d.v.jr
	jr.sync = newGroupSync(func() error { <-gate; return jr.fdatasync() })
	aDone, bDone := make(chan error, 1), make(chan error, 1)
	go func() { aDone <- d.v.WriteAt(ctx, fill(0xa, journalPage), 4*testBS, false) }()
	deadline := time.Now().Add(5 * time.Second)
	for jr.used() == 0 { // A has journaled and waits for the sync
		if time.Now().After(deadline) {
			t.Fatal("the first write journaled nothing")
		}
		time.Sleep(time.Millisecond)
	}
	go func() { bDone <- d.v.WriteAt(ctx, fill(0xb, journalPage), 4*testBS, false) }()
	select {
	case err := <-bDone:
		t.Fatalf("the second write returned (%v) before the first one's journal record was durable", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	if err := <-bDone; err != nil {
		t.Fatal(err)
	}
}

// TestJournalSyncCoversOnlyWrittenPrefix: records are written outside
// the journal's lock, so a later record can be written before an earlier
// one; a sync must then not count the later one durable (recovery stops
// at the first torn record, so it would be lost with the earlier one).
func TestJournalSyncCoversOnlyWrittenPrefix(t *testing.T) {
	dir := t.TempDir()
	j, _, err := openJournal(filepath.Join(dir, "j.cbw"), testBS, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if err := j.start(0); err != nil {
		t.Fatal(err)
	}
	page := fill(0x5a, journalPage)
	held, release := make(chan int64, 1), make(chan struct{})
	var once atomic.Bool
	h := func(off int64) {
		if once.CompareAndSwap(false, true) {
			held <- off
			<-release
		}
	}
	testAppendHook.Store(&h)
	defer testAppendHook.Store(nil)
	first := make(chan error, 1)
	go func() { _, err := j.append(1, 1, 0, 0, page); first <- err }()
	offA := <-held // the first record is reserved, not written
	offB, err := j.append(1, 1, 1, 0, page)
	if err != nil {
		t.Fatal(err)
	}
	if offB <= offA {
		t.Fatalf("second record at %d, not after the first at %d", offB, offA)
	}
	endB := j.posOf(offB + 2*journalPage)
	if err := j.wait(); err != nil {
		t.Fatal(err)
	}
	if j.durable(endB) {
		t.Fatal("a sync counted a record durable while an earlier one was still unwritten")
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := j.waitDurable(endB); err != nil {
		t.Fatal(err)
	}
	if !j.durable(endB) {
		t.Fatal("waitDurable returned before the record was durable")
	}
	// Recovery reads both.
	j.close()
	j2, recs, err := openJournal(filepath.Join(dir, "j.cbw"), testBS, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.close()
	if len(recs) != 2 || recs[0].block != 0 || recs[1].block != 1 {
		t.Fatalf("recovered %+v, want the records of blocks 0 and 1", recs)
	}
}

// TestOpStreamOracle runs the crash test's operation stream in process,
// with the copy-out workers racing it, and checks the live disk after
// every operation and every snapshot every few operations.
func TestOpStreamOracle(t *testing.T) {
	for _, redirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("redirect=%v", redirect), func(t *testing.T) { opStreamOracle(t, redirect) })
	}
}

func opStreamOracle(t *testing.T, redirect bool) {
	n := 3000
	if testing.Short() {
		n = 500
	}
	d := newTestDisk(t, crashDiskBlocks*testBS)
	d.redirect = redirect
	d.reopen()
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
			d.reopen() // unfinished copy-outs leave journal records to adopt
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
	d, img, release := journalDisk(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(11, 12))
	v2 := randBlock(r)
	d.writeBlock(5, v2) // journaled for s1; block 5 is dirty in s2's epoch
	d.snapshot("s2")
	s2, _ := d.find("s2")
	if err := d.v.copyBlocks(ctx, s2, []uint64{5}); err != nil { // s2 stores its version
		t.Fatal(err)
	}
	d.writeBlock(5, randBlock(r)) // journaled for s1 only
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
