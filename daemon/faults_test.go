package daemon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/internal/faultfs"
)

// The fault matrix: cairnd's data directory (live images and store) on a
// FUSE passthrough that fails reads, writes and syncs of chosen files on
// command (internal/faultfs; this machine has no device-mapper for
// dm-flakey), with qemu-io as the guest and the API as the operator.

// faultDaemon starts a daemon whose data directory is a faultfs mount (its
// sockets outside it) and returns it with the filesystem and its config,
// for restarts.
func faultDaemon(t *testing.T) (*daemontest.Instance, *faultfs.FS, daemon.Config) {
	t.Helper()
	need(t, "qemu-io")
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	dir := daemontest.DataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ffs, err := faultfs.Start(t.TempDir(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ffs.Unmount() }) // after the daemon's cleanup (LIFO)
	sockets := filepath.Join(filepath.Dir(dir), "run")
	cfg := daemontest.Config(t, dir)
	cfg.APISocket = filepath.Join(sockets, "api.sock")
	cfg.NBDSocket = filepath.Join(sockets, "nbd.sock")
	cfg.StoreReserve = "96M"
	return daemontest.Start(t, &cfg), ffs, cfg
}

// qemuIOOut runs qemu-io's commands in one connection and returns its
// output, failures included (a failed command does not end the session).
// The cache mode is writeback: writes are not FUA, flushes are explicit.
func qemuIOOut(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw", "-t", "writeback"}
	if strings.Contains(uri, "@") {
		args = append(args, "-r")
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, _ := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	return string(out)
}

// nbdshOut runs Python statements with libnbd's handle h connected to
// uri, one by one in one connection, and prints "STATEMENT: ok" or
// "STATEMENT: ERROR" for each (qemu-io does not report a failed flush).
func nbdshOut(t *testing.T, uri string, stmts ...string) string {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import nbd").Run(); err != nil {
		t.Skip("/usr/bin/python3 cannot import nbd: install python3-libnbd (scripts/deps.sh)")
	}
	var script strings.Builder
	for _, st := range stmts {
		name := st[:strings.Index(st, "(")]
		fmt.Fprintf(&script, "try:\n    %s\n    print(%q)\nexcept nbd.Error as e:\n    print(%q, e.string)\n", st, name+": ok", name+":")
	}
	out, err := exec.Command("/usr/bin/python3", "-m", "nbd", "-u", uri, "-c", script.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
	return string(out)
}

// randomFile is n random bytes in a file, for qemu-io's write -s.
func randomFile(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	path := filepath.Join(t.TempDir(), "random")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func wantOut(t *testing.T, out string, what string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s: qemu-io output lacks %q:\n%s", what, w, out)
		}
	}
}

// TestFaultLiveImage: I/O errors on the live image reach the guest as EIO
// for the failing request only (the connection and other requests go on),
// and everything works again once the fault clears, with no restart.
func TestFaultLiveImage(t *testing.T) {
	in, ffs, cfg := faultDaemon(t)
	outer := t // restarts outlive the subtest that makes them
	ctx := context.Background()
	createDisk(t, in, "d", "8M")
	uri := nbdURI(in, "d")
	qemuIO(t, uri, "write -P 0x11 0 4M")

	t.Run("read", func(t *testing.T) {
		disarm := ffs.Fail(faultfs.Rule{Ops: faultfs.Read, Prefix: "disks/", Suffix: ".raw", Off: 0, Len: 64 << 10})
		out := qemuIOOut(t, uri, "read -P 0x11 0 4k", "read -P 0x11 1M 4k")
		disarm()
		wantOut(t, out, "a failing read", "read failed: Input/output error", "read 4096/4096 bytes at offset 1048576")
		qemuIO(t, uri, "read -P 0x11 0 64k")
	})
	t.Run("write", func(t *testing.T) {
		disarm := ffs.Fail(faultfs.Rule{Ops: faultfs.Write, Prefix: "disks/", Suffix: ".raw", Off: 2 << 20, Len: 64 << 10})
		out := qemuIOOut(t, uri, "write -P 0x22 2M 4k", "write -P 0x22 3M 4k", "read -P 0x22 3M 4k")
		disarm()
		wantOut(t, out, "a failing write", "write failed: Input/output error", "wrote 4096/4096 bytes at offset 3145728", "read 4096/4096 bytes at offset 3145728")
		qemuIO(t, uri, "write -P 0x22 2M 4k", "read -P 0x22 2M 4k")
	})
	t.Run("fsync", func(t *testing.T) {
		disarm := ffs.Fail(faultfs.Rule{Ops: faultfs.Fsync, Prefix: "disks/", Suffix: ".raw"})
		out := nbdshOut(t, uri, "h.pwrite(b'\\x33' * 4096, 4 << 20)", "h.flush()", "h.pread(4096, 4 << 20)")
		// A snapshot's seal syncs the live image: it cannot be taken.
		_, serr := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "during"})
		disarm()
		wantOut(t, out, "a failing flush", "h.pwrite: ok", "h.flush: nbd_flush: flush: command failed: Input/output error", "h.pread: ok")
		if serr == nil {
			t.Fatal("a snapshot was taken while the live image could not be synced")
		}
		if _, err := in.Client.Snapshot(ctx, "d", "during"); err == nil {
			t.Fatal("the snapshot whose seal could not sync is listed")
		}
		// A failed sync may have dropped the pages it was to write, so a
		// later one proves nothing: flushes fail until a restart, and the
		// disk says so. Reads and writes go on.
		out = nbdshOut(t, uri, "h.pwrite(b'\\x33' * 4096, 5 << 20)", "h.flush()", "h.pread(4096, 5 << 20)")
		wantOut(t, out, "a flush after the fault cleared", "h.pwrite: ok", "h.flush: nbd_flush: flush: command failed: Input/output error", "h.pread: ok")
		if k, err := in.Client.Disk(ctx, "d"); err != nil || k.State != api.DiskReady || !strings.Contains(k.Error, "every flush fails until cairnd restarts") {
			t.Fatalf("disk after a failed sync: %+v, %v", k, err)
		}
		if err := in.Stop(); err == nil {
			t.Log("stop after a failed sync: no error")
		}
		in = daemontest.Start(outer, &cfg)
		uri = nbdURI(in, "d")
		qemuIO(t, uri, "flush", "read -P 0x33 4M 4k", "read -P 0x33 5M 4k")
	})
	// The disk is whole: a snapshot now holds what the guest wrote.
	if _, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "after"}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, in.Client, "d", "after")
	qemuIO(t, nbdURI(in, "d@after"), "read -P 0x11 0 2M", "read -P 0x22 2M 4k", "read -P 0x22 3M 4k", "read -P 0x33 4M 4k")
	verifyClean(t, in)
}

