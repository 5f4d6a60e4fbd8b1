package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// startWithFUSE starts a daemon with the FUSE view and returns it and the
// view's directory.
func startWithFUSE(t *testing.T) (*daemontest.Instance, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the FUSE view needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE in this kernel: %v", err)
	}
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	on := true
	cfg.FUSE = &on
	cfg.FUSEDir = filepath.Join(filepath.Dir(cfg.DataDir), "fuse")
	return daemontest.Start(t, &cfg), cfg.FUSEDir
}

// fuseRead reads n bytes at off of a file of the FUSE view, opening it
// anew unless f is given.
func fuseRead(t *testing.T, f *os.File, path string, off int64, n int) []byte {
	t.Helper()
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return p
}

// TestFUSECacheFollowsNBD: disk.raw keeps the page cache, and what an NBD
// client (qemu-io) writes, trims or zeroes shows through FUSE at once,
// whether the FUSE file stayed open (its pages cached) or was reopened
// after the kernel cached them; what FUSE writes shows through NBD.
func TestFUSECacheFollowsNBD(t *testing.T) {
	need(t, "qemu-io")
	in, dir := startWithFUSE(t)
	createDisk(t, in, "d", "64M")
	uri := nbdURI(in, "d")
	path := filepath.Join(dir, "d", "disk.raw")
	open, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	const off, n = 1 << 20, 1 << 20
	for _, c := range []struct {
		name, cmd string
		want      byte
	}{
		{"write", "write -P 0x5a 1M 1M", 0x5a},
		{"discard", "discard 1M 1M", 0},
		{"write zeroes", "write -z 1M 1M", 0},
		{"write zeroes unmapping", "write -z -u 1M 1M", 0},
	} {
		for _, keepOpen := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s, file kept open %v", c.name, keepOpen), func(t *testing.T) {
				f := open
				if !keepOpen {
					f = nil
				}
				qemuIO(t, uri, "write -P 0x11 1M 1M")
				if got := fuseRead(t, f, path, off, n); !bytes.Equal(got, bytes.Repeat([]byte{0x11}, n)) {
					t.Fatal("FUSE does not read what NBD wrote")
				}
				qemuIO(t, uri, c.cmd)
				if got := fuseRead(t, f, path, off, n); !bytes.Equal(got, bytes.Repeat([]byte{c.want}, n)) {
					t.Errorf("after NBD %q FUSE reads %#x..., want %#x", c.cmd, got[:4], c.want)
				}
			})
		}
	}

	// A FUSE write into part of a page not cached, read back both ways.
	w, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt(bytes.Repeat([]byte{0x77}, 1000), 8<<20+100); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, uri, "read -P 0x77 8388708 1000", "read -P 0 8M 100")
	if got := fuseRead(t, open, path, 8<<20, 1100); !bytes.Equal(got[100:], bytes.Repeat([]byte{0x77}, 1000)) {
		t.Error("FUSE does not read back its own write")
	}
}

