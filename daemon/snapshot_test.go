package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	if strings.Contains(uri, "@") {
		args = append(args, "-r") // snapshot exports are read-only
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "Pattern verification") {
		t.Fatalf("qemu-io %v %s: %v\n%s", cmds, uri, err, out)
	}
	return string(out)
}

func waitSnapshot(t *testing.T, c *api.Client, disk, snap string) api.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		s, err := c.Snapshot(ctx, disk, snap)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == api.SnapshotReady {
			return s
		}
		if s.State == api.SnapshotFailed {
			t.Fatalf("snapshot %s failed: %s", snap, s.Reason)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("snapshot %s still %s (%.0f%%)", snap, s.State, s.Progress)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func waitTask(t *testing.T, c *api.Client, id string) api.Task {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		tk, err := c.Task(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if tk.State != api.TaskRunning && tk.State != api.TaskQueued {
			return tk
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("task %s did not finish", id)
	return api.Task{}
}

// TestSnapshotsThroughNBD: snapshots taken through the API read back
// through their own NBD exports with qemu-io (an independent client), the
// changed blocks show through nbdinfo's and qemu-img's view of
// qemu:dirty-bitmap and the changes API, and rollback restores the disk.
func TestSnapshotsThroughNBD(t *testing.T) {
	need(t, "qemu-io")
	need(t, "nbdinfo")
	need(t, "qemu-img")
	ctx := context.Background()
	in := daemontest.Start(t, nil)
	c := in.Client
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm1", Size: "8M"}); err != nil {
		t.Fatal(err)
	}
	live := nbdURI(in, "vm1")
	qemuIO(t, live, "write -P 0x11 0 1M", "write -P 0x22 4M 64k", "flush")
	s1, err := c.CreateSnapshot(ctx, "vm1", api.CreateSnapshotRequest{Name: "before-upgrade", Description: "first"})
	if err != nil {
		t.Fatal(err)
	}
	if s1.State != api.SnapshotCopying && s1.State != api.SnapshotReady || s1.Export != "vm1@before-upgrade" {
		t.Fatalf("new snapshot: %+v", s1)
	}
	qemuIO(t, live, "write -P 0x33 128k 64k", "write -z 4M 64k", "write -P 0x44 7M 4k")
	if _, err := c.CreateSnapshot(ctx, "vm1", api.CreateSnapshotRequest{Name: "after"}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, c, "vm1", "before-upgrade")
	got := waitSnapshot(t, c, "vm1", "after")
	if got.WrittenBytes != 3*64<<10 {
		t.Errorf("snapshot 'after' wrote %d bytes in its epoch, want 3 blocks", got.WrittenBytes)
	}

	qemuIO(t, nbdURI(in, "vm1@before-upgrade"), "read -P 0x11 0 1M", "read -P 0x22 4M 64k", "read -P 0 7M 4k")
	qemuIO(t, nbdURI(in, "vm1@after"), "read -P 0x11 0 128k", "read -P 0x33 128k 64k", "read -P 0 4M 64k", "read -P 0x44 7M 4k")
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", nbdURI(in, "vm1@after")).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "failed") {
		t.Fatalf("writing to a snapshot export succeeded: %s", out)
	}

	// Changed blocks: through nbdinfo, qemu-img and the API.
	want := [][2]int64{{128 << 10, 64 << 10}, {4 << 20, 64 << 10}, {7 << 20, 64 << 10}}
	outb, err := exec.Command("nbdinfo", "--json", "--map=qemu:dirty-bitmap:before-upgrade", nbdURI(in, "vm1@after")).Output()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v", err)
	}
	var m []struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	if err := json.Unmarshal(outb, &m); err != nil {
		t.Fatalf("nbdinfo output %s: %v", outb, err)
	}
	var dirty [][2]int64
	for _, e := range m {
		if e.Type&1 != 0 {
			dirty = append(dirty, [2]int64{e.Offset, e.Length})
		}
	}
	if fmt.Sprint(dirty) != fmt.Sprint(want) {
		t.Errorf("nbdinfo dirty extents %v, want %v", dirty, want)
	}
	ch, err := c.Changes(ctx, "vm1", "before-upgrade", "after")
	if err != nil {
		t.Fatal(err)
	}
	var apiExt [][2]int64
	for _, e := range ch.Extents {
		apiExt = append(apiExt, [2]int64{e.Offset, e.Length})
	}
	if fmt.Sprint(apiExt) != fmt.Sprint(want) || ch.ChangedBytes != 3*64<<10 {
		t.Errorf("changes API %v (%d bytes), want %v", apiExt, ch.ChangedBytes, want)
	}
	// qemu-img with x-dirty-bitmap reports dirty ranges as unallocated ("data": false).
	opts := "driver=nbd,server.type=unix,server.path=" + in.Info().NBDSocket + ",export=vm1@after,x-dirty-bitmap=qemu:dirty-bitmap:before-upgrade"
	outb, err = exec.Command("qemu-img", "map", "--output=json", "--image-opts", opts).Output()
	if err != nil {
		t.Fatalf("qemu-img map: %v", err)
	}
	var qm []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	json.Unmarshal(outb, &qm)
	var qdirty [][2]int64
	for _, e := range qm {
		if !e.Data {
			qdirty = append(qdirty, [2]int64{e.Start, e.Length})
		}
	}
	if fmt.Sprint(qdirty) != fmt.Sprint(want) {
		t.Errorf("qemu-img x-dirty-bitmap map %v, want %v\n%s", qdirty, want, outb)
	}
	// The live export carries bitmaps for both snapshots.
	outb, _ = exec.Command("nbdinfo", "--list", "--json", "nbd+unix://?socket="+in.Info().NBDSocket).Output()
	if !strings.Contains(string(outb), "vm1@after") {
		t.Errorf("nbdinfo --list does not show the snapshot export: %s", outb)
	}

	// Rollback while a writer is connected is refused; then done.
	h := holdExport(t, in, "vm1")
	if _, err := c.Rollback(ctx, "vm1", "before-upgrade", false); !isCode(err, api.CodeInUse) {
		t.Fatalf("rollback with a client connected: %v, want in_use", err)
	}
	tk, err := c.Rollback(ctx, "vm1", "before-upgrade", true)
	if err != nil {
		t.Fatal(err)
	}
	h.stdin.Write([]byte("\n"))
	if line := h.line(); line != "disconnected" {
		t.Errorf("the writer was not disconnected by a forced rollback: %q", line)
	}
	if tk = waitTask(t, c, tk.ID); tk.State != api.TaskSucceeded {
		t.Fatalf("rollback task: %+v", tk)
	}
	out2, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", live, nbdURI(in, "vm1@before-upgrade")).CombinedOutput()
	if err != nil {
		t.Fatalf("after rollback the disk differs from the snapshot: %v %s", err, out2)
	}
	qemuIO(t, nbdURI(in, "vm1@after"), "read -P 0x33 128k 64k", "read -P 0x44 7M 4k") // later snapshot intact

	// Delete with a reader connected: refused, then forced.
	_ = holdExport(t, in, "vm1@after")
	if _, err := c.DeleteSnapshot(ctx, "vm1", "after", false); !isCode(err, api.CodeInUse) {
		t.Fatalf("delete with a reader: %v, want in_use", err)
	}
	if _, err := c.DeleteSnapshot(ctx, "vm1", "after", true); err != nil {
		t.Fatal(err)
	}
	vt, err := c.Verify(ctx, api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	vt = waitTask(t, c, vt.ID)
	raw, _ := json.Marshal(vt.Result)
	var res api.VerifyResult
	json.Unmarshal(raw, &res)
	if vt.State != api.TaskSucceeded || len(res.Faults) != 0 || res.ChunksChecked == 0 {
		t.Fatalf("verify: %+v %+v", vt, res)
	}
}

func isCode(err error, code string) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Code == code
}

