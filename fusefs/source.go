package fusefs

import (
	"context"
	"time"

	"github.com/cairn-storage/cairn/block"
)

// A file of the tree serves a block.Device: a live disk or a snapshot.
// Its methods are called concurrently from many FUSE requests, with
// offsets and lengths already clipped to Size; WriteAt, Trim and Zero are
// never called for snapshots (the tree answers EROFS first). Reads of
// ranges a block.Backed device backs with a file are spliced from that
// file to the kernel without a copy through the daemon, which needs pipes
// that hold a whole request: sysctl fs.pipe-max-size of at least 4 MiB
// when the daemon starts (go-fuse reads it once). Otherwise they are read
// with pread.

// DiskEntry is one disk as the tree shows it: the directory /<Name> and its
// live file /<Name>/disk.raw.
type DiskEntry struct {
	Name string
	// Size of the live disk in bytes (the open File's Size wins for fstat).
	Size int64
	// Created and ID tell this disk from others that had the same name: a
	// disk deleted and created again gets a new inode (and page cache).
	// Created is the directory's time; ID may be 0 if Created suffices
	// (a Source that stores Created to the second needs it).
	Created time.Time
	ID      uint64
	// Modified is when the live content last changed other than through
	// this tree (writes through FUSE are tracked here); zero means Created.
	Modified time.Time
}

// is reports whether e is the disk that was created at created with id.
func (e DiskEntry) is(created time.Time, id uint64) bool {
	return e.Created.Equal(created) && e.ID == id
}

// SnapEntry is one snapshot as the tree shows it:
// /<disk>/snapshots/<Name>.raw, read-only, timestamped Created.
type SnapEntry struct {
	Name    string
	Size    int64
	Created time.Time
}

// Source is what the tree shows; the daemon implements it. Lists are read
// on every lookup and directory listing, so the tree follows the source
// without being told; Mount.Invalidate only makes the kernel drop what it
// cached sooner. Methods are called concurrently.
type Source interface {
	// Disks lists the disks, in any order.
	Disks() []DiskEntry
	// Snapshots lists the snapshots of disk that can be read (ready or
	// copying); nil when the disk does not exist.
	Snapshots(disk string) []SnapEntry
	// OpenDisk returns the live content of disk for reading and writing.
	// release is called once when the last FUSE handle on it closes.
	OpenDisk(ctx context.Context, disk string) (f block.Device, release func(), err error)
	// OpenSnapshot returns a snapshot's content, read-only.
	OpenSnapshot(ctx context.Context, disk, snap string) (f block.Device, release func(), err error)
}
