package cow

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// cloneOf opens a clone of d's snapshot as a volume of its own (disk id
// id) on d's store; layers after the first are the parent's own origin.
func (d *testDisk) cloneOf(id uint64, origin []store.Layer) *testDisk {
	d.t.Helper()
	c := &testDisk{t: d.t, dir: filepath.Join(d.dir, "clone"+string(rune('0'+id))), st: d.st, diskID: id, size: d.size, origin: origin}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		d.t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(c.dir, "live.raw"))
	if err != nil {
		d.t.Fatal(err)
	}
	f.Truncate(d.size)
	f.Close()
	c.open()
	d.t.Cleanup(func() {
		if c.v != nil {
			c.v.Close()
		}
	})
	return c
}

// layer is the view of d's snapshot name.
func (d *testDisk) layer(name string) store.Layer {
	d.t.Helper()
	in, err := d.v.Snapshot(name)
	if err != nil {
		d.t.Fatal(err)
	}
	return store.Layer{Disk: d.diskID, Seq: in.Seq}
}

// randomWrite writes random bytes at a random place (often partial
// blocks) to d and to want.
func randomWrite(t *testing.T, r *rand.Rand, d *testDisk, want []byte) {
	t.Helper()
	off := r.Int64N(int64(len(want)) - 1)
	n := min(int64(1+r.IntN(3*testBS)), int64(len(want))-off)
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	if r.IntN(8) == 0 {
		clear(p)
		if err := d.v.Zero(context.Background(), off, n, 0); err != nil {
			t.Fatal(err)
		}
	} else if err := d.v.WriteAt(context.Background(), p, off, false); err != nil {
		t.Fatal(err)
	}
	copy(want[off:], p)
}

