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
//	machine/<name>        one machine: its disks, configuration, agent (daemon)
//	msnap/<machine>/<name>  one machine snapshot, by machine id (daemon)
//	freeze/<machine>      a guest frozen by cairnd, to thaw after a crash (daemon)
//	task/<id>             one long operation, running or finished (daemon)
//	image/<name>          one whole-machine image: its disks' chains, configuration (daemon)
//	attach/<index>        an export attached to the kernel as /dev/nbd<index> (daemon)
//	health/probe          the daemon's write probe
//	policy/<name>         one automatic snapshot policy (daemon)
//	ptarget/<kind>/<id>   a policy applied to a disk or machine, by id, with its schedule state (daemon)
//	event/<id>            one entry of the events log, id zero-padded to 20 digits (daemon)
//	capacity/<kind>/<id>/<time>  one capacity sample of a disk, a machine or the store (id 0),
//	                      time in unix seconds zero-padded to 20 digits (daemon)
//
// The id sequences "disk", "machine", "task" and "event" (NextID) number
// disks, machines, tasks and events.
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

// MachinePrefix starts every machine record key.
const MachinePrefix = "machine/"

// MachineIDSequence is the NextID sequence of machine ids.
const MachineIDSequence = "machine"

// MachineKey names the record of the machine called name.
func MachineKey(name string) string { return MachinePrefix + name }

// MachineSnapshotPrefix starts the machine snapshot keys of machine id.
func MachineSnapshotPrefix(machine uint64) string { return fmt.Sprintf("msnap/%d/", machine) }

// MachineSnapshotKey names snapshot name of machine id.
func MachineSnapshotKey(machine uint64, name string) string {
	return MachineSnapshotPrefix(machine) + name
}

// ImagePrefix starts every image record key.
const ImagePrefix = "image/"

// ImageKey names the record of the image called name.
func ImageKey(name string) string { return ImagePrefix + name }

// TaskPrefix starts every task record key.
const TaskPrefix = "task/"

// TaskKey names the record of task id.
func TaskKey(id string) string { return TaskPrefix + id }

// FreezePrefix starts every freeze record key.
const FreezePrefix = "freeze/"

// FreezeKey names the record of a guest cairnd froze, by machine id.
func FreezeKey(machine uint64) string { return FreezePrefix + strconv.FormatUint(machine, 10) }

// DiskKey names the record of the disk called name.
func DiskKey(name string) string { return DiskPrefix + name }

// AttachPrefix starts every kernel attachment record key.
const AttachPrefix = "attach/"

// AttachKey names the record of the attachment of /dev/nbd<index>.
func AttachKey(index int) string { return AttachPrefix + strconv.Itoa(index) }

// PolicyPrefix starts every policy record key.
const PolicyPrefix = "policy/"

// PolicyKey names the record of the policy called name.
func PolicyKey(name string) string { return PolicyPrefix + name }

// PolicyTargetPrefix starts every policy target record key.
const PolicyTargetPrefix = "ptarget/"

// PolicyTargetKey names the policy of the disk or machine (kind) with id.
func PolicyTargetKey(kind string, id uint64) string {
	return PolicyTargetPrefix + kind + "/" + strconv.FormatUint(id, 10)
}

// EventPrefix starts every event record key; keys sort by id.
const EventPrefix = "event/"

// EventIDSequence is the NextID sequence of event ids.
const EventIDSequence = "event"

// EventKey names event id.
func EventKey(id uint64) string { return fmt.Sprintf("%s%020d", EventPrefix, id) }

// CapacityPrefix starts the capacity sample keys of one disk, machine or
// (kind "store", id 0) the store; keys of one prefix sort by time.
func CapacityPrefix(kind string, id uint64) string { return fmt.Sprintf("capacity/%s/%d/", kind, id) }

// CapacityKey names the sample taken at unix second t.
func CapacityKey(kind string, id uint64, t int64) string {
	return fmt.Sprintf("%s%020d", CapacityPrefix(kind, id), t)
}
