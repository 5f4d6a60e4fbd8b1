package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
)

// Client calls cairnd's control API on a Unix socket. The zero value is not
// usable: set Socket. Methods are safe for concurrent use.
type Client struct {
	Socket string

	once sync.Once
	http *http.Client
}

// ConnError means cairnd could not be reached at all (no socket, nothing
// listening, permission denied).
type ConnError struct {
	Socket string
	Err    error
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("cannot reach cairnd at %s: %v — is it running? start it with `make run` or `systemctl start cairnd`", e.Socket, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

func (c *Client) client() *http.Client {
	c.once.Do(func() {
		var dialer net.Dialer
		c.http = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", c.Socket)
			},
			DisableCompression: true,
		}}
	})
	return c.http
}

// Do sends one request. in (may be nil) is encoded as the JSON body and the
// answer decoded into out (may be nil). An error answer is returned as
// *Error; a failure to connect as *ConnError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://cairnd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client().Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return &ConnError{Socket: c.Socket, Err: opErr.Err}
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			return &Error{Status: resp.StatusCode, Code: CodeInternal,
				Message: fmt.Sprintf("%s %s: HTTP %s: %s", method, path, resp.Status, bytes.TrimSpace(data))}
		}
		eb.Error.Status = resp.StatusCode
		return &eb.Error
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// call sends one request and decodes its answer into a new T.
func call[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var out T
	return out, c.Do(ctx, method, path, in, &out)
}

// get is call for a GET.
func get[T any](ctx context.Context, c *Client, path string) (T, error) {
	return call[T](ctx, c, http.MethodGet, path, nil)
}

// Paths of the API's resources; query parameters are added with withQuery.
func diskPath(name string) string       { return "/v1/disks/" + url.PathEscape(name) }
func snapPath(disk, snap string) string { return diskPath(disk) + "/snapshots/" + url.PathEscape(snap) }

// withQuery adds q to path unless it is empty.
func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// flags are the boolean query parameters that are set, as true.
func flags(set map[string]bool) url.Values {
	q := url.Values{}
	for name, on := range set {
		if on {
			q.Set(name, "true")
		}
	}
	return q
}

// Disks lists every disk, by name.
func (c *Client) Disks(ctx context.Context) ([]Disk, error) {
	return get[[]Disk](ctx, c, "/v1/disks")
}

// Disk returns one disk.
func (c *Client) Disk(ctx context.Context, name string) (Disk, error) {
	return get[Disk](ctx, c, diskPath(name))
}

// CreateDisk creates (or adopts) a disk.
func (c *Client) CreateDisk(ctx context.Context, req CreateDiskRequest) (Disk, error) {
	return call[Disk](ctx, c, http.MethodPost, "/v1/disks", req)
}

// GrowDisk enlarges a disk to size.
func (c *Client) GrowDisk(ctx context.Context, name string, size Size) (Disk, error) {
	return call[Disk](ctx, c, http.MethodPost, diskPath(name)+"/grow", GrowDiskRequest{Size: size})
}

// Flatten starts a task that makes a clone independent of its parent.
func (c *Client) Flatten(ctx context.Context, name string, req FlattenRequest) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, diskPath(name)+"/flatten", req)
}

// DeleteDisk deletes a disk.
func (c *Client) DeleteDisk(ctx context.Context, name string, opts DeleteDiskOptions) error {
	q := flags(map[string]bool{"force": opts.Force, "delete_adopted": opts.DeleteAdopted, "with_snapshots": opts.WithSnapshots})
	return c.Do(ctx, http.MethodDelete, withQuery(diskPath(name), q), nil, nil)
}

// CreateSnapshot takes a snapshot; it answers at once with the snapshot
// copying.
func (c *Client) CreateSnapshot(ctx context.Context, disk string, req CreateSnapshotRequest) (Snapshot, error) {
	return call[Snapshot](ctx, c, http.MethodPost, diskPath(disk)+"/snapshots", req)
}

