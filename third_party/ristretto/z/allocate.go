/*
 * Cairn patch (see ../README.cairn.md): not part of upstream ristretto.
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import (
	"os"
	"path/filepath"
	"sync"
)

// A write through a shared mapping into a page of a file that has no block
// behind it (a sparse file grown with ftruncate) must allocate that block
// in the page fault. On a full filesystem the fault cannot, and the kernel
// sends SIGBUS, which kills a Go program: there is no error to return.
// Every file this package maps writable is therefore backed by allocated
// blocks (allocate) before it is mapped or grown, so a full filesystem is
// an error from OpenMmapFile or Truncate, never a fault.

// RoomFunc is called when allocating blocks for a file in a directory it
// was registered for failed for want of space (ENOSPC, EDQUOT). need is
// the number of bytes the allocation asked for. It returns true when it
// gave space back (the allocation is tried again) and false when it has
// nothing to give (the allocation fails with the error).
type RoomFunc func(path string, need int64) bool

var rooms struct {
	sync.RWMutex
	byDir map[string]RoomFunc
}

// RegisterRoom makes fn the RoomFunc of files created or grown directly
// in dir (not in its subdirectories). The returned function unregisters
// it. A later registration for the same directory replaces an earlier one.
func RegisterRoom(dir string, fn RoomFunc) (unregister func()) {
	key := roomKey(dir)
	rooms.Lock()
	defer rooms.Unlock()
	if rooms.byDir == nil {
		rooms.byDir = make(map[string]RoomFunc)
	}
	rooms.byDir[key] = fn
	return func() {
		rooms.Lock()
		defer rooms.Unlock()
		delete(rooms.byDir, key)
	}
}

func roomKey(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return filepath.Clean(dir)
}

func roomFor(path string) RoomFunc {
	key := roomKey(filepath.Dir(path))
	rooms.RLock()
	defer rooms.RUnlock()
	return rooms.byDir[key]
}

// allocate makes sure every byte of [off, off+n) of fd has a block behind
// it, extending the file's size to off+n if it is smaller. When the
// filesystem is full it asks the directory's RoomFunc for space and tries
// again; the error it returns then wraps ENOSPC (or EDQUOT).
func allocate(fd *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	var room RoomFunc
	for tries := 0; ; tries++ {
		err := fallocate(fd, off, n)
		if err == nil || !isNoSpace(err) {
			return err
		}
		if room == nil {
			if room = roomFor(fd.Name()); room == nil {
				return err
			}
		}
		// A RoomFunc that keeps giving a little at a time is bounded
		// by what it holds; the bound only stops a broken one.
		if tries >= 64 || !room(fd.Name(), n) {
			return err
		}
	}
}
