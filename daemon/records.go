package daemon

import (
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Store records of the daemon (store.PutRecord: JSON under the keys of
// store/recordkeys.go). This file is their wire format; change it only
// compatibly.
//
//	store.DiskKey(name)                    diskRecord         one per disk
//	store.MachineKey(name)                 machineRecord      one per machine
//	store.MachineSnapshotKey(id, name)     machineSnapRecord  one per machine snapshot
//	store.FreezeKey(id)                    freezeRecord       while cairnd has a guest frozen
//	store.AttachKey(index)                 attachRecord       one per /dev/nbdN cairnd serves (versioned)
//	store.PolicyKey(name)                  policyRecord       one per policy (policy.go)
//	store.PolicyTargetKey(kind, id)        targetRecord       a policy applied to a disk or machine
//	store.EventKey(id)                     eventRecord        the events log (events.go)
//	store.CapacityKey(kind, id, t)         capacitySample     capacity history (capacity_history.go)
//
// The policy, target, event and capacity records carry a format version
// ("version"): a record of a version this cairnd does not know is refused
// (policies and targets: cairnd does not start, saying so) or skipped
// with a warning (events, samples), never misread.
//
// The sequence store.DiskIDSequence numbers disks; an id is never reused,
// so DATA_DIR/disks/<id>.raw never names two disks. store.TaskIDSequence
// numbers tasks, so a script waiting on a task id never waits on another
// task after a restart.

const (
	diskKeyPrefix = store.DiskPrefix
	diskIDSeq     = store.DiskIDSequence
	taskIDSeq     = store.TaskIDSequence
)

func diskKey(name string) string { return store.DiskKey(name) }

func attachKey(index int) string { return store.AttachKey(index) }

// diskRecord is what the daemon keeps about a disk.
type diskRecord struct {
	ID          uint64    `json:"id"`
	Name        string    `json:"name"`
	Size        int64     `json:"size"`
	BlockSize   int       `json:"block_size"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	// Adopted is the absolute path of an adopted live image; empty for a
	// disk whose live image is DATA_DIR/disks/<id>.raw.
	Adopted string `json:"adopted,omitempty"`
	// Origin makes the disk a clone: the layers its unwritten blocks read
	// from (cow.Options.Origin). Parent names what it was cloned from
	// (DISK@SNAPSHOT, or IMAGE/DISK); once flattened, Origin is its own
	// base and Flattened keeps the parent's name.
	Origin    []store.Layer `json:"origin,omitempty"`
	Parent    string        `json:"parent,omitempty"`
	Flattened string        `json:"flattened,omitempty"`
	// CopyOnRead: the clone's reads copy from its origin (cow.Options).
	CopyOnRead bool `json:"copy_on_read,omitempty"`
}

// machineRecord is what the daemon keeps about a machine.
type machineRecord struct {
	ID          uint64      `json:"id"`
	Name        string      `json:"name"`
	Disks       []string    `json:"disks"` // disk names, in order
	Config      *api.Config `json:"config,omitempty"`
	AgentSocket string      `json:"agent_socket,omitempty"`
	Description string      `json:"description,omitempty"`
	Created     time.Time   `json:"created"`
}

// machineSnapRecord is one machine snapshot. It is written in the same
// store transaction as its members' snapshot records, so it exists
// exactly when they all do.
type machineSnapRecord struct {
	Name        string         `json:"name"`
	Description string         `json:"description,omitempty"`
	Created     time.Time      `json:"created"`
	Requested   string         `json:"requested"`
	Consistency string         `json:"consistency"`
	Reason      string         `json:"reason,omitempty"` // why it is less consistent than requested
	FrozenNS    int64          `json:"frozen_ns,omitempty"`
	HoldNS      int64          `json:"hold_ns"`
	Members     []memberRecord `json:"members"`
	Config      *api.Config    `json:"config,omitempty"`
	// Kind, Policy and RetentionDays: an automatic machine snapshot, taken
	// by a policy applied to the machine, and how many days it is kept
	// (api.RetentionForever: until deleted). Optional members: records
	// written before policies lack them (manual).
	Kind          string `json:"kind,omitempty"`
	Policy        string `json:"policy,omitempty"`
	RetentionDays int    `json:"retention_days,omitempty"`
	// Deleting: a delete began; the next start finishes it.
	Deleting bool `json:"deleting,omitempty"`
}

// memberRecord is one disk's snapshot in a machine snapshot.
type memberRecord struct {
	Disk     string `json:"disk"`
	DiskID   uint64 `json:"disk_id"`
	Snapshot string `json:"snapshot"`
}

// freezeRecord says cairnd froze a guest's filesystems and has not yet
// seen them thawed: written (durably) before the freeze, deleted after
// the thaw; a start that finds one thaws the guest first.
type freezeRecord struct {
	Machine     string    `json:"machine"`
	AgentSocket string    `json:"agent_socket"`
	Since       time.Time `json:"since"`
}

// imageRecord is a whole-machine image. Its disks are chains of their own
// in the store (numbered from the disk id sequence, so no disk ever has
// one's id), holding only a base of entries copied by reference.
type imageRecord struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Created     time.Time   `json:"created"`
	State       string      `json:"state"` // api.ImageCreating until every chain is written
	Source      string      `json:"source,omitempty"`
	Disks       []imageDisk `json:"disks"`
	Config      *api.Config `json:"config,omitempty"`
}

// imageDisk is one disk of an image.
type imageDisk struct {
	Name      string `json:"name"`
	Chain     uint64 `json:"chain"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	Boot      bool   `json:"boot,omitempty"`
}

// attachRecordVersion is the format of attachRecord. A record of another
// version is refused at start-up with a message, never guessed at.
const attachRecordVersion = 1

// attachRecord is an export attached to the kernel as /dev/nbd<Index>
// (attach.go): written, durably, before the device is connected and
// deleted once it is disconnected, so a cairnd that restarts reconnects
// every device it served.
type attachRecord struct {
	Version int    `json:"version"`
	Index   int    `json:"index"`
	Disk    string `json:"disk"`
	DiskID  uint64 `json:"disk_id"`
	// Snapshot is the snapshot attached read-only; "" for the live disk.
	Snapshot    string `json:"snapshot,omitempty"`
	Connections int    `json:"connections"`
	// Backend is the device's backend identifier (kernel.Config.Backend):
	// the kernel reconfigures it only for whoever names it.
	Backend string `json:"backend"`
	// ReconnectTimeout is the kernel's dead-connection timeout, in
	// seconds: how long I/O waits for a restarted cairnd.
	ReconnectTimeout int       `json:"reconnect_timeout"`
	Created          time.Time `json:"created"`
}