// TestClone: a clone reads as its origin snapshot until written; writes
// to the clone and to the parent never reach each other nor each other's
// snapshots; partial writes copy up one block; zeros stay zeros (no hole
// reading the origin); the clone's snapshots store only what it wrote;
// a reopen (crash-like) finds what it wrote from the image's allocation;
// a clone of a clone reads through both; Detach cuts the parent off.
func TestClone(t *testing.T) {
	const blocks = 48
	p := newTestDisk(t, blocks*testBS)
	r := rand.New(rand.NewPCG(21, 22))
	parent := make([]byte, blocks*testBS)
	for range 60 {
		randomWrite(t, r, p, parent)
	}
	p.snapshot("base")
	p.wait("base")
	atBase := bytes.Clone(parent)
	before := p.stats().Chunks

	c := p.cloneOf(2, []store.Layer{p.layer("base")})
	if !bytes.Equal(c.readLive(), atBase) {
		t.Fatal("a new clone does not read as its origin snapshot")
	}
	if ext, err := c.v.Extents(context.Background(), 0, blocks*testBS); err != nil || len(ext) == 0 {
		t.Fatalf("clone extents: %v %v", ext, err)
	}
	clone := bytes.Clone(atBase)
	for range 12 {
		randomWrite(t, r, c, clone)
	}
	for range 80 {
		randomWrite(t, r, p, parent)
	}
	if !bytes.Equal(c.readLive(), clone) || !bytes.Equal(p.readLive(), parent) {
		t.Fatal("clone and parent do not each read their own writes")
	}
	if !bytes.Equal(p.readSnap("base"), atBase) {
		t.Fatal("the parent's snapshot changed under the clone's writes")
	}
	// Zeros written to an unwritten block are zeros, not the origin.
	if err := c.v.Zero(context.Background(), 5*testBS, testBS, 0); err != nil {
		t.Fatal(err)
	}
	clear(clone[5*testBS : 6*testBS])
	if err := c.v.Trim(context.Background(), 7*testBS+100, 2000, false); err != nil {
		t.Fatal(err)
	}
	clear(clone[7*testBS+100 : 7*testBS+2100])
	if !bytes.Equal(c.readLive(), clone) {
		t.Fatal("zeroing a clone left origin data")
	}

	c.snapshot("c1")
	c.wait("c1")
	atC1 := bytes.Clone(clone)
	if !bytes.Equal(c.readSnap("c1"), atC1) {
		t.Fatal("the clone's snapshot reads wrong")
	}
	in, _ := c.v.Snapshot("c1")
	touched := 0
	for b := 0; b < blocks; b++ {
		if !bytes.Equal(clone[b*testBS:(b+1)*testBS], atBase[b*testBS:(b+1)*testBS]) {
			touched++
		}
	}
	if got := int(in.CopyBytes / testBS); got > touched+2 || got >= blocks {
		t.Fatalf("the clone's first snapshot took %d of %d blocks, %d of them changed: it should take only those the clone wrote", got, blocks, touched)
	}

	// Reopen: what the clone wrote is found from the image.
	c.reopen()
	if !bytes.Equal(c.readLive(), clone) || !bytes.Equal(c.readSnap("c1"), atC1) {
		t.Fatal("after a reopen the clone reads wrong")
	}

	// A clone of the clone's snapshot reads through both.
	cc := c.cloneOf(3, []store.Layer{c.layer("c1"), p.layer("base")})
	if !bytes.Equal(cc.readLive(), atC1) {
		t.Fatal("a clone of a clone does not read as its origin")
	}
	grand := bytes.Clone(atC1)
	for range 20 {
		randomWrite(t, r, cc, grand)
	}

	// Detach the first clone; the parent's snapshot can then go.
	layers, err := c.v.Detach(context.Background(), nil)
	if err != nil || len(layers) != 1 || layers[0].Disk != 2 || layers[0].Seq != store.BaseSeq {
		t.Fatalf("detach: %v %v", layers, err)
	}
	cc.v.Close() // the grandchild still reads through the parent: detach it too
	cc.v = nil
	cc.open()
	if _, err := cc.v.Detach(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	c.origin, cc.origin = layers, []store.Layer{{Disk: 3, Seq: store.BaseSeq}}
	// Hydrate copies the data too: every block is the clone's whole.
	var last uint64
	if err := c.v.Hydrate(context.Background(), 0, func(done, total uint64) { last = total }); err != nil {
		t.Fatal(err)
	}
	if !c.v.allLocal(0, blocks*testBS) || last == 0 {
		t.Fatalf("after hydrating, blocks still read from the store (progress total %d)", last)
	}
	if _, err := p.v.DeleteSnapshot(context.Background(), "base"); err != nil {
		t.Fatal(err)
	}
	c.reopen()
	cc.reopen()
	if !bytes.Equal(c.readLive(), clone) || !bytes.Equal(c.readSnap("c1"), atC1) || !bytes.Equal(cc.readLive(), grand) {
		t.Fatal("after detaching and deleting the parent's snapshot the clones read wrong")
	}
	if got := p.stats().Chunks; got < before/2 {
		t.Logf("chunks before %d, now %d", before, got)
	}
	c.verify()
}

// TestCloneCopyUpOneBlock: a 4 KiB write to a block the clone does not
// hold writes that one block whole, no more.
func TestCloneCopyUpOneBlock(t *testing.T) {
	p := newTestDisk(t, 16*testBS)
	ctx := context.Background()
	if err := p.v.WriteAt(ctx, bytes.Repeat([]byte{7}, 16*testBS), 0, false); err != nil {
		t.Fatal(err)
	}
	p.snapshot("base")
	p.wait("base")
	c := p.cloneOf(2, []store.Layer{p.layer("base")})
	if err := c.v.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 3*testBS+8192, false); err != nil {
		t.Fatal(err)
	}
	if got := allocated(t, filepath.Join(c.dir, "live.raw")); got != testBS {
		t.Fatalf("a 4 KiB write to a clone allocated %d bytes, want one block (%d)", got, testBS)
	}
	want := bytes.Repeat([]byte{7}, 16*testBS)
	copy(want[3*testBS+8192:], bytes.Repeat([]byte{9}, 4096))
	if !bytes.Equal(c.readLive(), want) {
		t.Fatal("the copied-up block reads wrong")
	}
	if ext, err := c.v.Extents(ctx, 0, 16*testBS); err != nil || len(ext) != 1 || ext[0].Flags&block.StateHole != 0 {
		t.Fatalf("extents of a clone of a full disk: %+v %v", ext, err)
	}
}

