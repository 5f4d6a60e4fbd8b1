package daemon

import (
	"time"

	"github.com/cairn-storage/cairn/store"
)

// Store records of the daemon (store.PutRecord: JSON under the keys of
// store/recordkeys.go). This file is their wire format; change it only
// compatibly.
//
//	store.DiskKey(name)  diskRecord   one per disk
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
}
