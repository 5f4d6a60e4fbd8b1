package api

import (
	"context"
	"net/http"
	"net/url"
	"strings"
)

// Attachment is an export attached to the host's kernel as a block device
// (GET /v1/attachments/{device}): cairnd serves /dev/nbdN over sockets it
// handed the kernel's nbd driver, and reconnects them after a restart.
type Attachment struct {
	Device   string `json:"device"` // /dev/nbdN
	Export   string `json:"export"` // DISK, or DISK@SNAPSHOT (read-only)
	Disk     string `json:"disk"`
	Snapshot string `json:"snapshot,omitempty"`
	ReadOnly bool   `json:"read_only"`
	Size     int64  `json:"size"`
	// Connections is how many sockets the device has; Connected how many
	// cairnd serves now.
	Connections int `json:"connections"`
	Connected   int `json:"connected"`
	// ReconnectTimeout: how long, in seconds, the device's I/O waits for
	// cairnd to come back before it fails.
	ReconnectTimeout int    `json:"reconnect_timeout"`
	State            string `json:"state"`           // AttachConnected, AttachReconnecting or AttachFailed
	Error            string `json:"error,omitempty"` // why it is reconnecting or failed
	Created          Time   `json:"created"`
}

// Attachment states.
const (
	// AttachConnected: every socket is served.
	AttachConnected = "connected"
	// AttachReconnecting: some socket ended and cairnd is giving the
	// kernel a new one; I/O waits meanwhile.
	AttachReconnecting = "reconnecting"
	// AttachFailed: cairnd could not reconnect the device (Error says
	// why); it retries at its next start. Detach it to forget it.
	AttachFailed = "failed"
)

// AttachRequest is the body of POST /v1/attachments.
type AttachRequest struct {
	// Export is what to attach: DISK (read-write) or DISK@SNAPSHOT
	// (read-only).
	Export string `json:"export"`
	// Device is the device to use, /dev/nbdN; empty: the first free one.
	Device string `json:"device,omitempty"`
	// Connections is the number of sockets (1 to 16; 0: cairnd's default).
	Connections int `json:"connections,omitempty"`
	// ReconnectTimeout is how long, in seconds, I/O waits for a restarted
	// cairnd (0: cairnd's default).
	ReconnectTimeout int `json:"reconnect_timeout,omitempty"`
}

// DetachOptions are the query parameters of DELETE /v1/attachments/{device}.
type DetachOptions struct {
	// Force detaches a device that is mounted or held open (force=true):
	// its users get I/O errors.
	Force bool
}

// attachPath is the resource of device /dev/nbdN (or nbdN).
func attachPath(device string) string {
	return "/v1/attachments/" + url.PathEscape(strings.TrimPrefix(device, "/dev/"))
}

// Attachments lists the kernel attachments, by device.
func (c *Client) Attachments(ctx context.Context) ([]Attachment, error) {
	return get[[]Attachment](ctx, c, "/v1/attachments")
}

// Attachment describes the attachment of device (/dev/nbdN or nbdN).
func (c *Client) Attachment(ctx context.Context, device string) (Attachment, error) {
	return get[Attachment](ctx, c, attachPath(device))
}

// Attach attaches an export to the kernel as /dev/nbdN.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (Attachment, error) {
	return call[Attachment](ctx, c, http.MethodPost, "/v1/attachments", req)
}

// Detach disconnects device (/dev/nbdN or nbdN) and forgets its attachment.
func (c *Client) Detach(ctx context.Context, device string, opts DetachOptions) error {
	return c.Do(ctx, http.MethodDelete, withQuery(attachPath(device), flags(map[string]bool{"force": opts.Force})), nil, nil)
}
