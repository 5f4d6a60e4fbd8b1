package api

// Snapshot is one snapshot of a disk (GET /v1/disks/{name}/snapshots/{snapshot}).
type Snapshot struct {
	Disk        string `json:"disk"`
	Name        string `json:"name"`
	Seq         uint64 `json:"seq"` // position in the chain: increasing, never reused
	Description string `json:"description,omitempty"`
	Kind        string `json:"kind"` // SnapshotManual or SnapshotAuto
	// Policy, RetentionDays and Expires describe an automatic snapshot:
	// the policy that took it, how long it is kept (RetentionForever: until
	// deleted by hand) and when its retention ends (none: forever).
	Policy        string `json:"policy,omitempty"`
	RetentionDays int    `json:"retention_days,omitempty"`
	Expires       *Time  `json:"expires,omitempty"`
	Created       Time   `json:"created"`
	// State is SnapshotCopying (Progress says how far), SnapshotReady,
	// SnapshotFailed (Reason says why) or SnapshotDeleting.
	State    string  `json:"state"`
	Progress float64 `json:"progress"` // percent of its blocks in the store
	Reason   string  `json:"reason,omitempty"`
	Size     int64   `json:"size"` // the disk's size when it was taken
	// WrittenBytes: the blocks whose version it holds itself, changed
	// since the snapshot before it in the chain (a deleted predecessor's
	// blocks that passed to it count; so do those a deleted newest
	// snapshot left to the live epoch when this one was taken).
	WrittenBytes uint64 `json:"written_bytes"`
	// UniqueBytes: bytes (uncompressed) of the chunks only it references:
	// what deleting it frees now, as DeleteSnapshotResult.FreedBytes counts.
	UniqueBytes uint64 `json:"unique_bytes"`
	// UniqueStoredBytes: the same chunks as the store keeps them
	// (compressed), as DeleteSnapshotResult.FreedStoredBytes counts.
	UniqueStoredBytes uint64 `json:"unique_stored_bytes"`
	// HoldMicros: how long guest writes were held to take it.
	HoldMicros float64 `json:"hold_us"`
	// DrainMicros: from the seal until the writes already in flight in
	// the sealed epoch had finished (only writes that had to copy one of
	// the snapshot's blocks out first waited that long).
	DrainMicros float64     `json:"drain_us"`
	Export      string      `json:"export"`  // its read-only NBD export, DISK@SNAPSHOT
	Clients     []NBDClient `json:"clients"` // NBD clients reading its export, as in Export
	// Task is the copy-out's task, in the answer to the snapshot's
	// creation (GET /v1/tasks/{id}).
	Task string `json:"task,omitempty"`
}

// Snapshot kinds and states.
const (
	SnapshotManual   = "manual"
	SnapshotAuto     = "auto"
	SnapshotCopying  = "copying"
	SnapshotReady    = "ready"
	SnapshotFailed   = "failed"
	SnapshotDeleting = "deleting"
)

// CreateSnapshotRequest is the body of POST /v1/disks/{name}/snapshots.
type CreateSnapshotRequest struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// DeleteSnapshotResult answers DELETE /v1/disks/{name}/snapshots/{snapshot}.
type DeleteSnapshotResult struct {
	FreedBytes       uint64 `json:"freed_bytes"`        // uncompressed bytes of the chunks released
	FreedStoredBytes uint64 `json:"freed_stored_bytes"` // the same chunks as the store kept them (compressed)
}

// Changes answers GET /v1/disks/{name}/changes?from=S1[&to=S2]: the ranges
// changed after snapshot From up to snapshot To (To empty: the live disk).
type Changes struct {
	Disk         string   `json:"disk"`
	From         string   `json:"from"`
	To           string   `json:"to,omitempty"`
	BlockSize    int      `json:"block_size"`
	Size         int64    `json:"size"`
	ChangedBytes int64    `json:"changed_bytes"`
	Extents      []Extent `json:"extents"`
}

// Extent is a byte range.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// ChainCapacity is the capacity of one disk's snapshot chain
// (GET /v1/disks/{name}/capacity).
type ChainCapacity struct {
	Disk        string `json:"disk"`
	Snapshots   int    `json:"snapshots"`
	Quota       int    `json:"quota"`
	StoredBytes uint64 `json:"stored_bytes"` // stored (compressed) bytes of the distinct chunks the chain references (shared chunks counted in full)
	// UncompressedBytes: the same chunks uncompressed.
	UncompressedBytes uint64             `json:"uncompressed_bytes"`
	Entries           uint64             `json:"entries"`
	PerSnapshot       []SnapshotCapacity `json:"per_snapshot"`
}

// SnapshotCapacity is one snapshot's share of its chain.
type SnapshotCapacity struct {
	Name              string `json:"name"`
	State             string `json:"state"`
	WrittenBytes      uint64 `json:"written_bytes"`       // as Snapshot.WrittenBytes
	UniqueBytes       uint64 `json:"unique_bytes"`        // as Snapshot.UniqueBytes
	UniqueStoredBytes uint64 `json:"unique_stored_bytes"` // as Snapshot.UniqueStoredBytes
}

// Capacity is the capacity of every chain and of the whole store
// (GET /v1/capacity).
type Capacity struct {
	Chains []ChainCapacity `json:"chains"`
	Store  StoreStats      `json:"store"`
}

// StoreStats describe the chunk store (GET /v1/store).
type StoreStats struct {
	Chunks       uint64 `json:"chunks"`
	LogicalBytes uint64 `json:"logical_bytes"` // what all snapshots would take without dedup and compression
	UniqueBytes  uint64 `json:"unique_bytes"`  // after dedup
	StoredBytes  uint64 `json:"stored_bytes"`  // after dedup and compression
	ReclaimBytes uint64 `json:"reclaimable_bytes"`
	DiskBytes    uint64 `json:"disk_bytes"` // the store's directory on disk
	DataEntries  uint64 `json:"data_entries"`
	ZeroEntries  uint64 `json:"zero_entries"`
}
