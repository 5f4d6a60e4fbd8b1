//go:build !linux

/*
 * Cairn patch (see ../README.cairn.md): not part of upstream ristretto.
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import "os"

// fallocate without Linux's fallocate(2): upstream's behaviour (a sparse
// grow). Cairn runs on Linux only.
func fallocate(fd *os.File, off, n int64) error {
	fi, err := fd.Stat()
	if err != nil {
		return err
	}
	if fi.Size() >= off+n {
		return nil
	}
	return fd.Truncate(off + n)
}

func isNoSpace(error) bool { return false }

func sparse(*os.File) (bool, error) { return false, nil }