// TestFaultStore: I/O errors on the store. A read of a stored block fails
// that request with EIO, and verify names the chunks it could not read;
// once reads work again, so does everything (no restart). A write that
// cannot reach the store's disk fails the copying snapshot with the
// reason, and the store takes no more changes (new snapshots are refused
// saying why) while guest I/O and ready snapshots go on; after a restart,
// with the disk healthy, the failed snapshot stays failed, nothing ready
// is wrong and verify is clean.
func TestFaultStore(t *testing.T) {
	in, ffs, cfg := faultDaemon(t)
	outer := t
	ctx := context.Background()
	createDisk(t, in, "d", "16M")
	uri := nbdURI(in, "d")
	first := randomFile(t, 4<<20)
	qemuIO(t, uri, "write -s "+first+" 0 4M")
	// What s1 and the live disk hold, for qemu-img compare.
	atS1 := image(t, 16<<20, part{0, first})
	live := image(t, 16<<20, part{0, first}, part{0, fillPattern(0x44, 1<<20)})
	if _, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, in.Client, "d", "s1")
	qemuIO(t, uri, "write -P 0x44 0 1M") // s1's blocks now come from the store
	s1 := nbdURI(in, "d@s1")

	t.Run("read", func(t *testing.T) {
		// Bad sectors under one stored chunk: the value log's pages that
		// hold s1's first block fail reads. (Failing every value-log
		// read would also fail the page-ins of Badger's own writes, which
		// go through a mapping: a SIGBUS no code of ours can catch, as
		// docs/design.md says; the verify below writes its task's record.)
		head := make([]byte, 256)
		if f, err := os.Open(first); err == nil {
			f.ReadAt(head, 0)
			f.Close()
		}
		var disarms []func()
		vlogs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "store", "*.vlog"))
		for _, v := range vlogs {
			raw, err := os.ReadFile(v)
			if err != nil {
				t.Fatal(err)
			}
			if at := bytes.Index(raw, head); at >= 0 {
				off := int64(at) &^ 4095
				disarms = append(disarms, ffs.Fail(faultfs.Rule{Ops: faultfs.Read, Prefix: "store/" + filepath.Base(v),
					Off: off, Len: int64(at) + 64<<10 - off}))
			}
		}
		if len(disarms) == 0 {
			t.Fatal("s1's first block is in no value log")
		}
		disarm := func() {
			for _, d := range disarms {
				d()
			}
		}
		out := qemuIOOut(t, s1, "read 0 64k", "read 8M 64k")
		task, err := in.Client.Verify(ctx, api.VerifyRequest{})
		if err != nil {
			disarm()
			t.Fatal(err)
		}
		done := waitTask(t, in.Client, task.ID)
		disarm()
		wantOut(t, out, "a read of a stored block", "read failed: Input/output error", "read 65536/65536 bytes at offset 8388608")
		faults := verifyFaults(t, done)
		if len(faults) == 0 || !strings.Contains(faults[0], "chunk ") || !strings.Contains(faults[0], "cannot read") {
			t.Fatalf("verify with the store's reads failing: faults %q", faults)
		}
		sameImage(t, s1, atS1)
		verifyClean(t, in)
	})
	t.Run("write", func(t *testing.T) {
		second := randomFile(t, 4<<20)
		qemuIO(t, uri, "write -s "+second+" 8M 4M")
		live = image(t, 16<<20, part{0, live}, part{8 << 20, second}, part{12 << 20, fillPattern(0x55, 1<<20)})
		if _, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s2"}); err != nil {
			t.Fatal(err)
		}
		disarm := ffs.Fail(faultfs.Rule{Ops: faultfs.Write | faultfs.Fsync | faultfs.Allocate, Prefix: "store/"})
		s2 := waitSnapshotState(t, in.Client, "d", "s2")
		qemuIO(t, uri, "write -P 0x55 12M 1M", "read -P 0x55 12M 1M") // guest I/O goes on
		_, cerr := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s3"})
		info, _ := in.Client.Info(ctx)
		disarm()
		if s2.State != api.SnapshotFailed || !strings.Contains(s2.Reason, "input/output error") {
			t.Fatalf("s2 with the store's writes failing: %s (%q), want failed with the reason", s2.State, s2.Reason)
		}
		if cerr == nil || !strings.Contains(cerr.Error(), "restart") {
			t.Fatalf("create with the store broken: %v, want a refusal saying to restart", cerr)
		}
		if !strings.Contains(info.Store.Broken, "could not write to its disk") {
			t.Fatalf("info with the store broken: %+v", info.Store)
		}
		sameImage(t, s1, atS1) // ready snapshots still read right

		// A restart, with the disk healthy again.
		if err := in.Stop(); err != nil {
			t.Logf("stop with the store broken: %v", err)
		}
		in = daemontest.Start(outer, &cfg)
		if s, err := in.Client.Snapshot(ctx, "d", "s2"); err != nil || s.State != api.SnapshotFailed {
			t.Fatalf("s2 after the restart: %+v, %v, want failed", s, err)
		}
		sameImage(t, nbdURI(in, "d@s1"), atS1)
		sameImage(t, nbdURI(in, "d"), live)
		// s2's chunks whose content never reached the disk are damaged:
		// verify names them, and the store says it is suspect.
		task, err := in.Client.Verify(ctx, api.VerifyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		faults := verifyFaults(t, waitTask(t, in.Client, task.ID))
		for _, f := range faults {
			if !strings.Contains(f, "chunk ") {
				t.Fatalf("verify after the restart: a fault that names no chunk: %q", f)
			}
		}
		t.Logf("verify after the restart: %d damaged chunks named", len(faults))
		if h, err := in.Client.Health(ctx); err != nil || h.Status != "ok" || !strings.Contains(strings.Join(h.Warnings, "\n"), "damaged") {
			t.Fatalf("health after the restart: %+v, %v, want ok with a warning about damaged chunks", h, err)
		}
		// A new snapshot of the same content repairs them instead of
		// referencing them; then the whole store is sound again.
		if _, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s4"}); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, in.Client, "d", "s4")
		sameImage(t, nbdURI(in, "d@s4"), live)
		verifyClean(t, in)
		if h, _ := in.Client.Health(ctx); len(h.Warnings) != 0 {
			t.Fatalf("warnings after a clean verify: %q", h.Warnings)
		}
	})
}

