// Package api holds the JSON types of cairnd's control API (HTTP/1.1 + JSON
// on a Unix socket, under /v1/; docs/api/openapi.yaml is the reference) and a
// small client for it. The daemon encodes these types and the cairn CLI
// decodes them, so the wire format lives here and nowhere else.
package api

// Disk is one virtual disk (GET /v1/disks/{name}).
type Disk struct {
	Name        string      `json:"name"`
	ID          uint64      `json:"id"`
	Size        int64       `json:"size"`       // bytes
	BlockSize   int         `json:"block_size"` // bytes: the unit of change tracking
	Description string      `json:"description,omitempty"`
	Path        string      `json:"path"`    // the live image: a raw file or a block device
	Adopted     bool        `json:"adopted"` // the live image was an existing file or device
	Created     Time        `json:"created"`
	Export      string      `json:"export"`  // the NBD export name of the live disk
	Clients     []NBDClient `json:"clients"` // NBD clients connected to its live export, as in Export
	State       string      `json:"state"`   // DiskReady or DiskError
	// Error says why the disk is in DiskError, or, on a ready disk, why
	// its flushes fail (its live image could not be synced).
	Error string `json:"error,omitempty"`
	// Parent is what a clone reads its unwritten blocks through
	// (DISK@SNAPSHOT, or IMAGE/DISK), and Depth how many parents it has;
	// Flattened is the parent a flattened clone was made from.
	Parent    string `json:"parent,omitempty"`
	Depth     int    `json:"depth,omitempty"`
	Flattened string `json:"flattened,omitempty"`
	// CopyOnRead: a clone's reads copy what they read from its parent
	// into its own image.
	CopyOnRead bool `json:"copy_on_read,omitempty"`
	// Policy is the automatic snapshot policy applied to the disk, if any.
	Policy string `json:"policy,omitempty"`
}

// Disk states.
const (
	DiskReady = "ready"
	// DiskError: the live image could not be opened when cairnd started
	// (Disk.Error says why); the disk is not exported until it is fixed and
	// cairnd restarted, and it can be deleted.
	DiskError = "error"
)

// CreateDiskRequest is the body of POST /v1/disks.
type CreateDiskRequest struct {
	Name string `json:"name"`
	// Size is required unless Adopt is set (an adopted disk takes the size
	// of its file or device).
	Size Size `json:"size,omitempty"`
	// BlockSize defaults to 64 KiB: a power of two from 4 KiB to 4 MiB.
	BlockSize   Size   `json:"block_size,omitempty"`
	Description string `json:"description,omitempty"`
	// Adopt is the absolute path of an existing raw file or block device
	// to use as the live image instead of a new file.
	Adopt string `json:"adopt,omitempty"`
	// From makes the disk a clone of a snapshot, DISK@SNAPSHOT: made at
	// once, whatever the size, its unwritten blocks read through to the
	// snapshot (size and block size come from it).
	From string `json:"from,omitempty"`
	// CopyOnRead (with From): the clone's reads copy the blocks they
	// read from the snapshot into its own image, so what the guest reads
	// once is local from then on.
	CopyOnRead bool `json:"copy_on_read,omitempty"`
}

// FlattenRequest is the body of POST /v1/disks/{name}/flatten.
type FlattenRequest struct {
	// Hydrate also copies the clone's unwritten blocks into its live
	// image, at most Rate bytes per second (empty: no bound).
	Hydrate bool `json:"hydrate,omitempty"`
	Rate    Size `json:"rate,omitempty"`
}

// GrowDiskRequest is the body of POST /v1/disks/{name}/grow.
type GrowDiskRequest struct {
	Size Size `json:"size"`
}

// DeleteDiskOptions are the query parameters of DELETE /v1/disks/{name}.
type DeleteDiskOptions struct {
	// Force disconnects connected NBD clients first (force=true).
	Force bool
	// DeleteAdopted also removes an adopted regular file (delete_adopted=true);
	// without it an adopted live image is left in place.
	DeleteAdopted bool
	// WithSnapshots deletes the disk's snapshots with it
	// (with_snapshots=true); without it a disk that has snapshots is not
	// deleted.
	WithSnapshots bool
}

// Export is one NBD export name (GET /v1/exports).
type Export struct {
	Name        string      `json:"name"`
	Disk        string      `json:"disk"`
	ReadOnly    bool        `json:"read_only"`
	Size        int64       `json:"size"`
	Description string      `json:"description,omitempty"`
	Clients     []NBDClient `json:"clients"`
}

