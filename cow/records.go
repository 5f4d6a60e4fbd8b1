package cow

import (
	"time"

	"github.com/cairn-storage/cairn/block"
)

// Snapshot states.
const (
	StateCopying = "copying"
	StateReady   = "ready"
	StateFailed  = "failed"
	// StateDeleting: a delete began and has not finished; it is completed
	// at the next start if the daemon stopped part-way.
	StateDeleting = "deleting"
)

// Readable reports whether a snapshot in state can be read (exported,
// opened, rolled back to): copying or ready.
func Readable(state string) bool { return state == StateCopying || state == StateReady }

// errNoStore: the volume was opened without a store, or read-only.
var errNoStore = &block.Error{Kind: block.ErrFailed, Msg: "this volume keeps no snapshots (opened read-only or without a store)"}

func notFound(name string) error {
	return block.Errorf(block.ErrNotFound, "snapshot %q not found", name)
}

// SnapshotMeta is what the caller says about a new snapshot.
type SnapshotMeta struct {
	Name        string
	Description string
	Kind        string // "manual" or "auto"
	// Created is when the snapshot is taken; zero means now. (A caller
	// with a clock of its own, such as the daemon's policy scheduler,
	// passes its time.)
	Created time.Time
	// Policy and RetentionDays describe an automatic snapshot: the policy
	// that took it and how many days after Created it is kept (-1:
	// forever). cow keeps them and never acts on them.
	Policy        string
	RetentionDays int
}

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	Seq         uint64 `json:"seq"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Kind        string `json:"kind"`
	Policy      string `json:"policy,omitempty"`
	// RetentionDays: see SnapshotMeta (0 for a manual snapshot).
	RetentionDays int           `json:"retention_days,omitempty"`
	Created       time.Time     `json:"created"`
	State         string        `json:"state"`
	Progress      float64       `json:"progress"` // 0..100
	Reason        string        `json:"reason,omitempty"`
	Size          int64         `json:"size"`
	Hold          time.Duration `json:"hold_ns"`  // how long the epoch was sealed (writes arriving then wait at most this)
	Drain         time.Duration `json:"drain_ns"` // from the seal until the old epoch's writes in flight had finished
	// CopyBytes is how much its copy-out stores: the blocks pending at
	// the seal and those passed to it since (Progress is of these).
	CopyBytes uint64 `json:"copy_bytes"`
}

// Readable reports whether the snapshot can be read (see Readable).
func (in SnapshotInfo) Readable() bool { return Readable(in.State) }

// The records cow keeps in the store (JSON, under the keys of
// store/recordkeys.go). This is their wire format: change it only
// compatibly.

// snapRecord is one snapshot (store.SnapshotKey).
type snapRecord struct {
	Seq         uint64 `json:"seq"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Kind        string `json:"kind"`
	// Policy and RetentionDays (automatic snapshots only) are optional
	// members: records written before policies existed lack them, and a
	// cairnd of that time reading a newer record ignores them (its
	// automatic snapshots are then kept until deleted by hand).
	Policy        string    `json:"policy,omitempty"`
	RetentionDays int       `json:"retention_days,omitempty"`
	Created       time.Time `json:"created"`
	State         string    `json:"state"`
	Reason        string    `json:"reason,omitempty"`
	Size          int64     `json:"size"`
	HoldNS        int64     `json:"hold_ns"`
	DrainNS       int64     `json:"drain_ns,omitempty"`
	Written       uint64    `json:"written_blocks"` // blocks it sealed (Usage counts what it holds now)
	// Pending is the set of blocks to copy out while copying (bitmap's
	// portable roaring encoding).
	Pending []byte `json:"pending,omitempty"`
}

// chainRecord is a disk's chain bookkeeping (store.ChainKey).
type chainRecord struct {
	NextSeq uint64 `json:"next_seq"` // every sequence below is used or abandoned
	Epoch   uint64 `json:"epoch"`    // the current epoch: the sequence whose seal opened it (0: none)
}
