package daemon_test

import (
	"context"
	"net/http"
	"os"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// TestDeleteDiskWithSnapshots: a disk that has snapshots is not deleted
// unless the caller says with_snapshots=true; the refusal says how many
// and names the parameter, and leaves disk and snapshots as they were,
// also for a disk whose live image did not open. with_snapshots=true
// deletes them with it and gives their chunks back.
func TestDeleteDiskWithSnapshots(t *testing.T) {
	need(t, "qemu-io")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	c := in.Client
	createDisk(t, in, "d", "1M")
	broken := createDisk(t, in, "broken", "1M")
	for _, disk := range []string{"d", "broken"} {
		qemuIO(t, nbdURI(in, disk), "write -P 7 0 128k")
		for _, s := range []string{"s1", "s2"} {
			mustSnapshot(t, c, disk, s)
			waitSnapshot(t, c, disk, s)
		}
	}
	err := c.DeleteDisk(ctx, "d", api.DeleteDiskOptions{})
	wantAPIError(t, err, http.StatusConflict, api.CodeFailedPrecondition, `disk "d" has 2 snapshot(s)`, "with_snapshots=true")
	if e := err.(*api.Error); e.Field != "with_snapshots" {
		t.Errorf("refusal's field %q, want with_snapshots", e.Field)
	}
	if snaps, err := c.Snapshots(ctx, "d"); err != nil || len(snaps) != 2 {
		t.Fatalf("after the refusal: %d snapshots, %v", len(snaps), err)
	}

	// A disk in the error state has its snapshots counted from the store.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(broken.Path); err != nil {
		t.Fatal(err)
	}
	in = daemontest.Start(t, &cfg)
	c = in.Client
	err = c.DeleteDisk(ctx, "broken", api.DeleteDiskOptions{})
	wantAPIError(t, err, http.StatusConflict, api.CodeFailedPrecondition, `disk "broken" has 2 snapshot(s)`)
	if err := c.Do(ctx, http.MethodDelete, "/v1/disks/broken?with_snapshots=true", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDisk(ctx, "d", api.DeleteDiskOptions{WithSnapshots: true}); err != nil {
		t.Fatal(err)
	}
	if disks, err := c.Disks(ctx); err != nil || len(disks) != 0 {
		t.Fatalf("disks left: %+v, %v", disks, err)
	}
	st, err := c.StoreStats(ctx)
	if err != nil || st.Chunks != 0 || st.DataEntries+st.ZeroEntries != 0 {
		t.Errorf("store after deleting the disks with their snapshots: %+v, %v", st, err)
	}
}
