package daemon_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// The adoption cases a hostile member of the API's group tried (issue 15):
// each is refused, or harmless.

func writeFile(t *testing.T, path string, content []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, content, mode); err != nil {
		t.Fatal(err)
	}
}

// startAllowing starts a daemon whose adopt_allow is a new directory, and
// returns both.
func startAllowing(t *testing.T) (*daemontest.Instance, daemon.Config, string) {
	t.Helper()
	allowed := t.TempDir()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{allowed}
	return daemontest.Start(t, &cfg), cfg, allowed
}

// loopDevice attaches a new sparse file of size bytes to a loop device.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	need(t, "losetup")
	backing := filepath.Join(t.TempDir(), "backing.raw")
	writeFile(t, backing, nil, 0o600)
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	return dev
}

// Adoption is off until adopt_allow names somewhere.
func TestAdoptOffByDefault(t *testing.T) {
	in := daemontest.Start(t, nil)
	path := filepath.Join(t.TempDir(), "img.raw")
	writeFile(t, path, make([]byte, 4096), 0o600)
	_, err := in.Client.CreateDisk(context.Background(), api.CreateDiskRequest{Name: "x", Adopt: path})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "adopt_allow", "adoption is off")
}

func TestAdoptOutsideAllowList(t *testing.T) {
	allowed, outside := t.TempDir(), t.TempDir()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{allowed}
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()

	// A root-only file such as /etc/gshadow-, outside the list.
	secret := filepath.Join(outside, "gshadow-")
	writeFile(t, secret, append([]byte("root:*::\n"), make([]byte, 4096-9)...), 0o640)
	_, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "gsh", Adopt: secret})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "not under any directory", allowed)
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "gsh", Adopt: "/etc/gshadow-"})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "not under any directory")

	// A symlink in the allowed directory to it: judged by what it points at.
	link := filepath.Join(allowed, "innocent.raw")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "gsh", Adopt: link})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "which is "+secret)

	// "..", however spelled, is resolved first.
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "gsh", Adopt: allowed + "/../" + filepath.Base(outside) + "/gshadow-"})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "not under any directory")
	if disks, _ := in.Client.Disks(ctx); len(disks) != 0 {
		t.Fatalf("refused adoptions left disks: %+v", disks)
	}
}

// A hard link, made in the allowed directory, to a file of the data
// directory (the store's value log, another disk's image): refused, like
// every file with more than one link.
func TestAdoptHardLinkIntoDataDir(t *testing.T) {
	in, cfg, allowed := startAllowing(t)
	ctx := context.Background()
	victim := createDisk(t, in, "victim", "1M")
	targets, _ := filepath.Glob(filepath.Join(cfg.DataDir, "store", "*.vlog"))
	targets = append(targets, victim.Path)
	for i, target := range targets {
		link := filepath.Join(allowed, "link"+strconv.Itoa(i)+".raw")
		if err := os.Link(target, link); err != nil {
			t.Fatalf("%s: %v (the test needs the data directory and the allowed one on one filesystem)", target, err)
		}
		_, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "thief", Adopt: link})
		wantAPIError(t, err, 403, api.CodePermissionDenied, "2 hard links")
	}
}

// A symlink adopted while it pointed at an allowed image is recorded as
// the image it points at: re-pointed at another disk's live image, it
// changes nothing, after a restart too.
func TestAdoptSymlinkRepointed(t *testing.T) {
	need(t, "qemu-io")
	in, cfg, allowed := startAllowing(t)
	ctx := context.Background()
	other := createDisk(t, in, "other", "1M")

	image := filepath.Join(allowed, "mine.raw")
	writeFile(t, image, bytes.Repeat([]byte{0xab}, 1<<20), 0o600)
	link := filepath.Join(allowed, "current.raw")
	if err := os.Symlink(image, link); err != nil {
		t.Fatal(err)
	}
	d, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "mine", Adopt: link})
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != image {
		t.Fatalf("recorded path %s, want the symlink's target %s", d.Path, image)
	}
	os.Remove(link)
	if err := os.Symlink(other.Path, link); err != nil {
		t.Fatal(err)
	}
	in.Stop()
	in = daemontest.Start(t, &cfg)
	d, err = in.Client.Disk(ctx, "mine")
	if err != nil || d.Path != image || d.State != api.DiskReady {
		t.Fatalf("after restart: %+v %v", d, err)
	}
	sock := in.Info().NBDSocket
	out, err := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read -P 0xab 0 1M", "nbd+unix:///mine?socket="+sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "read 1048576/1048576") {
		t.Fatalf("disk mine does not read its own image after the symlink moved: %v\n%s", err, out)
	}
}

// An adopted image replaced, while cairnd is stopped, by a symlink to
// another disk's live image (or moved out of the allowed directory) is not
// opened at the next start: the disk is in state error, saying why.
func TestAdoptedImageSwappedWhileStopped(t *testing.T) {
	in, cfg, allowed := startAllowing(t)
	ctx := context.Background()
	other := createDisk(t, in, "other", "1M")
	image := filepath.Join(allowed, "mine.raw")
	writeFile(t, image, make([]byte, 1<<20), 0o600)
	if _, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "mine", Adopt: image}); err != nil {
		t.Fatal(err)
	}
	in.Stop()
	os.Remove(image)
	if err := os.Symlink(other.Path, image); err != nil {
		t.Fatal(err)
	}
	in = daemontest.Start(t, &cfg)
	d, err := in.Client.Disk(ctx, "mine")
	if err != nil || d.State != api.DiskError || !strings.Contains(d.Error, "data directory") {
		t.Fatalf("disk whose image became a symlink into the data directory: %+v %v", d, err)
	}
	in.Stop()

	// The allow-list no longer covers it: refused at start too.
	os.Remove(image)
	writeFile(t, image, make([]byte, 1<<20), 0o600)
	cfg.AdoptAllow = []string{t.TempDir()}
	in = daemontest.Start(t, &cfg)
	if d, err = in.Client.Disk(ctx, "mine"); err != nil || d.State != api.DiskError || !strings.Contains(d.Error, "adopt_allow") {
		t.Fatalf("disk outside the allow-list after a config change: %+v %v", d, err)
	}
}

// Block devices: one not on the list is refused; one on it but mounted is
// refused as in use.
func TestAdoptBlockDeviceRules(t *testing.T) {
	need(t, "mkfs.ext4")
	unlisted, mounted := loopDevice(t, 16<<20), loopDevice(t, 16<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", mounted).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", mounted, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{mounted}
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	_, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "dev", Adopt: unlisted})
	wantAPIError(t, err, 403, api.CodePermissionDenied, "not under any directory or device")
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "dev", Adopt: mounted})
	wantAPIError(t, err, 409, api.CodeInUse, "in use by the host")
}
