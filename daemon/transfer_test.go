package daemon_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// Transfers' lifecycle: what cairnd cleans up when the client finishes
// with an error, stops reporting, is cancelled, or cairnd restarts. The
// client here is the API itself (the conversions are cmd/cairn's tests).

func importOne(t *testing.T, c *api.Client, name string) api.Transfer {
	t.Helper()
	tr, err := c.Import(context.Background(), api.ImportRequest{Source: "test", Disks: []api.ImportDisk{{Name: name, Size: "16M"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Disks) != 1 || tr.Disks[0].Export != name || tr.Task.Kind != api.TaskImport || tr.Task.State != api.TaskRunning || tr.NBDSocket == "" {
		t.Fatalf("import answer %+v", tr)
	}
	return tr
}

func TestTransferCleanup(t *testing.T) {
	ctx := context.Background()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.TransferLease = 500 * time.Millisecond
	in := daemontest.Start(t, &cfg)
	c := in.Client

	// The client reports, then finishes with an error: the disk goes.
	tr := importOne(t, c, "a")
	if _, err := c.ReportProgress(ctx, tr.Task.ID, api.TransferProgress{DoneBytes: 1 << 20, TotalBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	// The task's goroutine takes the report: wait for it to land.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		task, _ := c.Task(ctx, tr.Task.ID)
		if task.DoneBytes == 1<<20 && task.TotalBytes == 16<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress not recorded: %+v", task)
		}
	}
	task, err := c.FinishTransfer(ctx, tr.Task.ID, "qemu-img convert: Could not read image")
	if err != nil || task.State != api.TaskFailed || !strings.Contains(task.Error, "Could not read image") {
		t.Fatalf("finish with an error: %+v, %v", task, err)
	}
	if _, err := c.Disk(ctx, "a"); err == nil {
		t.Fatal("a failed import left its disk")
	}

	// The client stops reporting: the lease runs out and the disk goes.
	tr = importOne(t, c, "b")
	task = waitTask(t, c, tr.Task.ID)
	if task.State != api.TaskFailed || !strings.Contains(task.Error, "sent no progress") {
		t.Fatalf("lease: %+v", task)
	}
	if _, err := c.Disk(ctx, "b"); err == nil {
		t.Fatal("an import whose client vanished left its disk")
	}
	if _, err := c.ReportProgress(ctx, tr.Task.ID, api.TransferProgress{}); err == nil || !strings.Contains(err.Error(), "has already ended") {
		t.Fatalf("report after the end: %v", err)
	}

	// Cancelled: an export's temporary snapshot goes.
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm", Size: "16M"}); err != nil {
		t.Fatal(err)
	}
	ex, err := c.ExportDisk(ctx, "vm", api.ExportRequest{})
	if err != nil || !ex.Disks[0].Temporary || ex.Disks[0].Export != "vm@"+ex.Task.ID {
		t.Fatalf("export answer %+v, %v", ex, err)
	}
	if task, err := c.CancelTask(ctx, ex.Task.ID); err != nil || task.State != api.TaskCancelled {
		t.Fatalf("cancel: %+v, %v", task, err)
	}
	if snaps, _ := c.Snapshots(ctx, "vm"); len(snaps) != 0 {
		t.Fatalf("a cancelled export left its snapshot: %+v", snaps)
	}

	// Success with a machine: the disks stay and the machine is made.
	tr, err = c.Import(ctx, api.ImportRequest{Disks: []api.ImportDisk{{Name: "m-root", Size: "16M"}, {Name: "m-data", Size: "8M"}},
		Machine: &api.ImportMachine{Name: "m", Config: &api.Config{MediaType: "application/xml", Data: "<d>old-root old-data</d>"},
			RenameDisks: map[string]string{"old-root": "m-root", "old-data": "m-data"}}})
	if err != nil {
		t.Fatal(err)
	}
	if task, err := c.FinishTransfer(ctx, tr.Task.ID, ""); err != nil || task.State != api.TaskSucceeded {
		t.Fatalf("finish: %+v, %v", task, err)
	}
	if m, err := c.Machine(ctx, "m"); err != nil || strings.Join(m.Disks, ",") != "m-root,m-data" || m.Config.Data != "<d>m-root m-data</d>" {
		t.Fatalf("imported machine %+v, %v", m, err)
	}
}

func TestTransferRefusals(t *testing.T) {
	ctx := context.Background()
	in := daemontest.Start(t, nil)
	c := in.Client
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm", Size: "16M"}); err != nil {
		t.Fatal(err)
	}
	snap, err := c.CreateSnapshot(ctx, "vm", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"progress of a copy-out", func() error {
			_, err := c.ReportProgress(ctx, snap.Task, api.TransferProgress{})
			return err
		}, "only transfers"},
		{"unknown task", func() error { _, err := c.FinishTransfer(ctx, "export-999", ""); return err }, "not found"},
		{"import over a disk", func() error {
			_, err := c.Import(ctx, api.ImportRequest{Disks: []api.ImportDisk{{Name: "vm", Size: "16M"}}})
			return err
		}, `disk "vm" already exists`},
		{"import of nothing", func() error { _, err := c.Import(ctx, api.ImportRequest{}); return err }, "at least one disk"},
		{"import beyond the free space", func() error {
			_, err := c.Import(ctx, api.ImportRequest{Disks: []api.ImportDisk{{Name: "big", Size: "16T", DataBytes: 1 << 60}}})
			return err
		}, "free space there first"},
		{"rename to a disk not imported", func() error {
			_, err := c.Import(ctx, api.ImportRequest{Disks: []api.ImportDisk{{Name: "x", Size: "1M"}},
				Machine: &api.ImportMachine{Name: "mx", RenameDisks: map[string]string{"a": "elsewhere"}}})
			return err
		}, "rename_disks"},
		{"export of a missing snapshot", func() error {
			_, err := c.ExportDisk(ctx, "vm", api.ExportRequest{Snapshot: "nope"})
			return err
		}, `no snapshot "nope"`},
		{"incremental from a later snapshot", func() error {
			_, err := c.ExportDisk(ctx, "vm", api.ExportRequest{Snapshot: "s1", ChangesSince: "s1"})
			return err
		}, "not older"},
		{"filesystem consistency without an agent", func() error {
			_, err := c.ExportDisk(ctx, "vm", api.ExportRequest{Consistency: api.ConsistencyFilesystem})
			return err
		}, "not in a machine with a guest agent"},
		{"export of a missing image", func() error { _, err := c.ExportImage(ctx, "nope"); return err }, `image "nope" not found`},
	} {
		err := tc.call()
		var apiErr *api.Error
		if err == nil || !errors.As(err, &apiErr) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an API error saying %q", tc.name, err, tc.want)
		}
	}
	if disks, _ := c.Disks(ctx); len(disks) != 1 {
		t.Fatalf("refused imports made disks: %+v", disks)
	}
}

