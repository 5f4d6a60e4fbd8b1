package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The open refuses a symlink anywhere in the path, so one swapped in
// after the path was resolved and checked is not followed: here a
// directory of the checked path replaced by a symlink to elsewhere.
func TestOpenNoSymlinks(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "images", "vm.raw")
	os.MkdirAll(filepath.Dir(real), 0o700)
	if err := os.WriteFile(real, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := openNoSymlinks(real)
	if err != nil {
		t.Fatalf("open of a plain path: %v", err)
	}
	unix.Close(fd)

	elsewhere := filepath.Join(base, "elsewhere")
	os.MkdirAll(elsewhere, 0o700)
	os.WriteFile(filepath.Join(elsewhere, "vm.raw"), make([]byte, 4096), 0o600)
	os.Rename(filepath.Dir(real), filepath.Join(base, "moved"))
	if err := os.Symlink(elsewhere, filepath.Dir(real)); err != nil {
		t.Fatal(err)
	}
	if fd, err := openNoSymlinks(real); !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.EXDEV) {
		unix.Close(fd)
		t.Fatalf("open through a swapped-in directory symlink: %v, want ELOOP", err)
	}
	os.Remove(filepath.Dir(real))
	os.Rename(filepath.Join(base, "moved"), filepath.Dir(real))
	os.Remove(real)
	os.Symlink(filepath.Join(elsewhere, "vm.raw"), real)
	if fd, err := openNoSymlinks(real); !errors.Is(err, unix.ELOOP) {
		unix.Close(fd)
		t.Fatalf("open of a swapped-in file symlink: %v, want ELOOP", err)
	}
}
