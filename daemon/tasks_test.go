package daemon_test

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/store"
)

// randomDisk creates a disk of size bytes of random data (written with
// nbdcopy, so its copy-out takes a while).
func randomDisk(t *testing.T, in *daemontest.Instance, name string, size int64) {
	t.Helper()
	need(t, "nbdcopy")
	if _, err := in.Client.CreateDisk(context.Background(), api.CreateDiskRequest{Name: name, Size: api.Size(api.FormatSize(size))}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "random")
	buf := make([]byte, size)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", src, nbdURI(in, name)).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v: %s", err, out)
	}
}

// TestTasks: a snapshot's copy-out is a task whose progress only grows,
// in bytes, to succeeded; tasks are filtered; a verify is cancelled, a
// rollback and a copy-out are refused with why; unknown ids are 404.
func TestTasks(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	c := in.Client
	randomDisk(t, in, "big", 96<<20)
	snap, err := c.CreateSnapshot(ctx, "big", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(snap.Task, "copy-out-") {
		t.Fatalf("snapshot create answered no copy-out task: %+v", snap)
	}
	var last float64
	var samples int
	var tk api.Task
	for {
		if tk, err = c.Task(ctx, snap.Task); err != nil {
			t.Fatal(err)
		}
		if tk.Progress < last {
			t.Fatalf("progress went back from %.1f%% to %.1f%%", last, tk.Progress)
		}
		last = tk.Progress
		samples++
		if tk.Ended() {
			break
		}
		if tk.TotalBytes == 0 && tk.Progress > 0 {
			t.Fatalf("a copy-out counts no bytes: %+v", tk)
		}
		time.Sleep(5 * time.Millisecond) // sampling progress as a client would
	}
	if tk.State != api.TaskSucceeded || tk.Progress != 100 || tk.Kind != api.TaskCopyOut || tk.Disk != "big" || tk.Target != "s1" || tk.Finished == nil {
		t.Fatalf("copy-out task at the end: %+v (after %d samples)", tk, samples)
	}
	_, err = c.CancelTask(ctx, snap.Task)
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, "already ended")

	// Filters.
	if got, err := c.Tasks(ctx, api.TaskFilter{Kind: api.TaskCopyOut, Disk: "big"}); err != nil || len(got) != 1 || got[0].ID != snap.Task {
		t.Fatalf("tasks of kind copy-out of disk big: %+v, %v", got, err)
	}
	if got, _ := c.Tasks(ctx, api.TaskFilter{State: api.TaskRunning}); len(got) != 0 {
		t.Fatalf("running tasks after all ended: %+v", got)
	}
	_, err = c.Task(ctx, "verify-999")
	wantAPIError(t, err, 404, api.CodeNotFound, `"verify-999"`)

	// A verify can be cancelled; a rollback cannot.
	vt, err := c.Verify(ctx, api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.CancelTask(ctx, vt.ID); err == nil {
		if got.State != api.TaskCancelled && got.State != api.TaskSucceeded {
			t.Fatalf("cancelled verify: %+v", got)
		}
	} else if !isCode(err, api.CodeFailedPrecondition) { // it may have ended first
		t.Fatal(err)
	}
	qemuIO(t, nbdURI(in, "big"), "write -P 7 0 32M")
	rb, err := c.Rollback(ctx, "big", "s1", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CancelTask(ctx, rb.ID); err == nil {
		t.Fatal("a rollback was cancelled")
	} else if !strings.Contains(err.Error(), "already ended") {
		wantAPIError(t, err, 409, api.CodeFailedPrecondition, "half-way")
	}
	if rb = waitTask(t, c, rb.ID); rb.State != api.TaskSucceeded || rb.TotalBytes == 0 {
		t.Fatalf("rollback task: %+v", rb)
	}
}

// TestTasksAcrossRestarts: a copy-out running when cairnd stops resumes
// under its id at the next start; an interrupted rollback ends failed
// saying what to do; ids are never reused.
func TestTasksAcrossRestarts(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	randomDisk(t, in, "big", 96<<20)
	snap, err := in.Client.CreateSnapshot(ctx, "big", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := in.Config
	if err := in.Stop(); err != nil { // while it copies out
		t.Fatal(err)
	}
	// A rollback a kill interrupted, as its record says.
	st, err := store.Open(store.Options{Dir: filepath.Join(cfg.DataDir, "store")})
	if err != nil {
		t.Fatal(err)
	}
	var stopped api.Task
	if err := st.GetRecord(store.TaskKey(snap.Task), &stopped); err != nil || stopped.State != api.TaskRunning {
		t.Fatalf("the copy-out's record after the stop: %+v, %v (want running: the test needs a copy-out under way)", stopped, err)
	}
	now := api.At(time.Now())
	rec := api.Task{ID: "rollback-9999", Kind: api.TaskRollback, Disk: "big", Target: "s1", State: api.TaskRunning, Created: now, Started: &now}
	if err := st.PutRecord(store.TaskKey(rec.ID), rec); err != nil {
		t.Fatal(err)
	}
	st.Close()

	in = daemontest.Start(t, &cfg)
	tk := waitTask(t, in.Client, snap.Task)
	if tk.State != api.TaskSucceeded || tk.ID != snap.Task {
		t.Fatalf("the copy-out task after a restart: %+v", tk)
	}
	rb, err := in.Client.Task(ctx, "rollback-9999")
	if err != nil || rb.State != api.TaskFailed || !strings.Contains(rb.Error, "interrupted by a restart") || !strings.Contains(rb.Error, "run the rollback again") {
		t.Fatalf("an interrupted rollback after a restart: %+v, %v", rb, err)
	}
	vt, err := in.Client.Verify(ctx, api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := func(id string) int {
		v, _ := strconv.Atoi(id[strings.LastIndexByte(id, '-')+1:])
		return v
	}
	if n(vt.ID) <= n(snap.Task) {
		t.Fatalf("task ids went back after a restart: %s after %s", vt.ID, snap.Task)
	}
}
