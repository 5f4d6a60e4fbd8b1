package store

import (
	"fmt"
	"strconv"
	"strings"
)

// Record keys: the names records go under (m<key> in keys.go). Every
// package that keeps records names them here, so the whole record key
// space is in one place. Changing any of these is an on-disk format
// change.
//
//	chain/<disk>          a disk's chain bookkeeping (cow)
//	snap/<disk>/<seq>     one snapshot of a disk, seq zero-padded to 20 digits (cow)
//	disk/<name>           one disk (daemon)
//	health/probe          the daemon's write probe
//
// The id sequences (NextID): "disk" numbers disks, "task" numbers tasks.
const (
	// ChainPrefix starts every chain record key.
	ChainPrefix = "chain/"
	// DiskPrefix starts every disk record key.
	DiskPrefix = "disk/"
	// DiskIDSequence is the NextID sequence of disk ids.
	DiskIDSequence = "disk"
	// TaskIDSequence is the NextID sequence of task ids: a task id is
	// never reused for the lifetime of the data directory.
	TaskIDSequence = "task"
	// HealthProbeKey is written and read back by health checks.
	HealthProbeKey = "health/probe"
)

// ChainKey names disk's chain record.
func ChainKey(disk uint64) string { return ChainPrefix + strconv.FormatUint(disk, 10) }

// ParseChainKey returns the disk a chain record key names.
func ParseChainKey(key string) (disk uint64, ok bool) {
	rest, found := strings.CutPrefix(key, ChainPrefix)
	if !found {
		return 0, false
	}
	disk, err := strconv.ParseUint(rest, 10, 64)
	return disk, err == nil
}

// SnapshotKey names snapshot seq of disk; keys of one disk sort by seq.
func SnapshotKey(disk, seq uint64) string { return fmt.Sprintf("snap/%d/%020d", disk, seq) }

// SnapshotPrefix starts the snapshot record keys of disk.
func SnapshotPrefix(disk uint64) string { return fmt.Sprintf("snap/%d/", disk) }

// DiskKey names the record of the disk called name.
func DiskKey(name string) string { return DiskPrefix + name }
