package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/internal/durable"
)

// The largest file a filesystem holds is its own (ext4 with 4 KiB blocks:
// 16 TiB less 4 KiB; xfs and btrfs: 8 EiB), and neither statfs nor
// pathconf tells it. So before a live image is created or grown, an
// unnamed file (O_TMPFILE) in the same directory is truncated to the size
// asked: sparse, it costs no space, and EFBIG means the size is past the
// limit, which a binary search on the same file then finds for the
// message.

// checkFileSize returns an invalid_argument error on size naming the
// limit when the filesystem of dir cannot hold a file of size bytes. A
// probe that cannot run (a read-only or foreign directory) is no answer:
// the truncate itself then says, mapped by fileTooLarge.
func checkFileSize(dir string, size int64) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, size); !errors.Is(err, unix.EFBIG) {
		return nil
	}
	lo, hi := int64(0), size // lo fits, hi does not
	for hi-lo > SizeAlign {
		mid := lo + (hi-lo)/2/SizeAlign*SizeAlign
		if unix.Ftruncate(fd, mid) == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	return fileSizeError(dir, size, lo)
}

func fileSizeError(dir string, size, limit int64) error {
	return invalidField(fieldSize, "size: %s (%d bytes) is larger than the largest file the filesystem of %s holds (%d bytes, about %s); choose a smaller size or keep the data directory on a filesystem without that limit (xfs, btrfs)",
		api.FormatSize(size), size, dir, limit, api.FormatSize(limit))
}

// fileTooLarge maps a truncate's EFBIG, when the probe could not run, to
// the same client error without the limit.
func fileTooLarge(err error, dir string, size int64) error {
	if errors.Is(err, unix.EFBIG) {
		return invalidField(fieldSize, "size: %s (%d bytes) is larger than the largest file the filesystem of %s holds; choose a smaller size",
			api.FormatSize(size), size, dir)
	}
	return err
}

// createSparse creates a new sparse file of size bytes and makes its
// directory entry durable.
func (d *Daemon) createSparse(path string, size int64) error {
	if err := checkFileSize(filepath.Dir(path), size); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create live image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		if errors.Is(err, unix.EFBIG) {
			return fileTooLarge(err, filepath.Dir(path), size)
		}
		return fmt.Errorf("create live image %s: %w", path, err)
	}
	return nil
}