// TestFUSECacheConcurrentNBD: qemu-io writes and zeroes over the disk
// while FUSE reads it in a loop (filling the page cache as it goes); at
// the end qemu-img finds the FUSE file and the NBD export identical.
func TestFUSECacheConcurrentNBD(t *testing.T) {
	need(t, "qemu-io")
	need(t, "qemu-img")
	in, dir := startWithFUSE(t)
	createDisk(t, in, "d", "32M")
	uri := nbdURI(in, "d")
	path := filepath.Join(dir, "d", "disk.raw")
	var cmds []string
	for i := range 400 {
		off := (i * 7919 % 512) * 64 << 10
		if i%7 == 6 {
			cmds = append(cmds, fmt.Sprintf("write -z %d 64k", off))
		} else {
			cmds = append(cmds, fmt.Sprintf("write -P %d %d 64k", i%255+1, off))
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, size := range []int{1 << 20, 4096} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			p := make([]byte, size)
			for off := int64(0); ; off = (off + int64(size)*13) % (32 << 20) {
				select {
				case <-done:
					return
				default:
				}
				if _, err := f.ReadAt(p, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := 0; i < len(cmds); i += 50 { // several connections, one after another
		qemuIO(t, uri, cmds[i:min(i+50, len(cmds))]...)
	}
	close(done)
	wg.Wait()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", path, uri).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Images are identical") {
		t.Errorf("qemu-img compare disk.raw with the NBD export: %v\n%s", err, out)
	}
}

// TestFUSECacheRollbackGrowDelete: pages cached before a rollback, a grow
// or a delete and re-create never show afterwards.
func TestFUSECacheRollbackGrowDelete(t *testing.T) {
	need(t, "qemu-io")
	in, dir := startWithFUSE(t)
	ctx := context.Background()
	c := in.Client
	createDisk(t, in, "d", "16M")
	uri := nbdURI(in, "d")
	path := filepath.Join(dir, "d", "disk.raw")
	qemuIO(t, uri, "write -P 0xaa 0 1M")
	if _, err := c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, c, "d", "s1")
	qemuIO(t, uri, "write -P 0xbb 0 1M")
	if got := fuseRead(t, nil, path, 0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{0xbb}, 1<<20)) {
		t.Fatal("FUSE does not read the latest write")
	}
	var tk api.Task
	if err := untilReleased(func() (err error) { tk, err = c.Rollback(ctx, "d", "s1", false); return err }); err != nil {
		t.Fatal(err)
	}
	if tk = waitTask(t, c, tk.ID); tk.State != api.TaskSucceeded {
		t.Fatalf("rollback: %+v", tk)
	}
	if got := fuseRead(t, nil, path, 0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{0xaa}, 1<<20)) {
		t.Error("after the rollback FUSE reads the data from before it")
	}

	fuseRead(t, nil, path, 15<<20, 1<<20)
	if _, err := c.GrowDisk(ctx, "d", "32M"); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 32<<20 {
		t.Fatalf("after the grow: %v, size %d", err, fi.Size())
	}
	qemuIO(t, uri, "write -P 0xcc 16M 1M")
	if got := fuseRead(t, nil, path, 15<<20, 2<<20); !bytes.Equal(got[:1<<20], make([]byte, 1<<20)) ||
		!bytes.Equal(got[1<<20:], bytes.Repeat([]byte{0xcc}, 1<<20)) {
		t.Error("after the grow FUSE does not read the old end and the new space as written")
	}

	fuseRead(t, nil, path, 0, 1<<20) // cached: a disk of the same name must not show it
	if err := untilReleased(func() error { return c.DeleteDisk(ctx, "d", api.DeleteDiskOptions{WithSnapshots: true}) }); err != nil {
		t.Fatal(err)
	}
	createDisk(t, in, "d", "16M")
	if got := fuseRead(t, nil, path, 0, 1<<20); !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Error("a disk created again under the same name shows the old disk's data")
	}
}

// untilReleased runs op until it is not refused for a client that is still
// connected, for up to 10 s: the kernel releases a closed FUSE file, and
// cairnd a closed NBD connection, a moment after the client has gone.
func untilReleased(op func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := op()
		if !isCode(err, api.CodeInUse) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFUSEShowsTheExports: the FUSE tree lists what the API's export list
// does, and an open snapshot file is a reader: a delete is refused while
// it is open, and a forced delete waiting for it ends when it is closed.
func TestFUSEShowsTheExports(t *testing.T) {
	in, dir := startWithFUSE(t)
	ctx := context.Background()
	c := in.Client
	createDisk(t, in, "a", "1M")
	createDisk(t, in, "b", "1M")
	mustSnapshot(t, c, "b", "s1")
	mustSnapshot(t, c, "b", "s2")
	exports, err := c.Exports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fromAPI, fromFUSE []string
	for _, e := range exports {
		fromAPI = append(fromAPI, e.Name)
	}
	disks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range disks {
		fromFUSE = append(fromFUSE, k.Name())
		snaps, err := os.ReadDir(filepath.Join(dir, k.Name(), "snapshots"))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snaps {
			fromFUSE = append(fromFUSE, k.Name()+"@"+strings.TrimSuffix(s.Name(), ".raw"))
		}
	}
	if fmt.Sprint(fromFUSE) != fmt.Sprint(fromAPI) || len(fromAPI) != 4 {
		t.Errorf("FUSE shows %v, the API lists %v", fromFUSE, fromAPI)
	}

	f, err := os.Open(filepath.Join(dir, "b", "snapshots", "s1.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteSnapshot(ctx, "b", "s1", false); !isCode(err, api.CodeInUse) {
		t.Fatalf("delete with the snapshot's file open: %v, want in_use", err)
	}
	deleted := make(chan error, 1)
	go func() { _, err := c.DeleteSnapshot(ctx, "b", "s1", true); deleted <- err }()
	f.Close()
	select {
	case err := <-deleted:
		if err != nil {
			t.Fatalf("forced delete: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a forced delete still waits 10 s after the snapshot's file was closed")
	}
}
