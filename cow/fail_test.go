package cow

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/store"
	"golang.org/x/sys/unix"
)

// TestFailureRecordRetried: a snapshot that fails while its record cannot
// be written (the store's filesystem full beyond its reserve, an I/O
// error) has its failure recorded once the store takes records again,
// without a restart; one whose record is still refused at Close is
// recorded then. Either way the next start finds it failed, not copying
// (which would copy it out again).
func TestFailureRecordRetried(t *testing.T) {
	for _, atClose := range []bool{false, true} {
		d, _, release := redirectDisk(t)
		r := rand.New(rand.NewPCG(3, 4))
		var eio error = syscall.EIO
		d.hooks.recordErr.Store(&eio)
		d.hooks.sideWriteErr.Store(&eio)
		d.writeBlock(2, randBlock(r))
		d.hooks.sideWriteErr.Store(nil)
		if in, _ := d.v.Snapshot("s1"); in.State != StateFailed {
			t.Fatalf("s1 is %s after a redirected write failed", in.State)
		}
		release()
		if !atClose {
			d.hooks.recordErr.Store(nil)
			deadline := time.Now().Add(5 * time.Second)
			for {
				var rec snapRecord
				if err := d.st.GetRecord(store.SnapshotKey(d.diskID, 1), &rec); err != nil {
					t.Fatal(err)
				}
				if rec.State == StateFailed {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("5s after records work again s1's record still says %s", rec.State)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		d.hooks.recordErr.Store(nil) // Close's attempt succeeds
		d.reopen()
		if in, _ := d.v.Snapshot("s1"); in.State != StateFailed {
			t.Fatalf("atClose=%v: after a reopen s1 is %s, want failed", atClose, in.State)
		}
	}
}

// TestDeleteRefusedKeepsState: a delete whose first record (the snapshot
// is "deleting") cannot be written has changed nothing: the snapshot is
// what it was, not "deleting" until a restart, and deleting it again
// works. A copying snapshot has passed its blocks on by then, so it is
// failed, with a reason saying to delete it again.
func TestDeleteRefusedKeepsState(t *testing.T) {
	d, img, release := redirectDisk(t)
	defer release()
	ctx := context.Background()
	var enospc error = syscall.ENOSPC
	d.hooks.recordErr.Store(&enospc)
	if _, err := d.v.DeleteSnapshot(ctx, "s1"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("delete with records refused: %v", err)
	}
	in, _ := d.v.Snapshot("s1")
	if in.State != StateFailed || !strings.Contains(in.Reason, "delete it again") {
		t.Fatalf("copying s1 after a refused delete: %s (%q), want failed saying to delete it again", in.State, in.Reason)
	}
	d.hooks.recordErr.Store(nil)
	release()
	if !bytes.Equal(d.readLive(), img) {
		t.Fatal("live disk changed by a refused delete")
	}
	d.snapshot("s2")
	d.wait("s2")
	d.hooks.recordErr.Store(&enospc)
	if _, err := d.v.DeleteSnapshot(ctx, "s2"); err == nil {
		t.Fatal("delete with records refused succeeded")
	}
	if in, _ := d.v.Snapshot("s2"); in.State != StateReady {
		t.Fatalf("ready s2 after a refused delete: %s, want ready", in.State)
	}
	if !bytes.Equal(d.readSnap("s2"), img) {
		t.Fatal("s2 reads wrong after a refused delete")
	}
	d.hooks.recordErr.Store(nil)
	for _, name := range []string{"s1", "s2"} {
		if _, err := d.v.DeleteSnapshot(ctx, name); err != nil {
			t.Fatalf("delete %s again: %v", name, err)
		}
	}
	if n := len(d.v.Snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
	d.verify()
}

// TestFailureMarkedAcrossRestart: a snapshot that fails while the store
// takes no records (a broken or full store), then a stop: its record
// still says copying, but its blocks have passed on and the redirected
// writes that kept its version are merged into the live image. The next
// open must find it failed (the failure mark on the data directory), not
// copy newer data out and call it ready.
func TestFailureMarkedAcrossRestart(t *testing.T) {
	d, img, release := redirectDisk(t)
	r := rand.New(rand.NewPCG(5, 6))
	var eio error = syscall.EIO
	d.hooks.recordErr.Store(&eio)
	for b := range 4 {
		d.writeBlock(uint64(b), randBlock(r)) // redirected: s1 keeps img
	}
	d.hooks.sideWriteErr.Store(&eio)
	d.writeBlock(8, randBlock(r)) // fails s1; the redirects merge into the image
	d.hooks.sideWriteErr.Store(nil)
	release()
	if in, _ := d.v.Snapshot("s1"); in.State != StateFailed {
		t.Fatalf("s1 is %s after a redirected write failed", in.State)
	}
	if err := d.v.Close(); err != nil {
		t.Logf("close with records refused: %v", err)
	}
	var rec snapRecord
	if err := d.st.GetRecord(store.SnapshotKey(d.diskID, 1), &rec); err != nil || rec.State != StateCopying {
		t.Fatalf("s1's record after the stop: %s, %v (the test needs it still copying)", rec.State, err)
	}
	d.hooks.recordErr.Store(nil)
	d.open()
	in, _ := d.v.Snapshot("s1")
	if in.State == StateReady || in.State == StateCopying {
		d.wait("s1")
		same := bytes.Equal(d.readSnap("s1"), img)
		t.Fatalf("after the restart s1 is %s again (reads as taken: %v), want failed", in.State, same)
	}
	if in.State != StateFailed {
		t.Fatalf("after the restart s1 is %s, want failed", in.State)
	}
	if err := d.st.GetRecord(store.SnapshotKey(d.diskID, 1), &rec); err != nil || rec.State != StateFailed {
		t.Fatalf("s1's record after the restart: %s, %v, want failed", rec.State, err)
	}
	d.verify()
}

// TestTrackingOnFullFilesystem: change tracking files are allocated when
// they are made, so on a filesystem a guest filled to the last byte a
// write over an allocated block still marks its block durably (a mark
// that failed would lose tracking: the next snapshot would read every
// allocated block).
func TestTrackingOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	live := filepath.Join(dir, "live.raw")
	if err := os.WriteFile(live, make([]byte, 64*testBS), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Dir: t.TempDir(), ReserveBytes: 96 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v, err := Open(live, Options{BlockSize: testBS, Store: st, DiskID: 1, TrackPrefix: filepath.Join(dir, "track")})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	if _, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: "s1", Kind: "manual"}); err != nil {
		t.Fatal(err)
	}
	if err := v.WaitReady(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; {
		if _, err := filler.Write(buf[:n]); err != nil {
			n /= 2
		}
	}
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{9}, testBS), 3*testBS, false); err != nil {
		t.Fatalf("write over an allocated block on a full filesystem: %v", err)
	}
	if v.trackLost.Load() {
		t.Fatal("change tracking lost on a full filesystem")
	}
	if bits := v.track.Load().bits(); !bits.Test(3) || bits.Count() != 1 {
		t.Fatalf("tracked blocks %v, want [3]", bits.Members())
	}
}