// Snapshots lists a disk's chain, oldest first.
func (c *Client) Snapshots(ctx context.Context, disk string) ([]Snapshot, error) {
	return get[[]Snapshot](ctx, c, diskPath(disk)+"/snapshots")
}

// Snapshot describes one snapshot.
func (c *Client) Snapshot(ctx context.Context, disk, snap string) (Snapshot, error) {
	return get[Snapshot](ctx, c, snapPath(disk, snap))
}

// DeleteSnapshot deletes a snapshot; force disconnects its NBD readers.
func (c *Client) DeleteSnapshot(ctx context.Context, disk, snap string, force bool) (DeleteSnapshotResult, error) {
	path := withQuery(snapPath(disk, snap), flags(map[string]bool{"force": force}))
	return call[DeleteSnapshotResult](ctx, c, http.MethodDelete, path, nil)
}

// Rollback starts rolling a disk back to a snapshot and returns the task;
// force disconnects writers first.
func (c *Client) Rollback(ctx context.Context, disk, snap string, force bool) (Task, error) {
	path := withQuery(snapPath(disk, snap)+"/rollback", flags(map[string]bool{"force": force}))
	return call[Task](ctx, c, http.MethodPost, path, nil)
}

// Changes returns the ranges changed after from up to to ("" = live).
func (c *Client) Changes(ctx context.Context, disk, from, to string) (Changes, error) {
	q := url.Values{"from": {from}}
	if to != "" {
		q.Set("to", to)
	}
	return get[Changes](ctx, c, withQuery(diskPath(disk)+"/changes", q))
}

// ChainCapacity describes one disk's chain.
func (c *Client) ChainCapacity(ctx context.Context, disk string) (ChainCapacity, error) {
	return get[ChainCapacity](ctx, c, diskPath(disk)+"/capacity")
}

// Capacity describes every chain and the store.
func (c *Client) Capacity(ctx context.Context) (Capacity, error) {
	return get[Capacity](ctx, c, "/v1/capacity")
}

// StoreStats describes the chunk store.
func (c *Client) StoreStats(ctx context.Context) (StoreStats, error) {
	return get[StoreStats](ctx, c, "/v1/store")
}

// Verify starts a verify task.
func (c *Client) Verify(ctx context.Context, req VerifyRequest) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, "/v1/verify", req)
}

// Tasks lists the tasks f selects, newest first.
func (c *Client) Tasks(ctx context.Context, f TaskFilter) ([]Task, error) {
	q := url.Values{}
	for k, v := range map[string]string{"kind": f.Kind, "state": f.State, "disk": f.Disk, "target": f.Target} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return get[[]Task](ctx, c, withQuery("/v1/tasks", q))
}

// CancelTask stops a task that can be stopped safely.
func (c *Client) CancelTask(ctx context.Context, id string) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, "/v1/tasks/"+url.PathEscape(id)+"/cancel", nil)
}

// Task describes one task.
func (c *Client) Task(ctx context.Context, id string) (Task, error) {
	return get[Task](ctx, c, "/v1/tasks/"+url.PathEscape(id))
}

// Exports lists the NBD exports and their connected clients.
func (c *Client) Exports(ctx context.Context) ([]Export, error) {
	return get[[]Export](ctx, c, "/v1/exports")
}

// Info describes the daemon.
func (c *Client) Info(ctx context.Context) (Info, error) {
	return get[Info](ctx, c, "/v1/info")
}

// Health asks whether the daemon is healthy. A 503 answer is returned as
// Health{Status: "unavailable"} with a nil error.
func (c *Client) Health(ctx context.Context) (Health, error) {
	out, err := get[Health](ctx, c, "/v1/health")
	var apiErr *Error
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable {
		return Health{Status: "unavailable", Problems: []string{apiErr.Message}}, nil
	}
	return out, err
}
