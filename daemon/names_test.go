package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// New snapshot names are ASCII, so look-alikes cannot both exist; a
// snapshot named under the older rule (any Unicode letter) still loads
// after a restart and can be read, rolled back to and deleted by its name.
func TestSnapshotNamesASCII(t *testing.T) {
	dir, err := os.MkdirTemp("", "cairn-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := Config{DataDir: filepath.Join(dir, "data"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm", Size: "1M"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateSnapshot(ctx, "vm", api.CreateSnapshotRequest{Name: "snap"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sn\u0430p", "caf\u00e9", "\u0441nap"} {
		if _, err := d.CreateSnapshot(ctx, "vm", api.CreateSnapshotRequest{Name: name}); !errBlock(err, block.ErrInvalid) {
			t.Errorf("snapshot name %q: %v, want invalid_argument", name, err)
		}
	}
	// One made by an older cairnd, straight through the volume.
	const legacy = "caf\u00e9-\u0441nap"
	if _, err := d.disks["vm"].vol.CreateSnapshot(ctx, cow.SnapshotMeta{Name: legacy, Kind: api.SnapshotManual}); err != nil {
		t.Fatal(err)
	}
	d.Shutdown(ctx)
	if d, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(ctx)
	if s, err := d.GetSnapshot(ctx, "vm", legacy); err != nil || s.Name != legacy {
		t.Fatalf("legacy-named snapshot after a restart: %+v %v", s, err)
	}
	exp, release, err := d.openExport(exportName{"vm", legacy}, nbdClient)
	if err != nil {
		t.Fatalf("open export vm@%s: %v", legacy, err)
	}
	release()
	if exp.Name != "vm@"+legacy {
		t.Fatalf("export %q", exp.Name)
	}
	if _, err := d.DeleteSnapshot(ctx, "vm", legacy, false); err != nil {
		t.Fatalf("delete legacy-named snapshot: %v", err)
	}
}

func errBlock(err, kind error) bool {
	var be *block.Error
	return err != nil && errors.As(err, &be) && be.Kind == kind
}