// NBDClient is one connected NBD client.
type NBDClient struct {
	ID       uint64 `json:"id"`
	Remote   string `json:"remote"`
	Since    Time   `json:"since"`
	ReadOnly bool   `json:"read_only"`
}

// Info describes the running daemon (GET /v1/info).
type Info struct {
	Version       string  `json:"version"`
	PID           int     `json:"pid"`
	Started       Time    `json:"started"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	DataDir       string  `json:"data_dir"`
	APISocket     string  `json:"api_socket"`
	NBDSocket     string  `json:"nbd_socket"`
	NBDListen     string  `json:"nbd_listen,omitempty"`
	// MetricsListen is where Prometheus metrics are served on TCP
	// (--metrics-listen), when they are.
	MetricsListen string `json:"metrics_listen,omitempty"`
	Disks         int    `json:"disks"`
	// Store is the snapshot store's filesystem and reserve.
	Store StoreSpace `json:"store"`
}

// Space states (StoreSpace.State), from best to worst.
const (
	SpaceOK      = "ok"      // room to spare
	SpaceLow     = "low"     // less than twice the reserve's size free: snapshots will soon stop
	SpaceFull    = "full"    // less than the reserve's size free: new snapshots are refused, copying ones fail
	SpaceReserve = "reserve" // the filesystem is full and the store runs on its reserve
)

// StoreSpace is the snapshot store's filesystem as cairnd sees it
// (docs/snapshots.md, "When the store's filesystem fills up").
type StoreSpace struct {
	Dir string `json:"dir"`
	// FreeBytes is what the filesystem has free (the reserve is not free).
	FreeBytes uint64 `json:"free_bytes"`
	// ReserveBytes is the reserve's full size (store_reserve); held is
	// what it holds now, less while the store's upkeep uses it.
	ReserveBytes     uint64 `json:"reserve_bytes"`
	ReserveHeldBytes uint64 `json:"reserve_held_bytes"`
	// Snapshots are refused and copying ones fail below StopBelowBytes
	// free; cairnd warns below WarnBelowBytes.
	StopBelowBytes uint64 `json:"stop_below_bytes"`
	WarnBelowBytes uint64 `json:"warn_below_bytes"`
	State          string `json:"state"` // SpaceOK, SpaceLow, SpaceFull or SpaceReserve
	// Warning says what is wrong and what to do; empty when State is ok.
	Warning string `json:"warning,omitempty"`
	// Broken says why the store takes no more changes (a write to its
	// disk failed) and what to do; empty while it is healthy.
	Broken string `json:"broken,omitempty"`
}

// Health is the body of GET /v1/health: status "ok" with 200, or
// "unavailable" with 503 and the failed checks in Problems. Warnings are
// things an operator should act on that do not make cairnd unhealthy (a
// filling store).
type Health struct {
	Status   string   `json:"status"`
	Problems []string `json:"problems,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error Error `json:"error"`
}

// Error codes (ErrorBody.Error.Code) and the HTTP status each comes with.
const (
	CodeInvalidArgument      = "invalid_argument"       // 400: Message names the field
	CodePermissionDenied     = "permission_denied"      // 403: Message names the role or setting needed
	CodeNotFound             = "not_found"              // 404
	CodeMethodNotAllowed     = "method_not_allowed"     // 405, with Allow
	CodeAlreadyExists        = "already_exists"         // 409
	CodeInUse                = "in_use"                 // 409: e.g. NBD clients connected
	CodeFailedPrecondition   = "failed_precondition"    // 409: the disk's state forbids it
	CodeQuotaExceeded        = "quota_exceeded"         // 409: the snapshot chain is full
	CodeRequestTimeout       = "request_timeout"        // 408: the body was not sent in time
	CodePayloadTooLarge      = "payload_too_large"      // 413: bodies are capped at 1 MiB
	CodeUnsupportedMediaType = "unsupported_media_type" // 415: send application/json
	CodeInternal             = "internal"               // 500: the cause is in cairnd's log
	CodeInsufficientStorage  = "insufficient_storage"   // 507
	CodeUnavailable          = "unavailable"            // 503: shutting down
)

// Error is an error answered by cairnd.
type Error struct {
	Status  int    `json:"-"` // HTTP status
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field the error is about (a JSON member,
	// path segment or query parameter, as the API spells it), when it is
	// about one.
	Field string `json:"field,omitempty"`
}

func (e *Error) Error() string { return e.Message }
