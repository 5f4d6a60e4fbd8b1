package cow

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/nbd"
)

// redirectDisk is a 64-block disk of random data whose first snapshot
// "s1" is copying with its worker held; writes take the redirect path.
func redirectDisk(t *testing.T) (*testDisk, []byte, func()) {
	return copyingDisk(t, true, 5)
}

// imageFile reads the live image file itself, under the volume.
func (d *testDisk) imageFile() []byte {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, "live.raw"))
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// TestRedirectOnWrite: writes to blocks a copying snapshot still needs go
// to the journal, not over the live image: whole blocks, a partial page
// (read-modify-write of the page), a zeroed range and a trim. The live
// disk reads the new content, the snapshot the old, through a reopen
// (the index is rebuilt from the journal) and a second snapshot sealed
// over redirected pages; once nothing copies the writes are merged into
// the image file and the journal starts over.
func TestRedirectOnWrite(t *testing.T) {
	d, img, release := redirectDisk(t)
	ctx := context.Background()
	live := bytes.Clone(img)
	r := rand.New(rand.NewPCG(7, 8))
	write := func(off int64, p []byte) {
		t.Helper()
		if err := d.v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(live[off:], p)
	}
	write(3*testBS, randBlock(r))
	write(10*testBS+100, randBlock(r)[:300])   // inside one page
	write(20*testBS+4000, randBlock(r)[:5000]) // across pages, partial at both ends
	if err := d.v.Zero(ctx, 30*testBS+journalPage, 2*journalPage, 0); err != nil {
		t.Fatal(err)
	}
	clear(live[30*testBS+journalPage : 30*testBS+3*journalPage])
	if err := d.v.Trim(ctx, 40*testBS, testBS, false); err != nil {
		t.Fatal(err)
	}
	clear(live[40*testBS : 41*testBS])

	if got := d.imageFile(); !bytes.Equal(got, img) {
		t.Fatal("a write to a block the copying snapshot needs reached the live image")
	}
	if d.v.rd.count.Load() == 0 || d.journalUsed() == 0 {
		t.Fatal("no redirected pages in the journal")
	}
	if !bytes.Equal(d.readLive(), live) {
		t.Fatal("live disk does not read the redirected writes")
	}
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("s1 does not read as the disk at the snapshot")
	}
	// Small reads of redirected pages are not answered from the image.
	if d.v.TryReadAt(make([]byte, 512), 3*testBS) {
		t.Fatal("TryReadAt answered a redirected page from the live image")
	}
	if _, _, ok := d.v.Backing(10*testBS, 512); ok {
		t.Fatal("Backing offered the live image for a redirected page")
	}
	ext, err := d.v.Extents(ctx, 40*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || ext[0].Flags&nbd.StateHole != 0 {
		t.Fatalf("extents of a trimmed redirected block: %+v, want data (its zeros are in the journal)", ext)
	}

	// Reopen with s1 still copying: the index is rebuilt from the journal.
	d.reopen()
	if !bytes.Equal(d.readLive(), live) {
		t.Fatal("after reopen the live disk lost redirected writes")
	}
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("after reopen s1 does not read as the disk at the snapshot")
	}
	// s2 seals redirected pages; writes after it are redirected too and
	// must not leak into s2.
	d.snapshot("s2")
	at2 := bytes.Clone(live)
	write(3*testBS+journalPage, randBlock(r)[:journalPage])
	write(50*testBS, randBlock(r))
	if !bytes.Equal(d.readSnap("s2"), at2) {
		t.Fatal("s2 does not read as the disk at its seal")
	}
	if !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("s1 changed after s2")
	}

	release()
	d.wait("s1")
	d.wait("s2")
	deadline := time.Now().Add(10 * time.Second)
	for d.v.rd.count.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := d.v.rd.count.Load(); n != 0 {
		t.Fatalf("%d pages still redirected after every copy-out finished", n)
	}
	if got := d.journalUsed(); got != 0 {
		t.Fatalf("journal holds %d bytes after the merge, want 0 (started over)", got)
	}
	if got := d.imageFile(); !bytes.Equal(got, live) {
		t.Fatal("the live image file does not hold the merged writes")
	}
	if !bytes.Equal(d.readSnap("s1"), img) || !bytes.Equal(d.readSnap("s2"), at2) {
		t.Fatal("ready snapshots differ after the merge")
	}
	d.verify()
}

// TestRedirectHalfFullJournal: once the journal is half full, writes to
// blocks not redirected yet take the copy-before-write path (the image
// is overwritten after the old pages are journaled), while blocks already
// redirected stay redirected; every version stays right. Once it is full,
// a rewrite of a redirected block fails the copying snapshot after a
// bounded wait instead of holding the guest.
func TestRedirectHalfFullJournal(t *testing.T) {
	d := newTestDisk(t, 64*testBS)
	d.v.Close()
	v, err := Open(filepath.Join(d.dir, "live.raw"), Options{BlockSize: testBS, Store: d.st, DiskID: d.diskID,
		TrackPrefix: filepath.Join(d.dir, "track"), JournalMax: 9*wholeRec + journalPage, Redirect: true})
	if err != nil {
		t.Fatal(err)
	}
	d.v = v
	ctx := context.Background()
	r := rand.New(rand.NewPCG(9, 10))
	img := make([]byte, 0, 64*testBS)
	for range 64 {
		img = append(img, randBlock(r)...)
	}
	if err := v.WriteAt(ctx, img, 0, false); err != nil {
		t.Fatal(err)
	}
	release := holdCopyOut(t)
	d.snapshot("s1")
	live := bytes.Clone(img)
	for b := range 8 { // 5 records fill half the journal
		p := randBlock(r)
		d.writeBlock(uint64(b), p)
		copy(live[b*testBS:], p)
	}
	if n := v.rd.count.Load(); n != 5*testBS/journalPage {
		t.Fatalf("%d pages redirected, want the first 5 blocks' (the journal then is half full)", n)
	}
	file := d.imageFile()
	if !bytes.Equal(file[:5*testBS], img[:5*testBS]) || !bytes.Equal(file[5*testBS:8*testBS], live[5*testBS:8*testBS]) {
		t.Fatal("blocks 0-4 should be redirected and blocks 5-7 written in place after copy-before-write")
	}
	p := randBlock(r)
	d.writeBlock(1, p) // redirected already: stays so
	copy(live[testBS:], p)
	if !bytes.Equal(d.readLive(), live) || !bytes.Equal(d.readSnap("s1"), img) {
		t.Fatal("live or snapshot wrong with both paths in use")
	}
	// The journal is full now (6 redirect + 3 copy-before-write records)
	// and the copy-out is held: a rewrite of a redirected block waits
	// journalFullWait, then s1 fails and the write goes on in place.
	p = randBlock(r)
	t0 := time.Now()
	d.writeBlock(2, p)
	copy(live[2*testBS:], p)
	if w := time.Since(t0); w < journalFullWait {
		t.Fatalf("the write waited %v for room, want at least %v", w, journalFullWait)
	}
	if in, _ := v.Snapshot("s1"); in.State != StateFailed {
		t.Fatalf("s1 is %s after the journal stayed full, want failed", in.State)
	}
	if n := v.rd.count.Load(); n != 0 {
		t.Fatalf("%d pages still redirected after the copying snapshot failed", n)
	}
	if !bytes.Equal(d.readLive(), live) || !bytes.Equal(d.imageFile(), live) {
		t.Fatal("live disk or image file wrong after the merge")
	}
	release()
	d.verify()
}
