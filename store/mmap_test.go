package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dgraph-io/ristretto/v2/z"
	"golang.org/x/sys/unix"
)

// smallFS mounts a tmpfs of the given size (mount's size=, e.g. "16m") on
// a new directory and unmounts it when the test ends. A write through a
// mapping into an unallocated page of a full tmpfs is a SIGBUS, as on a
// full ext4. Needs root (skips otherwise).
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fillFS writes a file in dir until the filesystem has no byte left (a
// guest's sparse image filling it) and returns its path.
func fillFS(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; {
		if _, err := f.Write(buf[:n]); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			n /= 2
		}
	}
	if free, _ := freeBytes(dir); free != 0 {
		t.Fatalf("filled %s, still %d bytes free", dir, free)
	}
	return path
}

// TestMappedFilesAllocated: the patched ristretto (third_party/ristretto)
// backs every file it maps writable with allocated blocks, so on a full
// filesystem OpenMmapFile and Truncate fail with ENOSPC where upstream
// made a sparse file whose first write through the mapping was a SIGBUS
// (which kills the test binary: a failure too). With a RoomFunc that
// gives space back, both succeed and every byte of the mapping can be
// written.
func TestMappedFilesAllocated(t *testing.T) {
	dir := smallFS(t, "4m")
	filler := fillFS(t, dir)

	newFile := filepath.Join(dir, "000001.vlog")
	mf, err := z.OpenMmapFile(newFile, os.O_CREATE|os.O_RDWR|os.O_EXCL, 1<<20)
	if err == nil {
		clear(mf.Data) // upstream: SIGBUS here
		t.Fatal("OpenMmapFile of 1 MiB on a full filesystem succeeded")
	}
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("OpenMmapFile on a full filesystem: %v, want ENOSPC", err)
	}
	if _, serr := os.Stat(newFile); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("the empty file of a failed OpenMmapFile is left (stat: %v): a retry with O_EXCL would fail", serr)
	}

	// A RoomFunc that frees the filler's space, as the store's reserve does.
	asked := 0
	unregister := z.RegisterRoom(dir, func(path string, need int64) bool {
		asked++
		fi, err := os.Stat(filler)
		if err != nil || fi.Size() == 0 {
			return false
		}
		return os.Truncate(filler, max(0, fi.Size()-need)) == nil
	})
	defer unregister()
	mf, err = z.OpenMmapFile(newFile, os.O_CREATE|os.O_RDWR|os.O_EXCL, 1<<20)
	if err != z.NewFile {
		t.Fatalf("OpenMmapFile with room given: %v", err)
	}
	if asked == 0 {
		t.Error("the RoomFunc was not asked")
	}
	clear(mf.Data)
	for i := range mf.Data {
		mf.Data[i] = byte(i)
	}
	// Growing by 1 MiB: allocated before it is mapped.
	if err := mf.Truncate(2 << 20); err != nil {
		t.Fatalf("Truncate to 2 MiB with room given: %v", err)
	}
	for i := range mf.Data {
		mf.Data[i] = byte(i)
	}
	unregister()
	fillFS(t, dir)
	if err := mf.Truncate(4 << 20); !errors.Is(err, unix.ENOSPC) {
		if err == nil {
			clear(mf.Data) // upstream: SIGBUS here
		}
		t.Fatalf("Truncate to 4 MiB on a full filesystem: %v, want ENOSPC", err)
	}
	if len(mf.Data) != 2<<20 {
		t.Fatalf("a failed Truncate changed the mapping to %d bytes", len(mf.Data))
	}
	clear(mf.Data) // still all allocated
	if err := mf.Close(-1); err != nil {
		t.Fatal(err)
	}
}

// TestSparseFileAllocatedOnOpen: a file an older version left sparse (the
// discard statistics, written in place at every start) gets its holes
// allocated before it is mapped writable, or the open fails with ENOSPC.
func TestSparseFileAllocatedOnOpen(t *testing.T) {
	dir := smallFS(t, "4m")
	path := filepath.Join(dir, "DISCARD")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	filler := fillFS(t, dir)
	if mf, err := z.OpenMmapFile(path, os.O_RDWR, 1<<20); !errors.Is(err, unix.ENOSPC) {
		if err == nil {
			clear(mf.Data) // upstream: SIGBUS here
		}
		t.Fatalf("OpenMmapFile of a sparse file on a full filesystem: %v, want ENOSPC", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	mf, err := z.OpenMmapFile(path, os.O_RDWR, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	fillFS(t, dir)
	clear(mf.Data)
	mf.Close(-1)
}