// TestFlattenUnderWrites: detaching and hydrating a clone while a writer
// keeps writing to it (whole blocks, partial blocks, zeros, to blocks
// not yet copied and to blocks being copied) ends with the writer's
// bytes everywhere, its snapshot taken mid-way intact; the parent's
// snapshot then goes and a reopen reads the same.
func TestFlattenUnderWrites(t *testing.T) {
	const blocks = 256
	p := newTestDisk(t, blocks*testBS)
	r := rand.New(rand.NewPCG(31, 32))
	parent := make([]byte, blocks*testBS)
	for range 300 {
		randomWrite(t, r, p, parent)
	}
	p.snapshot("base")
	p.wait("base")
	c := p.cloneOf(2, []store.Layer{p.layer("base")})
	want := bytes.Clone(parent)

	stop := make(chan struct{})
	done := make(chan error, 1)
	var mu sync.Mutex // a write and its record in want are one step for the snapshot
	go func() {
		wr := rand.New(rand.NewPCG(33, 34))
		ctx := context.Background()
		n := 0
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			off := wr.Int64N(int64(len(want)) - 1)
			size := min(int64(1+wr.IntN(2*testBS)), int64(len(want))-off)
			buf := make([]byte, size)
			var err error
			mu.Lock() // the write and its record, with no snapshot between
			if wr.IntN(6) == 0 {
				err = c.v.Zero(ctx, off, size, 0)
			} else {
				for i := range buf {
					buf[i] = byte(wr.Uint32())
				}
				err = c.v.WriteAt(ctx, buf, off, false)
			}
			if err != nil {
				mu.Unlock()
				done <- err
				return
			}
			copy(want[off:], buf)
			mu.Unlock()
			if n++; n%50 == 0 {
				runtime.Gosched()
			}
		}
	}()
	ctx := context.Background()
	layers, err := c.v.Detach(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	c.snapshot("mid") // between the detach and the hydrate
	atMid := bytes.Clone(want)
	mu.Unlock()
	if err := c.v.Hydrate(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.readLive(), want) {
		t.Fatal("after a flatten under writes the clone does not read as written")
	}
	c.wait("mid")
	if !bytes.Equal(c.readSnap("mid"), atMid) {
		t.Fatal("the clone's snapshot taken during the flatten reads wrong")
	}
	if _, err := p.v.DeleteSnapshot(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	c.origin = layers
	c.reopen()
	if !bytes.Equal(c.readLive(), want) || !bytes.Equal(c.readSnap("mid"), atMid) {
		t.Fatal("after deleting the parent's snapshot and a reopen the flattened clone reads wrong")
	}
	c.verify()
}

// TestCloneCopyOnRead: with CopyOnRead a read of a block the clone does
// not hold copies that block (whole, no more) into its live image, the
// bytes read are the origin's, and the block then reads from there.
func TestCloneCopyOnRead(t *testing.T) {
	p := newTestDisk(t, 16*testBS)
	ctx := context.Background()
	want := bytes.Repeat([]byte{7}, 16*testBS)
	for i := range want {
		want[i] = byte(i / 509)
	}
	if err := p.v.WriteAt(ctx, want, 0, false); err != nil {
		t.Fatal(err)
	}
	p.snapshot("base")
	p.wait("base")
	c := p.cloneOf(2, []store.Layer{p.layer("base")})
	live := filepath.Join(c.dir, "live.raw")
	buf := make([]byte, 4096)
	if err := c.v.ReadAt(ctx, buf, 5*testBS+100); err != nil {
		t.Fatal(err)
	}
	if got := allocated(t, live); got != 0 {
		t.Fatalf("without copy-on-read a read allocated %d bytes", got)
	}
	c.copyOnRead = true
	c.reopen()
	if err := c.v.ReadAt(ctx, buf, 5*testBS+100); err != nil || !bytes.Equal(buf, want[5*testBS+100:5*testBS+4196]) {
		t.Fatalf("copy-on-read read %v, wrong bytes: %v", buf[:8], err)
	}
	if got := allocated(t, live); got != testBS || !c.v.local.isFull(5) {
		t.Fatalf("a 4 KiB read copied %d bytes, want one block (%d)", got, testBS)
	}
	if !bytes.Equal(c.readLive(), want) {
		t.Fatal("after copy-on-read the clone reads wrong")
	}
	c.reopen() // the copied block is found again from the image
	if !c.v.local.isFull(5) || !bytes.Equal(c.readLive(), want) {
		t.Fatal("after a reopen the copied-on-read block is not the clone's")
	}
}
