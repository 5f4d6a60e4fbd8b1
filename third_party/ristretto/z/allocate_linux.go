/*
 * Cairn patch (see ../README.cairn.md): not part of upstream ristretto.
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fallocate allocates [off, off+n) of fd (mode 0: the size grows to
// off+n if smaller). A filesystem without fallocate gets zeros written
// instead, which allocates as well. Blocks a failed call allocated beyond
// the old size are the caller's to give back (by truncating).
func fallocate(fd *os.File, off, n int64) error {
	for {
		err := unix.Fallocate(int(fd.Fd()), 0, off, n)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EOPNOTSUPP):
			return writeZeros(fd, off, n)
		default:
			return fmt.Errorf("allocate %d bytes at %d of %s: %w", n, off, fd.Name(), err)
		}
	}
}

// writeZeros writes zeros over the holes of [off, off+n): data already
// there is kept.
func writeZeros(fd *os.File, off, n int64) error {
	const chunk = 1 << 20
	zeros := make([]byte, chunk)
	buf := make([]byte, chunk)
	end := off + n
	size := int64(0)
	if fi, err := fd.Stat(); err == nil {
		size = fi.Size()
	}
	for p := off; p < end; p += chunk {
		m := min(int64(chunk), end-p)
		w := zeros[:m]
		if p < size {
			// Keep what is there: read it and write it back, which
			// allocates a hole under it too.
			got, err := fd.ReadAt(buf[:m], p)
			if err != nil && got < int(min(m, size-p)) {
				return fmt.Errorf("allocate %d bytes at %d of %s: read: %w", n, off, fd.Name(), err)
			}
			clear(buf[got:m])
			w = buf[:m]
		}
		if _, err := fd.WriteAt(w, p); err != nil {
			return fmt.Errorf("allocate %d bytes at %d of %s (no fallocate on this filesystem): %w", n, off, fd.Name(), err)
		}
	}
	return nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// sparse reports whether fd has fewer bytes allocated than its size (a
// hole a write through a mapping would have to fill).
func sparse(fd *os.File) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(fd.Fd()), &st); err != nil {
		return false, err
	}
	return st.Blocks*512 < st.Size, nil
}
