package daemon_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
)

// TestCapacityHistory: samples of a disk's chain (with each snapshot's
// unique bytes), of a machine (the sum of its disks) and of the store,
// taken on the interval's boundaries of the clock, selected by since and
// until, and pruned past capacity_history.
func TestCapacityHistory(t *testing.T) {
	need(t, "qemu-io")
	r := newPolicyRig(t, "2031-01-06T09:30:00Z", func(c *daemon.Config) {
		c.CapacityInterval = daemon.Duration(time.Hour)
		c.CapacityHistory = daemon.Duration(3 * time.Hour)
	})
	r.loop = "capacity"
	ctx := context.Background()
	createDisk(t, r.in, "a", "4M")
	createDisk(t, r.in, "b", "4M")
	qemuIO(t, nbdURI(r.in, "a"), "write -P 0x11 0 1M")
	qemuIO(t, nbdURI(r.in, "b"), "write -P 0x22 0 512k")
	for _, disk := range []string{"a", "b"} {
		if _, err := r.c.CreateSnapshot(ctx, disk, api.CreateSnapshotRequest{Name: "s1"}); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, r.c, disk, "s1")
	}
	if _, err := r.c.CreateMachine(ctx, api.CreateMachineRequest{Name: "vm", Disks: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-06T09:59:59Z") // no boundary yet: no sample beyond the start's
	r.advanceTo("2031-01-06T10:00:00Z")
	r.advanceTo("2031-01-06T11:00:00Z")

	a, err := r.c.CapacityHistory(ctx, api.TargetDisk, "a", api.Time{}, api.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Samples) != 2 || !a.Samples[0].Time.Equal(at("2031-01-06T10:00:00Z")) || a.Interval != 3600 {
		t.Fatalf("disk a's samples: %+v", a)
	}
	s := a.Samples[1]
	if s.Snapshots != 1 || s.LogicalBytes != 1<<20 || s.UniqueBytes != 64<<10 || s.StoredBytes == 0 || s.StoredBytes > s.UniqueBytes ||
		len(s.PerSnapshot) != 1 || s.PerSnapshot[0].Name != "s1" || s.PerSnapshot[0].UniqueBytes != 64<<10 {
		t.Fatalf("disk a's sample (1 MiB of one repeated 64 KiB block): %+v", s)
	}
	m, err := r.c.CapacityHistory(ctx, api.TargetMachine, "vm", api.Time{}, api.Time{})
	if err != nil || len(m.Samples) != 2 || m.Samples[1].Snapshots != 2 || m.Samples[1].LogicalBytes != 1<<20+512<<10 {
		t.Fatalf("machine vm's samples: %+v %v", m, err)
	}
	st, err := r.c.CapacityHistory(ctx, "store", "", api.Time{}, api.Time{})
	if err != nil || len(st.Samples) != 3 || st.Samples[2].UniqueBytes != 128<<10 || st.Samples[2].Snapshots != 2 {
		t.Fatalf("the store's samples (09:30, 10:00, 11:00): %+v %v", st, err)
	}
	only, _ := r.c.CapacityHistory(ctx, "store", "", api.At(at("2031-01-06T10:00:00Z")), api.At(at("2031-01-06T10:30:00Z")))
	if len(only.Samples) != 1 || !only.Samples[0].Time.Equal(at("2031-01-06T10:00:00Z")) {
		t.Fatalf("since 10:00 until 10:30: %+v", only.Samples)
	}
	var ae *api.Error
	if _, err := r.c.CapacityHistory(ctx, api.TargetDisk, "nope", api.Time{}, api.Time{}); !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
		t.Fatalf("history of a missing disk: %v", err)
	}

	// A day on: the samples older than capacity_history (3h) are pruned.
	r.advanceTo("2031-01-07T11:00:00Z")
	st, _ = r.c.CapacityHistory(ctx, "store", "", api.Time{}, api.Time{})
	if len(st.Samples) != 1 || !st.Samples[0].Time.Equal(at("2031-01-07T11:00:00Z")) {
		t.Fatalf("after a day with a history of 3h: %+v", st.Samples)
	}
}
