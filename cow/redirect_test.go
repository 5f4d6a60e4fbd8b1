package cow

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
)

// redirectDisk is a 64-block disk of random data whose first snapshot
// "s1" is copying with its worker held; writes take the redirect path.
func redirectDisk(t *testing.T) (*testDisk, []byte, func()) {
	return copyingDisk(t, 5)
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
// to the epoch's side file, not over the live image: whole blocks, a
// partial page (read-modify-write of the page), a zeroed range and a
// trim. The live disk reads the new content, the snapshot the old,
// through a reopen (the index is rebuilt from the side files) and a
// second snapshot sealed over redirected pages; rewrites in one epoch
// land in place; once nothing copies the writes are merged into the
// image file and the side files are deleted.
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
	if err := d.v.Zero(ctx, 30*testBS+pageSize, 2*pageSize, 0); err != nil {
		t.Fatal(err)
	}
	clear(live[30*testBS+pageSize : 30*testBS+3*pageSize])
	if err := d.v.Trim(ctx, 40*testBS, testBS, false); err != nil {
		t.Fatal(err)
	}
	clear(live[40*testBS : 41*testBS])

	if got := d.imageFile(); !bytes.Equal(got, img) {
		t.Fatal("a write to a block the copying snapshot needs reached the live image")
	}
	side := d.sideFiles()
	if d.v.rd.count.Load() == 0 || len(side) != 1 {
		t.Fatalf("%d redirected pages, side files %v: want pages in one file", d.v.rd.count.Load(), side)
	}
	// Rewrites of a redirected page in the same epoch take no new room.
	before := allocated(t, side[0])
	for range 20 {
		write(3*testBS, randBlock(r))
	}
	if got := allocated(t, side[0]); got != before {
		t.Fatalf("side file grew from %d to %d bytes on rewrites in one epoch", before, got)
	}
	if st := d.stats(); st.Chunks != 0 {
		t.Fatalf("redirected writes stored %d chunks with the copy-out held; want none", st.Chunks)
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
	if len(ext) != 1 || ext[0].Flags&block.StateHole != 0 {
		t.Fatalf("extents of a trimmed redirected block: %+v, want data (its zeros are in a side file)", ext)
	}

	// Reopen with s1 still copying: the index is rebuilt from the side files.
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
	write(3*testBS+pageSize, randBlock(r)[:pageSize])
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
	if got := d.sideFiles(); len(got) != 0 {
		t.Fatalf("side files %v left after the merge", got)
	}
	if got := d.imageFile(); !bytes.Equal(got, live) {
		t.Fatal("the live image file does not hold the merged writes")
	}
	if !bytes.Equal(d.readSnap("s1"), img) || !bytes.Equal(d.readSnap("s2"), at2) {
		t.Fatal("ready snapshots differ after the merge")
	}
	d.verify()
}

// TestRedirectWriteFails: when a side file cannot take a redirected
// write (a full filesystem, an I/O error), the copying snapshot fails
// with the reason, what is redirected is merged into the live image, and
// the write goes to the live image: the guest's writes go on and the
// disk stays right.
func TestRedirectWriteFails(t *testing.T) {
	d, img, release := redirectDisk(t)
	defer release()
	r := rand.New(rand.NewPCG(9, 10))
	live := bytes.Clone(img)
	for b := range 4 {
		p := randBlock(r)
		d.writeBlock(uint64(b), p)
		copy(live[b*testBS:], p)
	}
	if n := d.v.rd.count.Load(); n != 4*testBS/pageSize {
		t.Fatalf("%d pages redirected, want 4 blocks'", n)
	}
	var enospc error = syscall.ENOSPC
	d.hooks.sideWriteErr.Store(&enospc)
	p := randBlock(r)
	d.writeBlock(9, p)
	copy(live[9*testBS:], p)
	d.hooks.sideWriteErr.Store(nil)
	in, _ := d.v.Snapshot("s1")
	if in.State != StateFailed || !strings.Contains(in.Reason, "no space left") {
		t.Fatalf("s1 is %s (%q) after a redirected write failed, want failed naming the cause", in.State, in.Reason)
	}
	if n := d.v.rd.count.Load(); n != 0 {
		t.Fatalf("%d pages still redirected after the copying snapshot failed", n)
	}
	if got := d.sideFiles(); len(got) != 0 {
		t.Fatalf("side files %v left after the merge", got)
	}
	if !bytes.Equal(d.readLive(), live) || !bytes.Equal(d.imageFile(), live) {
		t.Fatal("live disk or image file wrong after the merge")
	}
	d.verify()
}

// sideFiles lists the disk's side files of redirected writes.
func (d *testDisk) sideFiles() []string {
	m, _ := filepath.Glob(filepath.Join(d.dir, "track.row.*"))
	return m
}

// allocated is the space a file takes on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestRedirectIndex: a page's version for a snapshot is its newest of an
// epoch before the snapshot's sequence; a rewrite in the same epoch keeps
// one version and makes the page unmerged again.
func TestRedirectIndex(t *testing.T) {
	r := newRedirects()
	const shift = 16         // 64 KiB blocks: 16 pages
	r.add(2, shift, 3, 1, 3) // page 35
	r.add(2, shift, 3, 2, 5) // pages 35, 36
	r.add(2, shift, 3, 1, 8)
	for _, tc := range []struct {
		pg, seq uint64
		want    uint64 // 0: no version (the image's)
	}{{35, 3, 0}, {35, 4, 3}, {35, 5, 3}, {35, 6, 5}, {35, 9, 8}, {35, liveSeq, 8}, {36, 5, 0}, {36, liveSeq, 5}, {37, liveSeq, 0}} {
		rv, ok := r.version(tc.pg, tc.seq)
		if got := map[bool]uint64{true: rv.epoch}[ok]; got != tc.want {
			t.Errorf("version(page %d, seq %d) = epoch %d (found %v), want %d", tc.pg, tc.seq, rv.epoch, ok, tc.want)
		}
	}
	if n := r.count.Load(); n != 2 {
		t.Fatalf("count %d, want 2 pages", n)
	}
	if !r.hasBlock(2) || r.hasBlock(3) {
		t.Fatal("hasBlock wrong")
	}
	r.merged.Add(35)
	if rv, _ := r.version(35, liveSeq); !rv.merged {
		t.Fatal("merged newest version not reported merged")
	}
	if rv, _ := r.version(35, 8); rv.merged {
		t.Fatal("an older version reported merged")
	}
	r.add(2, shift, 3, 1, 8) // rewrite in the newest epoch
	if rv, _ := r.version(35, liveSeq); rv.merged || rv.epoch != 8 {
		t.Fatalf("after a rewrite: %+v, want epoch 8 unmerged", rv)
	}
	if n := len(r.layers); n != 3 {
		t.Fatalf("%d layers, want 3 (epochs 3, 5, 8)", n)
	}
}
