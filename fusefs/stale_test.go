package fusefs_test

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/fusefs"
)

// TestStaleMountAfterKill: a FUSE server killed with SIGKILL leaves a dead
// mount ("Transport endpoint is not connected"); CleanStale detaches it
// and the directory can be mounted again.
func TestStaleMountAfterKill(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) // if the test fails midway
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+dir)
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		helper.Process.Kill()
		helper.Wait()
		t.Fatalf("helper did not mount: %q, %v", line, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d", "disk.raw")); err != nil {
		t.Fatalf("helper's tree: %v", err)
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after SIGKILL, statfs of the mount point: %v; want ENOTCONN", err)
	}

	n, err := fusefs.CleanStale(dir)
	if err != nil || n != 1 {
		t.Fatalf("CleanStale = %d, %v; want 1 detached", n, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("after CleanStale: %v", err)
	}
	src := newTestSource()
	src.addDisk("d", newTestFile(t, t.TempDir(), 1<<20))
	tree, err := fusefs.Mount(dir, src, fusefs.Options{})
	if err != nil {
		t.Fatalf("mount again: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "d", "disk.raw")); err != nil {
		t.Errorf("new tree: %v", err)
	}
	if err := tree.Unmount(); err != nil {
		t.Error(err)
	}
}

// TestCleanStaleRefuses: CleanStale leaves alone what is not a dead FUSE
// mount.
func TestCleanStaleRefuses(t *testing.T) {
	requireRoot(t)
	live := mountTree(t, newTestSource(), fusefs.Options{})
	tmpfs := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(tmpfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, 0) })
	for _, c := range []struct {
		name    string
		dir     string
		wantErr string
	}{
		{"plain directory", t.TempDir(), ""},
		{"missing directory", filepath.Join(t.TempDir(), "nope"), ""},
		{"live FUSE mount", live.Dir(), "live FUSE mount"},
		{"other filesystem", tmpfs, "already a mount point"},
	} {
		n, err := fusefs.CleanStale(c.dir)
		if n != 0 || (err == nil) != (c.wantErr == "") || err != nil && !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: CleanStale = %d, %v; want 0, %q", c.name, n, err, c.wantErr)
		}
	}
	if _, err := os.Stat(live.Dir()); err != nil {
		t.Errorf("the live tree was disturbed: %v", err)
	}
}
