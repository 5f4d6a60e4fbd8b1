package faultfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	ChildMain()
	os.Exit(m.Run())
}

func start(t *testing.T) *FS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	backing, dir := t.TempDir(), t.TempDir()
	f, err := Start(backing, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Unmount() })
	return f
}

// TestRules: armed rules fail exactly their files, operations and range
// (reads of cached data too), and disarming restores them; a file mapped
// shared and written through the mapping reaches the backing file.
func TestRules(t *testing.T) {
	f := start(t)
	path := filepath.Join(f.Dir, "sub", "a.raw")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	file, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	data := bytes.Repeat([]byte{7}, 1<<20)
	if _, err := file.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)

	disarm := f.Fail(Rule{Ops: Read, Suffix: "a.raw", Off: 64 << 10, Len: 4096})
	if _, err := file.ReadAt(buf, 64<<10); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read in the failing range: %v, want EIO", err)
	}
	if _, err := file.ReadAt(buf, 512<<10); err != nil {
		t.Fatalf("read outside the failing range: %v", err)
	}
	disarm()
	if _, err := file.ReadAt(buf, 64<<10); err != nil || buf[0] != 7 {
		t.Fatalf("read after disarming: %v, %d", err, buf[0])
	}

	disarm = f.Fail(Rule{Ops: Write | Fsync, Suffix: "a.raw", Errno: syscall.ENOSPC})
	if _, err := file.WriteAt(buf, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write: %v, want ENOSPC", err)
	}
	if err := file.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fsync: %v, want ENOSPC", err)
	}
	other, err := os.Create(filepath.Join(f.Dir, "b.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.WriteAt(buf, 0); err != nil {
		t.Fatalf("write to another file: %v", err)
	}
	disarm()
	if n := f.Hits(); n < 3 {
		t.Errorf("%d requests failed, want at least 3 (the kernel may retry a failed read)", n)
	}

	// Badger maps its files shared and writes through the mapping.
	m, err := unix.Mmap(int(file.Fd()), 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	copy(m, "mapped")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	unix.Munmap(m)
	got, err := os.ReadFile(f.Backing("sub/a.raw"))
	if err != nil || !bytes.HasPrefix(got, []byte("mapped")) {
		t.Fatalf("backing file after a write through a mapping: %q..., %v", got[:8], err)
	}
}
