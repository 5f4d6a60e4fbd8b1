package daemon_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/store"
)

// allocatedBytes is what a file holds on disk.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// sameExports checks two exports hold the same bytes (qemu-img compare).
func sameExports(t *testing.T, in *daemontest.Instance, a, b string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", nbdURI(in, a), nbdURI(in, b)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

// TestClones: a clone is made from a ready snapshot, reads as it until
// written, and neither side's writes reach the other; the snapshot and
// its disk cannot be deleted while a clone (or a clone of a clone) reads
// through them; flatten cuts the link, after which they can; all of it
// survives a restart.
func TestClones(t *testing.T) {
	need(t, "qemu-io")
	need(t, "qemu-img")
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	c := in.Client
	createDisk(t, in, "src", "4M")
	qemuIO(t, nbdURI(in, "src"), "write -P 0x11 0 256k", "write -P 0x22 1M 64k")
	waitSnapshot(t, c, "src", mustSnapshot(t, c, "src", "s1"))

	// The refusals of a bad origin.
	for _, tc := range []struct {
		req          api.CreateDiskRequest
		status       int
		code, reason string
	}{
		{api.CreateDiskRequest{Name: "x", From: "src"}, 400, api.CodeInvalidArgument, "DISK@SNAPSHOT"},
		{api.CreateDiskRequest{Name: "x", From: "src@nope"}, 404, api.CodeNotFound, "nope"},
		{api.CreateDiskRequest{Name: "x", From: "gone@s1"}, 404, api.CodeNotFound, "gone"},
		{api.CreateDiskRequest{Name: "x", From: "src@s1", Size: "8M"}, 400, api.CodeInvalidArgument, "takes its size"},
		{api.CreateDiskRequest{Name: "src", From: "src@s1"}, 409, api.CodeAlreadyExists, "src"},
	} {
		_, err := c.CreateDisk(ctx, tc.req)
		wantAPIError(t, err, tc.status, tc.code, tc.reason)
	}

	_, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", Size: "1M", CopyOnRead: true})
	wantAPIError(t, err, 400, api.CodeInvalidArgument, "copy_on_read")
	cor, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "cor", From: "src@s1", CopyOnRead: true})
	if err != nil || !cor.CopyOnRead {
		t.Fatalf("a copy-on-read clone: %+v, %v", cor, err)
	}
	sameExports(t, in, "cor", "src@s1") // reads it all: every block copied
	// The source wrote 256 KiB and 64 KiB; read whole, the clone holds
	// at least those blocks (and its holes read the snapshot's zeros).
	if got := allocatedBytes(t, cor.Path); got < 320<<10 {
		t.Fatalf("a copy-on-read clone read whole holds %d bytes", got)
	}

	c1, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", From: "src@s1"})
	if err != nil {
		t.Fatal(err)
	}
	if c1.Parent != "src@s1" || c1.Depth != 1 || c1.Size != 4<<20 {
		t.Fatalf("the clone: %+v", c1)
	}
	sameExports(t, in, "c1", "src@s1")
	// Writes on either side stay there; a 4 KiB write inside a block keeps
	// the rest of that block's origin bytes.
	qemuIO(t, nbdURI(in, "c1"), "write -P 0x33 4k 4k")
	qemuIO(t, nbdURI(in, "src"), "write -P 0x44 0 64k")
	qemuIO(t, nbdURI(in, "c1"), "read -P 0x11 0 4k", "read -P 0x33 4k 4k", "read -P 0x11 8k 248k", "read -P 0x22 1M 64k")
	qemuIO(t, nbdURI(in, "src@s1"), "read -P 0x11 0 256k")
	qemuIO(t, nbdURI(in, "src"), "read -P 0x44 0 64k")

	// A clone of the clone.
	waitSnapshot(t, c, "c1", mustSnapshot(t, c, "c1", "k1"))
	c2, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "c2", From: "c1@k1"})
	if err != nil || c2.Depth != 2 || c2.Parent != "c1@k1" {
		t.Fatalf("a clone of a clone: %+v, %v", c2, err)
	}
	sameExports(t, in, "c2", "c1@k1")

	// What the clones read through cannot go.
	_, err = c.DeleteSnapshot(ctx, "src", "s1", false)
	wantAPIError(t, err, 409, api.CodeInUse, "c1, c2", "cairn disk flatten c1")
	err = c.DeleteDisk(ctx, "src", api.DeleteDiskOptions{WithSnapshots: true})
	wantAPIError(t, err, 409, api.CodeInUse, "c1")
	_, err = c.DeleteSnapshot(ctx, "c1", "k1", false)
	wantAPIError(t, err, 409, api.CodeInUse, "c2")
	_, err = c.Flatten(ctx, "src", api.FlattenRequest{})
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, "not a clone")

	// Restart: clones keep their origin.
	cfg := in.Config
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	in = daemontest.Start(t, &cfg)
	c = in.Client
	qemuIO(t, nbdURI(in, "c1"), "read -P 0x11 0 4k", "read -P 0x33 4k 4k", "read -P 0x22 1M 64k")
	sameExports(t, in, "c2", "c1@k1")

	// Flatten c1 (with hydrate) and then c2: afterwards their parents go.
	for _, name := range []string{"c1", "c2"} {
		task, err := c.Flatten(ctx, name, api.FlattenRequest{Hydrate: name == "c1", Rate: "1G"})
		if err != nil {
			t.Fatal(err)
		}
		if task = waitTask(t, c, task.ID); task.State != api.TaskSucceeded || task.Kind != api.TaskFlatten {
			t.Fatalf("flatten %s: %+v", name, task)
		}
		d, err := c.Disk(ctx, name)
		if err != nil || d.Parent != "" || d.Depth != 0 || d.Flattened == "" {
			t.Fatalf("%s after flatten: %+v, %v", name, d, err)
		}
	}
	if _, err := c.DeleteSnapshot(ctx, "c1", "k1", false); err != nil {
		t.Fatalf("delete the flattened clone's parent snapshot: %v", err)
	}
	if err := c.DeleteDisk(ctx, "cor", api.DeleteDiskOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteDisk(ctx, "src", api.DeleteDiskOptions{WithSnapshots: true}); err != nil {
		t.Fatalf("delete the flattened clones' source disk: %v", err)
	}
	qemuIO(t, nbdURI(in, "c1"), "read -P 0x11 0 4k", "read -P 0x33 4k 4k", "read -P 0x11 8k 248k", "read -P 0x22 1M 64k")
	qemuIO(t, nbdURI(in, "c2"), "read -P 0x11 0 4k", "read -P 0x33 4k 4k", "read -P 0x22 1M 64k")
	vt, err := c.Verify(ctx, api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if vt = waitTask(t, c, vt.ID); vt.State != api.TaskSucceeded {
		t.Fatalf("verify: %+v", vt)
	}
	var res api.VerifyResult
	raw, _ := json.Marshal(vt.Result)
	if err := json.Unmarshal(raw, &res); err != nil || len(res.Faults) != 0 {
		t.Fatalf("verify after flatten and deletes: %+v %v", res, err)
	}
}

// TestImages: images of a machine (with and without a machine snapshot of
// it) and of one disk's snapshot; machines provisioned from them as clones
// with the configuration's disk names rewritten; an image outlives its
// sources and a restart; its delete is refused while clones read through
// it; the quota; an image a stop interrupted is dropped at the next start.
func TestImages(t *testing.T) {
	need(t, "qemu-io")
	need(t, "qemu-img")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.ImageQuota = 3
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	c := in.Client
	for _, name := range []string{"web-root", "web-data"} {
		createDisk(t, in, name, "4M")
	}
	qemuIO(t, nbdURI(in, "web-root"), "write -P 0x11 0 64k")
	qemuIO(t, nbdURI(in, "web-data"), "write -P 0x22 64k 64k")
	domain := "<domain><name>web</name><disk><source name='web-root'/></disk><disk><source name='web-data'/></disk></domain>"
	if _, err := c.CreateMachine(ctx, api.CreateMachineRequest{Name: "web", Disks: []string{"web-root", "web-data"},
		Config: &api.Config{MediaType: "application/xml", Data: domain}}); err != nil {
		t.Fatal(err)
	}

	makeImage := func(req api.CreateImageRequest) api.Task {
		t.Helper()
		task, err := c.CreateImage(ctx, req)
		if err != nil {
			t.Fatalf("create image %s: %v", req.Name, err)
		}
		return waitTask(t, c, task.ID)
	}
	for _, tc := range []struct {
		req    api.CreateImageRequest
		reason string
	}{
		{api.CreateImageRequest{Name: "x"}, "made of a machine"},
		{api.CreateImageRequest{Name: "x", Machine: "web", Disk: "web-root"}, "not both"},
		{api.CreateImageRequest{Name: "x", Disk: "web-root"}, "made of a machine"},
		{api.CreateImageRequest{Name: "x", Machine: "web", Snapshot: "s"}, "machine_snapshot"},
		{api.CreateImageRequest{Name: "a b", Machine: "web"}, "name"},
	} {
		_, err := c.CreateImage(ctx, tc.req)
		wantAPIError(t, err, 400, api.CodeInvalidArgument, tc.reason)
	}

	// From the machine: a machine snapshot is taken for it and removed.
	task := makeImage(api.CreateImageRequest{Name: "golden", Machine: "web", Description: "web tier"})
	if task.State != api.TaskSucceeded || task.Kind != api.TaskImageCreate {
		t.Fatalf("image task: %+v", task)
	}
	im, err := c.Image(ctx, "golden")
	if err != nil || im.State != api.ImageAvailable || len(im.Disks) != 2 || im.Disks[0].Name != "web-root" || !im.Disks[0].Boot ||
		im.Disks[1].Boot || im.Disks[0].Size != 4<<20 || im.Config == nil || !strings.HasPrefix(im.Source, "web@img-golden-") {
		t.Fatalf("image golden: %+v, %v", im, err)
	}
	if ms, err := c.MachineSnapshots(ctx, "web"); err != nil || len(ms) != 0 {
		t.Fatalf("the machine snapshot taken for the image was kept: %+v, %v", ms, err)
	}
	_, err = c.CreateImage(ctx, api.CreateImageRequest{Name: "golden", Machine: "web"})
	wantAPIError(t, err, 409, api.CodeAlreadyExists, "golden")
	// From a machine snapshot and from one disk's snapshot.
	mtask, err := c.CreateMachineSnapshot(ctx, "web", api.CreateMachineSnapshotRequest{Name: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if mtask = waitTask(t, c, mtask.ID); mtask.State != api.TaskSucceeded {
		t.Fatalf("machine snapshot: %+v", mtask)
	}
	qemuIO(t, nbdURI(in, "web-root"), "write -P 0x55 0 64k") // after every image's instant
	if task := makeImage(api.CreateImageRequest{Name: "from-snap", Machine: "web", MachineSnapshot: "m1"}); task.State != api.TaskSucceeded {
		t.Fatalf("image of a machine snapshot: %+v", task)
	}
	waitSnapshot(t, c, "web-root", mustSnapshot(t, c, "web-root", "os"))
	if task := makeImage(api.CreateImageRequest{Name: "os", Disk: "web-root", Snapshot: "os"}); task.State != api.TaskSucceeded {
		t.Fatalf("image of a disk snapshot: %+v", task)
	}
	_, err = c.CreateImage(ctx, api.CreateImageRequest{Name: "fourth", Disk: "web-root", Snapshot: "os"})
	wantAPIError(t, err, 409, api.CodeQuotaExceeded, "image_quota = 3")

	// Provision: every disk a clone, named for the new machine, the
	// configuration rewritten.
	vm2, err := c.CreateMachine(ctx, api.CreateMachineRequest{Name: "shop", FromImage: "golden"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(vm2.Disks, ",") != "shop-root,shop-data" || vm2.Config == nil ||
		vm2.Config.Data != "<domain><name>web</name><disk><source name='shop-root'/></disk><disk><source name='shop-data'/></disk></domain>" {
		t.Fatalf("provisioned machine: %+v %+v", vm2, vm2.Config)
	}
	d, err := c.Disk(ctx, "shop-root")
	if err != nil || d.Parent != "golden/web-root" || d.Depth != 1 {
		t.Fatalf("provisioned disk: %+v, %v", d, err)
	}
	qemuIO(t, nbdURI(in, "shop-root"), "read -P 0x11 0 64k")
	qemuIO(t, nbdURI(in, "shop-data"), "read -P 0x22 64k 64k", "read -P 0 0 64k")
	qemuIO(t, nbdURI(in, "shop-root"), "write -P 0x66 0 4k")
	_, err = c.CreateMachine(ctx, api.CreateMachineRequest{Name: "shop", FromImage: "golden"})
	wantAPIError(t, err, 409, api.CodeAlreadyExists)
	_, err = c.CreateMachine(ctx, api.CreateMachineRequest{Name: "y", FromImage: "nope"})
	wantAPIError(t, err, 404, api.CodeNotFound, "nope")
	if _, err := c.Disk(ctx, "y-root"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("a failed provision left a disk: %v", err)
	}

	// The image outlives its sources: the machine and its disks go.
	if err := c.DeleteMachine(ctx, "web", api.DeleteMachineOptions{WithSnapshots: true, WithDisks: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web-root", "web-data"} {
		if _, err := c.Disk(ctx, name); err == nil {
			if err := c.DeleteDisk(ctx, name, api.DeleteDiskOptions{WithSnapshots: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := c.CreateMachine(ctx, api.CreateMachineRequest{Name: "blog", FromImage: "from-snap"}); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, nbdURI(in, "blog-root"), "read -P 0x11 0 64k")

	// Restart: images, clones and their data are all there.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	in = daemontest.Start(t, &cfg)
	c = in.Client
	list, err := c.Images(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("images after a restart: %+v, %v", list, err)
	}
	qemuIO(t, nbdURI(in, "shop-root"), "read -P 0x66 0 4k", "read -P 0x11 4k 60k")
	qemuIO(t, nbdURI(in, "blog-data"), "read -P 0x22 64k 64k")
	if im, err := c.Image(ctx, "golden"); err != nil || im.Clones != 2 {
		t.Fatalf("golden's clones: %+v, %v", im, err)
	}

	// Delete: refused while clones read through it, then done.
	_, err = c.DeleteImage(ctx, "golden")
	wantAPIError(t, err, 409, api.CodeInUse, "shop-root", "shop-data", "cairn disk flatten")
	for _, name := range []string{"shop-root", "shop-data"} {
		task, err := c.Flatten(ctx, name, api.FlattenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if task = waitTask(t, c, task.ID); task.State != api.TaskSucceeded {
			t.Fatalf("flatten %s: %+v", name, task)
		}
	}
	if _, err := c.DeleteImage(ctx, "golden"); err != nil {
		t.Fatalf("delete an image without clones: %v", err)
	}
	qemuIO(t, nbdURI(in, "shop-root"), "read -P 0x66 0 4k", "read -P 0x11 4k 60k")
	if _, err := c.DeleteImage(ctx, "golden"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("delete a deleted image: %v", err)
	}

	// An image record a stop left "creating" is dropped at the start.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Dir: filepath.Join(cfg.DataDir, "store")})
	if err != nil {
		t.Fatal(err)
	}
	half := map[string]any{"name": "half", "state": api.ImageCreating, "created": "2026-01-01T00:00:00Z",
		"disks": []map[string]any{{"name": "x", "chain": 99999, "size": 1 << 20, "block_size": 65536}}}
	if err := st.PutRecord(store.ImageKey("half"), half); err != nil {
		t.Fatal(err)
	}
	st.Close()
	in = daemontest.Start(t, &cfg)
	if _, err := in.Client.Image(ctx, "half"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("an image a stop interrupted is still listed: %v", err)
	}
	if _, err := in.Client.Image(ctx, "os"); err != nil {
		t.Fatal(err)
	}
}
