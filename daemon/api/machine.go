package api

// Machine is a VM as Cairn sees it (GET /v1/machines/{name}): its disks in
// order (the first is the boot disk unless said otherwise), its
// configuration document, and the Unix socket of its guest agent.
type Machine struct {
	Name   string   `json:"name"`
	Disks  []string `json:"disks"`
	Config *Config  `json:"config,omitempty"`
	// AgentSocket is the host's end of the guest agent's virtio-serial
	// port (qemu -chardev socket,path=...); empty: no agent, snapshots
	// are crash-consistent.
	AgentSocket string `json:"agent_socket,omitempty"`
	Description string `json:"description,omitempty"`
	Created     Time   `json:"created"`
	Snapshots   int    `json:"snapshots"` // machine snapshots
	// Policy is the automatic snapshot policy applied to the machine, if any.
	Policy string `json:"policy,omitempty"`
}

// Config is a VM's configuration document, kept verbatim: a libvirt domain
// XML, a JSON blob, whatever the caller's tooling uses.
type Config struct {
	MediaType string `json:"media_type"` // e.g. application/xml, application/json
	Data      string `json:"data"`       // the document itself (UTF-8)
}

// CreateMachineRequest is the body of POST /v1/machines.
type CreateMachineRequest struct {
	Name  string   `json:"name"`
	Disks []string `json:"disks,omitempty"` // existing disks, in order; each in at most one machine
	// FromImage provisions the machine from an image instead: every disk an
	// instant clone of the image's, named NAME-DISK, and the image's
	// configuration with its disk names rewritten to the new ones (the
	// answer's config, for libvirt to define).
	FromImage   string  `json:"from_image,omitempty"`
	Config      *Config `json:"config,omitempty"`
	AgentSocket string  `json:"agent_socket,omitempty"`
	Description string  `json:"description,omitempty"`
}

// UpdateMachineRequest is the body of PATCH /v1/machines/{name}: the fields
// given replace the machine's (an empty agent_socket or config removes it).
type UpdateMachineRequest struct {
	Disks       *[]string `json:"disks,omitempty"`
	Config      *Config   `json:"config,omitempty"`
	AgentSocket *string   `json:"agent_socket,omitempty"`
	Description *string   `json:"description,omitempty"`
}

// DeleteMachineOptions are the query parameters of DELETE /v1/machines/{name}.
type DeleteMachineOptions struct {
	// WithSnapshots also deletes its machine snapshots (with_snapshots=true).
	WithSnapshots bool
	// WithDisks also deletes its disks (with_disks=true).
	WithDisks bool
	// Force disconnects NBD clients of what is deleted (force=true).
	Force bool
}

// Consistency levels of a machine snapshot.
const (
	ConsistencyCrash      = "crash"      // every disk at one instant, as a power cut would leave them
	ConsistencyFilesystem = "filesystem" // the guest's filesystems frozen through its agent at that instant
	ConsistencyAuto       = "auto"       // filesystem when the agent answers, crash otherwise (and say so)
)

// CreateMachineSnapshotRequest is the body of POST /v1/machines/{name}/snapshots.
type CreateMachineSnapshotRequest struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Consistency is ConsistencyCrash, ConsistencyFilesystem or
	// ConsistencyAuto (the default).
	Consistency string `json:"consistency,omitempty"`
}

// MachineSnapshot is one snapshot of every disk of a machine at one instant
// (GET /v1/machines/{name}/snapshots/{snapshot}).
type MachineSnapshot struct {
	Machine     string `json:"machine"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Kind, Policy, RetentionDays and Expires: as a disk snapshot's
	// (Snapshot); an automatic machine snapshot is taken by a policy
	// applied to the machine.
	Kind          string `json:"kind"`
	Policy        string `json:"policy,omitempty"`
	RetentionDays int    `json:"retention_days,omitempty"`
	Expires       *Time  `json:"expires,omitempty"`
	Created       Time   `json:"created"`
	// State aggregates the members': copying while any copies, ready when
	// all are, failed if any failed, deleting while it is deleted.
	State    string  `json:"state"`
	Progress float64 `json:"progress"` // percent of all members' blocks in the store
	Reason   string  `json:"reason,omitempty"`
	// Requested and Consistency: what was asked and what was reached
	// (auto falls back to crash when the agent does not freeze; Reason
	// then says why).
	Requested   string `json:"requested"`
	Consistency string `json:"consistency"`
	// FrozenMicros: how long the guest's filesystems were frozen, from the
	// freeze command to the thaw's answer (0 for crash-consistent). When
	// the thaw did not get through at once (cairnd retries it), until
	// cairnd gave up on that first attempt.
	FrozenMicros float64                 `json:"frozen_us"`
	HoldMicros   float64                 `json:"hold_us"` // how long every disk's writes were held for the instant
	Members      []MachineSnapshotMember `json:"members"`
	Config       *Config                 `json:"config,omitempty"` // the machine's configuration as it was
}

// MachineSnapshotMember is one disk's snapshot in a machine snapshot: an
// ordinary snapshot (NBD export DISK@SNAPSHOT) in the disk's chain.
type MachineSnapshotMember struct {
	Disk     string  `json:"disk"`
	Snapshot string  `json:"snapshot"`
	State    string  `json:"state"`
	Progress float64 `json:"progress"`
	Export   string  `json:"export"`
}

// Task kinds of machines.
const (
	TaskMachineSnapshot = "machine-snapshot"
	TaskMachineRollback = "machine-rollback"
)
