package api

import (
	"context"
	"net/http"
	"net/url"
)

// Transfers (docs/export.md): exports of disks and images to image files
// and imports of image files into new disks. The file is read or written
// by the client, with the client's own permissions (cairn runs qemu-img
// against the NBD export a transfer names); cairnd provides what is read
// or written (a snapshot taken for the purpose, new disks), the task that
// shows the progress the client reports, and the cleanup: when the client
// finishes with an error, or stops reporting for LeaseSeconds, cairnd
// deletes what the transfer made (the temporary snapshot, the half-made
// disks).

// Transfer is the answer to a request that starts one: its task (kind
// TaskExport, TaskImageExport or TaskImport, running until the client
// finishes it) and the NBD exports to read or write.
type Transfer struct {
	Task Task `json:"task"`
	// NBDSocket is cairnd's NBD Unix socket (nbd+unix:///EXPORT?socket=...).
	NBDSocket string `json:"nbd_socket"`
	// LeaseSeconds: the client reports progress (POST
	// /v1/tasks/{id}/progress) at least this often, or cairnd ends the
	// transfer as failed and cleans up.
	LeaseSeconds float64        `json:"lease_seconds"`
	Disks        []TransferDisk `json:"disks"`
	// Config is an image's configuration document (image exports).
	Config *Config `json:"config,omitempty"`
	// Source is what an image export was made from (MACHINE@SNAPSHOT).
	Source string `json:"source,omitempty"`
}

// TransferDisk is one disk of a transfer.
type TransferDisk struct {
	Name string `json:"name"` // the disk, or the image's disk
	// Export is the NBD export to read (exports: read-only) or write
	// (imports: the new disk).
	Export    string `json:"export"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size,omitempty"`
	Boot      bool   `json:"boot,omitempty"`
	// Snapshot is the snapshot an export reads; Temporary when it was
	// taken for the export (it is deleted when the transfer ends).
	Snapshot  string `json:"snapshot,omitempty"`
	Temporary bool   `json:"temporary,omitempty"`
	// ChangesContext (incremental exports) is the NBD meta context that
	// reports only the blocks changed since ChangesSince as data
	// (cairn:since:SNAP): qemu's nbd driver reads it with its
	// x-dirty-bitmap option in place of base:allocation.
	ChangesSince   string `json:"changes_since,omitempty"`
	ChangesContext string `json:"changes_context,omitempty"`
}

// ExportRequest is the body of POST /v1/disks/{name}/export.
type ExportRequest struct {
	// Snapshot to export; empty: the live disk, through a snapshot taken
	// for the export (deleted when it ends).
	Snapshot string `json:"snapshot,omitempty"`
	// Consistency of that snapshot: ConsistencyCrash (a disk snapshot),
	// or, for a disk of a machine with a guest agent, ConsistencyAuto
	// (the default) or ConsistencyFilesystem (a machine snapshot with the
	// guest's filesystems frozen).
	Consistency string `json:"consistency,omitempty"`
	// ChangesSince names an earlier snapshot: an incremental export of
	// what changed since it (the answer's changes_context).
	ChangesSince string `json:"changes_since,omitempty"`
}

// ImportRequest is the body of POST /v1/imports: the disks to create
// (sparse, empty) for the client to write, and optionally the machine to
// make of them once the transfer succeeds.
type ImportRequest struct {
	Disks   []ImportDisk   `json:"disks"`
	Machine *ImportMachine `json:"machine,omitempty"`
	// Source names what is imported (a file or directory), for the task.
	Source string `json:"source,omitempty"`
}

// ImportDisk is one disk an import creates.
type ImportDisk struct {
	Name        string `json:"name"`
	Size        Size   `json:"size"`
	BlockSize   Size   `json:"block_size,omitempty"`
	Description string `json:"description,omitempty"`
	// DataBytes is how much data the client will write (an estimate, such
	// as qemu-img measure's): refused when the data directory's
	// filesystem has less free.
	DataBytes uint64 `json:"data_bytes,omitempty"`
}

// ImportMachine is the machine an import creates of its disks, in their
// order, when it succeeds.
type ImportMachine struct {
	Name        string  `json:"name"`
	Config      *Config `json:"config,omitempty"`
	Description string  `json:"description,omitempty"`
	// RenameDisks maps disk names in the configuration to the imported
	// disks' names; each is replaced where it stands as a whole name.
	RenameDisks map[string]string `json:"rename_disks,omitempty"`
}

// TransferProgress is the body of POST /v1/tasks/{id}/progress.
type TransferProgress struct {
	DoneBytes  uint64 `json:"done_bytes"`
	TotalBytes uint64 `json:"total_bytes"`
	Message    string `json:"message,omitempty"`
}

// FinishTransfer is the body of POST /v1/tasks/{id}/finish: no error
// succeeds the transfer, an error fails it (and cairnd cleans up).
type FinishTransfer struct {
	Error string `json:"error,omitempty"`
}

// Transfer task kinds.
const (
	TaskExport      = "export"
	TaskImageExport = "image-export"
	TaskImport      = "import"
)

// ExportDisk starts an export of a disk or one of its snapshots.
func (c *Client) ExportDisk(ctx context.Context, disk string, req ExportRequest) (Transfer, error) {
	return call[Transfer](ctx, c, http.MethodPost, diskPath(disk)+"/export", req)
}

// ExportImage starts an export of an image's disks.
func (c *Client) ExportImage(ctx context.Context, image string) (Transfer, error) {
	return call[Transfer](ctx, c, http.MethodPost, "/v1/images/"+url.PathEscape(image)+"/export", nil)
}

// Import creates the disks of an import for the caller to write.
func (c *Client) Import(ctx context.Context, req ImportRequest) (Transfer, error) {
	return call[Transfer](ctx, c, http.MethodPost, "/v1/imports", req)
}

// ReportProgress reports how far a transfer is and renews its lease.
func (c *Client) ReportProgress(ctx context.Context, task string, p TransferProgress) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, "/v1/tasks/"+url.PathEscape(task)+"/progress", p)
}

// FinishTransfer ends a transfer: errText "" succeeds it.
func (c *Client) FinishTransfer(ctx context.Context, task, errText string) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, "/v1/tasks/"+url.PathEscape(task)+"/finish", FinishTransfer{Error: errText})
}
