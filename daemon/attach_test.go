package daemon_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/store"
)

// Kernel attach as far as this machine lets it go: its kernel has no nbd
// driver and no modules to load, so every attach is refused, clearly. The
// attach itself, in a kernel that has nbd, is nbd/kernel's TestAttachInVM.

// noNBDHere skips when this kernel has nbd: the refusals below would not
// happen (and an attach would change the machine).
func noNBDHere(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has the nbd driver loaded")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		if _, err := os.Stat(filepath.Join("/lib/modules", strings.TrimSpace(string(b)), "modules.dep")); err == nil {
			t.Skip("this kernel has a modules tree: an attach could load nbd")
		}
	}
}

func TestAttachRequestErrors(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	createDisk(t, in, "d1", "1M")
	for _, c := range []struct {
		req   api.AttachRequest
		field string
	}{
		{api.AttachRequest{}, "export"},
		{api.AttachRequest{Export: "d1@"}, "export"},
		{api.AttachRequest{Export: "bad/name"}, "export"},
		{api.AttachRequest{Export: "d1", Device: "/dev/sda"}, "device"},
		{api.AttachRequest{Export: "d1", Device: "/dev/nbd-1"}, "device"},
		{api.AttachRequest{Export: "d1", Connections: 17}, "connections"},
		{api.AttachRequest{Export: "d1", Connections: -1}, "connections"},
		{api.AttachRequest{Export: "d1", ReconnectTimeout: -5}, "reconnect_timeout"},
		{api.AttachRequest{Export: "d1", ReconnectTimeout: 86401}, "reconnect_timeout"},
	} {
		_, err := in.Client.Attach(ctx, c.req)
		var e *api.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Field != c.field {
			t.Errorf("attach %+v: %v, want 400 about %s", c.req, err, c.field)
		}
	}
	// An export that does not exist is named before the kernel is asked.
	_, err := in.Client.Attach(ctx, api.AttachRequest{Export: "d1@nosuch"})
	wantAPIError(t, err, 404, api.CodeNotFound, "d1@nosuch")
	_, err = in.Client.Attach(ctx, api.AttachRequest{Export: "nosuch"})
	wantAPIError(t, err, 404, api.CodeNotFound, "nosuch")

	_, err = in.Client.Attachment(ctx, "/dev/nbd9")
	wantAPIError(t, err, 404, api.CodeNotFound, "/dev/nbd9 is not attached")
	_, err = in.Client.Attachment(ctx, "sda")
	wantAPIError(t, err, 400, api.CodeInvalidArgument, "not an nbd device")
	err = in.Client.Detach(ctx, "nbd9", api.DetachOptions{})
	wantAPIError(t, err, 404, api.CodeNotFound, "cairn disk attachments")
}

// TestAttachWithoutNBD: no driver and no module to load is a refusal that
// says what to install, and leaves nothing behind.
func TestAttachWithoutNBD(t *testing.T) {
	noNBDHere(t)
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	createDisk(t, in, "d1", "1M")
	_, err := in.Client.Attach(ctx, api.AttachRequest{Export: "d1"})
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, "kernel attach", "nbd kernel module is not available", "modules")
	if all, err := in.Client.Attachments(ctx); err != nil || len(all) != 0 {
		t.Fatalf("attachments after a refused attach: %+v, %v", all, err)
	}
	// Nothing holds the disk.
	if err := in.Client.DeleteDisk(ctx, "d1", api.DeleteDiskOptions{}); err != nil {
		t.Fatalf("delete after a refused attach: %v", err)
	}
}

// TestAttachRecordsAtStart: the records a previous cairnd left are served
// again at start-up; one that cannot be (here: no nbd driver) is listed as
// failed with the reason and holds nothing; one of an unknown version is
// refused, never read, and named so it can be detached; detaching a
// failed attachment forgets it for good.
func TestAttachRecordsAtStart(t *testing.T) {
	noNBDHere(t)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	disk := createDisk(t, in, "d1", "1M")
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Dir: filepath.Join(cfg.DataDir, "store")})
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for key, rec := range map[string]any{
		store.AttachKey(3): map[string]any{"version": 1, "index": 3, "disk": "d1", "disk_id": disk.ID, "connections": 2,
			"backend": "cairn:d1:0123456789abcdef", "reconnect_timeout": 120, "created": created},
		store.AttachKey(4): map[string]any{"version": 99, "index": 4, "something": "new"},
	} {
		if err := st.PutRecord(key, rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	in = daemontest.Start(t, &cfg)
	all, err := in.Client.Attachments(ctx)
	if err != nil || len(all) != 2 {
		t.Fatalf("attachments at start: %+v, %v", all, err)
	}
	a, unknown := all[0], all[1]
	if a.Device != "/dev/nbd3" || a.Export != "d1" || a.State != api.AttachFailed || a.Connections != 2 || a.Connected != 0 ||
		!a.Created.Equal(created) || !strings.Contains(a.Error, "nbd kernel module is not available") {
		t.Errorf("restored attachment without a driver: %+v", a)
	}
	if unknown.Device != "/dev/nbd4" || unknown.State != api.AttachFailed || !strings.Contains(unknown.Error, "version 99") ||
		!strings.Contains(unknown.Error, "detach /dev/nbd4") {
		t.Errorf("attachment of an unknown record version: %+v", unknown)
	}
	// A failed attachment holds nothing: the disk can be changed.
	if _, err := in.Client.CreateSnapshot(ctx, "d1", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	if err := in.Client.Detach(ctx, "nbd4", api.DetachOptions{}); err != nil {
		t.Fatalf("detach of an unreadable record: %v", err)
	}
	if err := in.Client.Detach(ctx, "/dev/nbd3", api.DetachOptions{}); err != nil {
		t.Fatalf("detach of a failed attachment: %v", err)
	}
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	in = daemontest.Start(t, &cfg)
	if all, err := in.Client.Attachments(ctx); err != nil || len(all) != 0 {
		t.Fatalf("attachments after detaching both and a restart: %+v, %v", all, err)
	}
}
