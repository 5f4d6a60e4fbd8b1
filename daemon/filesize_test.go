package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// On ext4 (4 KiB blocks) no file exceeds 16 TiB less 4 KiB: creating or
// growing a disk past it is a 400 naming the limit, not a 500 from
// truncate, and nothing is left behind.
func TestFileSizeLimit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount an ext4 image")
	}
	need(t, "mkfs.ext4")
	base := t.TempDir()
	img := filepath.Join(base, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil { // room for the smallest store reserve (96M)
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "4096", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	mnt := filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o700)
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	dir, err := os.MkdirTemp("", "cairn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := daemontest.Config(t, filepath.Join(mnt, "data"))
	cfg.APISocket, cfg.NBDSocket = filepath.Join(dir, "api.sock"), filepath.Join(dir, "nbd.sock")
	cfg.StoreReserve = "96M"
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	const limit = "17592186040320" // 16 TiB - 4 KiB
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "huge", Size: "20T"})
	wantAPIError(t, err, 400, api.CodeInvalidArgument, "size: 20 TiB", "largest file", limit)
	if _, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "huge", Size: "16T"}); err == nil {
		t.Fatal("a 16 TiB file was created on ext4")
	}
	createDisk(t, in, "small", "1M")
	_, err = in.Client.GrowDisk(ctx, "small", "64T")
	wantAPIError(t, err, 400, api.CodeInvalidArgument, "largest file", limit)
	if d, err := in.Client.Disk(ctx, "small"); err != nil || d.Size != 1<<20 {
		t.Fatalf("after a refused grow: %+v %v", d, err)
	}
	if disks, _ := in.Client.Disks(ctx); len(disks) != 1 {
		t.Fatalf("refused creates left disks: %+v", disks)
	}
}