// part is content at an offset of an image.
type part struct {
	off     int64
	content string // a file's path
}

// fillPattern is a file of n bytes of b.
func fillPattern(b byte, n int) string {
	return string(append([]byte{0}, b)) + strconv.Itoa(n) // resolved by image
}

// image writes a file of size bytes, zeros but for the parts (later ones
// over earlier ones; a part may be an earlier image), and returns its path.
func image(t *testing.T, size int64, parts ...part) string {
	t.Helper()
	buf := make([]byte, size)
	for _, p := range parts {
		var b []byte
		if strings.HasPrefix(p.content, "\x00") {
			n, _ := strconv.Atoi(p.content[2:])
			b = bytes.Repeat([]byte{p.content[1]}, n)
		} else {
			var err error
			if b, err = os.ReadFile(p.content); err != nil {
				t.Fatal(err)
			}
		}
		copy(buf[p.off:], b)
	}
	f, err := os.CreateTemp(t.TempDir(), "image")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// sameImage compares an export with a file (qemu-img compare).
func sameImage(t *testing.T, uri, file string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", file, uri).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare %s with its oracle: %v\n%s", uri, err, out)
	}
}

// waitSnapshotState waits until a snapshot leaves copying.
func waitSnapshotState(t *testing.T, c *api.Client, disk, name string) api.Snapshot {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := c.Snapshot(context.Background(), disk, name)
		if err != nil {
			t.Fatal(err)
		}
		if s.State != api.SnapshotCopying || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func verifyFaults(t *testing.T, task api.Task) []string {
	t.Helper()
	raw, _ := json.Marshal(task.Result)
	var res api.VerifyResult
	if err := json.Unmarshal(raw, &res); err != nil || task.State != api.TaskSucceeded {
		t.Fatalf("verify task %s: %v (%+v)", task.ID, err, task)
	}
	return res.Faults
}

func verifyClean(t *testing.T, in *daemontest.Instance) {
	t.Helper()
	task, err := in.Client.Verify(context.Background(), api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if faults := verifyFaults(t, waitTask(t, in.Client, task.ID)); len(faults) > 0 {
		t.Fatalf("verify found %d faults: %q", len(faults), faults[:min(5, len(faults))])
	}
}