func TestTransfersInterruptedByARestart(t *testing.T) {
	ctx := context.Background()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	in := daemontest.Start(t, &cfg)
	c := in.Client
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm", Size: "16M"}); err != nil {
		t.Fatal(err)
	}
	ex, err := c.ExportDisk(ctx, "vm", api.ExportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	im := importOne(t, c, "half")
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}

	in = daemontest.Start(t, &cfg)
	c = in.Client
	for _, id := range []string{ex.Task.ID, im.Task.ID} {
		task, err := c.Task(ctx, id)
		if err != nil || task.State != api.TaskFailed || !strings.Contains(task.Error, "interrupted by a restart") || !strings.Contains(task.Error, "was removed") {
			t.Errorf("task %s after a restart: %+v, %v", id, task, err)
		}
	}
	if snaps, _ := c.Snapshots(ctx, "vm"); len(snaps) != 0 {
		t.Errorf("an interrupted export left its snapshot: %+v", snaps)
	}
	if _, err := c.Disk(ctx, "half"); err == nil {
		t.Error("an interrupted import left its disk")
	}
}

func TestImageNotDeletedWhileExported(t *testing.T) {
	ctx := context.Background()
	in := daemontest.Start(t, nil)
	c := in.Client
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm", Size: "16M"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, "vm", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	task, err := c.CreateImage(ctx, api.CreateImageRequest{Name: "img", Disk: "vm", Snapshot: "s1"})
	if err != nil || waitTask(t, c, task.ID).State != api.TaskSucceeded {
		t.Fatalf("image: %v", err)
	}
	tr, err := c.ExportImage(ctx, "img")
	if err != nil || len(tr.Disks) != 1 || tr.Disks[0].Export != "image:img/vm" || tr.Disks[0].Size != 16<<20 {
		t.Fatalf("image export %+v, %v", tr, err)
	}
	if _, err := c.DeleteImage(ctx, "img"); err == nil || !strings.Contains(err.Error(), "is being read") {
		t.Fatalf("delete during an export: %v", err)
	}
	if _, err := c.FinishTransfer(ctx, tr.Task.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteImage(ctx, "img"); err != nil {
		t.Fatalf("delete after the export: %v", err)
	}
}