// TestSnapshotValidation: names, quota, unknown disks and snapshots.
func TestSnapshotValidation(t *testing.T) {
	ctx := context.Background()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.SnapshotQuota = 3
	in := daemontest.Start(t, &cfg)
	c := in.Client
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "d", Size: "1M"}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", 129)
	for _, tc := range []struct {
		name, code string
	}{
		{"a", api.CodeInvalidArgument},
		{long, api.CodeInvalidArgument},
		{"auto-1", api.CodeInvalidArgument},
		{"AUTOsnap", api.CodeInvalidArgument},
		{"http://x", api.CodeInvalidArgument},
		{"has space", api.CodeInvalidArgument},
		{"-dash", api.CodeInvalidArgument},
		{"a/b", api.CodeInvalidArgument},
		{"ok", ""},
		{"快照-1", api.CodeInvalidArgument},      // ASCII only: no look-alikes (docs/security.md)
		{"sn\u0430p", api.CodeInvalidArgument}, // a Cyrillic а
		{"snap-1", ""},
		{"ok", api.CodeAlreadyExists},
		{"v1.2:3+4_5", ""},
		{"fourth", api.CodeQuotaExceeded},
	} {
		_, err := c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: tc.name})
		if tc.code == "" && err != nil || tc.code != "" && !isCode(err, tc.code) {
			t.Errorf("create %q: %v, want %q", tc.name, err, tc.code)
		}
		if tc.code == api.CodeInvalidArgument && err != nil && !strings.Contains(err.Error(), "2 to 128") {
			t.Errorf("create %q: message %q does not state the rule", tc.name, err)
		}
	}
	if _, err := c.CreateSnapshot(ctx, "nope", api.CreateSnapshotRequest{Name: "ok"}); !isCode(err, api.CodeNotFound) {
		t.Errorf("snapshot of a missing disk: %v", err)
	}
	if _, err := c.Snapshot(ctx, "d", "nope"); !isCode(err, api.CodeNotFound) {
		t.Errorf("missing snapshot: %v", err)
	}
	if _, err := c.Changes(ctx, "d", "", ""); !isCode(err, api.CodeInvalidArgument) {
		t.Errorf("changes without from: %v", err)
	}
	if _, err := c.Rollback(ctx, "d", "nope", false); !isCode(err, api.CodeNotFound) {
		t.Errorf("rollback to a missing snapshot: %v", err)
	}
	list, err := c.Snapshots(ctx, "d")
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %v %+v", err, list)
	}
	if _, err := c.DeleteSnapshot(ctx, "d", "ok", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "fourth"}); err != nil {
		t.Errorf("create after freeing room: %v", err)
	}
}

func mustSnapshot(t *testing.T, c *api.Client, disk, name string) string {
	t.Helper()
	if _, err := c.CreateSnapshot(context.Background(), disk, api.CreateSnapshotRequest{Name: name}); err != nil {
		t.Fatalf("create snapshot %s@%s: %v", disk, name, err)
	}
	return name
}
