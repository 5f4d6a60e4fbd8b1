package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
)

// Paths a client can make cairnd open. The only one today is an adopted
// live image (POST /v1/disks with "adopt"): as cairnd runs as root, a path
// it opens for a client is read and written with root's rights, so it must
// lie under a directory or be a device that the operator listed in
// adopt_allow (none by default: adoption is off), and nothing may swap
// what the checks saw for something else before the open:
//
//   - the path is resolved (symlinks followed) and the result is what is
//     checked against the allow-list (itself resolved) and the data
//     directory, which is never allowed;
//   - the resolved path is opened with openat2(RESOLVE_NO_SYMLINKS), so a
//     symlink put anywhere in it after the check makes the open fail, and
//     the opened descriptor's own path (/proc/self/fd/N) is compared with
//     the checked one, so a rename between check and open is caught too;
//   - a regular file must have exactly one link: another name of the
//     same file may lie anywhere (a hard link to the store's value log, or
//     to a root-only file), and no check of this name says where those are;
//   - a block device is opened O_EXCL, which the kernel refuses while it is
//     mounted or held by another exclusive opener (LVM, md, another
//     program), and which keeps it from being mounted while cairnd has it.
//
// The same checks run whenever cairnd opens an adopted image (at start
// too), so a record made before adopt_allow existed, or a file changed
// since, cannot reach beyond what the list allows today.

// openAdoptable opens the image at path for a disk, after the checks
// above. It returns the open file and the path to record: the resolved
// path of a regular file, the path as given of a block device under /dev
// (udev's stable names such as /dev/vg0/vm1 are symlinks to kernel names
// like /dev/dm-3 that can change across boots; only root can change
// /dev, and the name is resolved and checked again at every open).
// self, when not nil, is the disk the image already belongs to (at
// start-up), which does not count as another disk using it.
func (d *Daemon) openAdoptable(path string, self *Disk) (*os.File, string, error) {
	if len(d.cfg.AdoptAllow) == 0 {
		return nil, "", fieldError(block.ErrDenied, fieldAdopt,
			"adopt: adoption is off: the adopt_allow setting names no directory or device cairnd may open (docs/security.md)")
	}
	if !filepath.IsAbs(path) {
		return nil, "", invalidField(fieldAdopt, "adopt: %q is not an absolute path", path)
	}
	path = filepath.Clean(path)
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, "", invalidField(fieldAdopt, "adopt: %v", err)
	}
	if err := d.checkAllowed(path, real); err != nil {
		return nil, "", err
	}
	// What it is, before opening it: opening a character device or a FIFO
	// can have effects of its own. (The open descriptor is checked again.)
	fi, err := os.Stat(real)
	if err != nil {
		return nil, "", invalidField(fieldAdopt, "adopt: %v", err)
	}
	if err := d.checkImage(fi, path, self); err != nil {
		return nil, "", err
	}
	fd, err := openNoSymlinks(real)
	switch {
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return nil, "", fieldError(block.ErrDenied, fieldAdopt, "adopt: %s changed while it was checked (a symlink appeared in its path); try again", path)
	case errors.Is(err, unix.EBUSY):
		return nil, "", fieldError(block.ErrInUse, fieldAdopt, "adopt: block device %s is in use by the host (mounted, or held by LVM, md or another program); release it first", path)
	case err != nil:
		return nil, "", invalidField(fieldAdopt, "adopt: open %s: %v", real, err)
	}
	f := os.NewFile(uintptr(fd), real)
	record, err := d.checkOpened(f, path, real, self)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return f, record, nil
}

// checkAllowed checks a resolved path against the data directory and the
// allow-list.
func (d *Daemon) checkAllowed(path, real string) error {
	if dataDir, err := filepath.EvalSymlinks(d.cfg.DataDir); err == nil && within(dataDir, real) {
		return fieldError(block.ErrDenied, fieldAdopt, "adopt: %s is inside cairnd's data directory %s", path, d.cfg.DataDir)
	}
	for _, a := range d.cfg.AdoptAllow {
		allowed, err := filepath.EvalSymlinks(a)
		if err == nil && within(allowed, real) {
			return nil
		}
	}
	shown := path
	if real != path {
		shown = fmt.Sprintf("%s (which is %s)", path, real)
	}
	return fieldError(block.ErrDenied, fieldAdopt, "adopt: %s is not under any directory or device in adopt_allow (%s); an admin may add it to the config",
		shown, strings.Join(d.cfg.AdoptAllow, ", "))
}

// within reports whether path is dir or lies under it.
func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// openNoSymlinks opens a resolved path read-write, refusing a symlink in
// any component (openat2 RESOLVE_NO_SYMLINKS; O_NOFOLLOW on kernels
// before 5.6, which only covers the last one). O_EXCL makes the open of a
// block device exclusive; Linux ignores it for other files.
func openNoSymlinks(path string) (int, error) {
	flags := uint64(unix.O_RDWR | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_EXCL)
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOSYS) {
		fd, err = unix.Open(path, int(flags), 0)
	}
	return fd, err
}

// checkImage checks that fi is a singly-linked regular file or a block
// device, and no other disk's live image.
func (d *Daemon) checkImage(fi os.FileInfo, path string, self *Disk) error {
	switch fi.Mode().Type() {
	case 0:
		if n := fi.Sys().(*syscall.Stat_t).Nlink; n != 1 {
			return fieldError(block.ErrDenied, fieldAdopt,
				"adopt: %s has %d hard links: another name of the same file may lie outside adopt_allow (even in cairnd's data directory), so a file with more than one link is refused; copy it instead", path, n)
		}
	case os.ModeDevice:
	default:
		return invalidField(fieldAdopt, "adopt: %s is neither a regular file nor a block device", path)
	}
	for _, other := range d.disks {
		if other == self {
			continue
		}
		if ofi, err := os.Stat(d.livePath(other.rec)); err == nil && os.SameFile(fi, ofi) {
			return fieldError(block.ErrInUse, fieldAdopt, "adopt: %s is already the live image of disk %q", path, other.rec.Name)
		}
	}
	return nil
}

// checkOpened checks what was actually opened: the descriptor's path is
// the one checked, and it is a singly-linked regular file or a block
// device that no other disk uses. It returns the path to record.
func (d *Daemon) checkOpened(f *os.File, path, real string, self *Disk) (string, error) {
	if got, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err != nil || got != real {
		return "", fieldError(block.ErrDenied, fieldAdopt, "adopt: %s changed while it was checked (it was renamed or replaced); try again", path)
	}
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", real, err)
	}
	if err := d.checkImage(fi, path, self); err != nil {
		return "", err
	}
	record := real
	if fi.Mode().Type() == os.ModeDevice && strings.HasPrefix(path, "/dev/") {
		record = path
	}
	return record, nil
}
