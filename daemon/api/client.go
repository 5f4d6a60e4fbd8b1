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

// Disks lists every disk, by name.
func (c *Client) Disks(ctx context.Context) ([]Disk, error) {
	var out []Disk
	return out, c.Do(ctx, http.MethodGet, "/v1/disks", nil, &out)
}

// Disk returns one disk.
func (c *Client) Disk(ctx context.Context, name string) (Disk, error) {
	var out Disk
	return out, c.Do(ctx, http.MethodGet, "/v1/disks/"+url.PathEscape(name), nil, &out)
}

// CreateDisk creates (or adopts) a disk.
func (c *Client) CreateDisk(ctx context.Context, req CreateDiskRequest) (Disk, error) {
	var out Disk
	return out, c.Do(ctx, http.MethodPost, "/v1/disks", req, &out)
}

// GrowDisk enlarges a disk to size.
func (c *Client) GrowDisk(ctx context.Context, name string, size Size) (Disk, error) {
	var out Disk
	return out, c.Do(ctx, http.MethodPost, "/v1/disks/"+url.PathEscape(name)+"/grow", GrowDiskRequest{Size: size}, &out)
}

// DeleteDisk deletes a disk.
func (c *Client) DeleteDisk(ctx context.Context, name string, opts DeleteDiskOptions) error {
	q := url.Values{}
	if opts.Force {
		q.Set("force", "true")
	}
	if opts.DeleteAdopted {
		q.Set("delete_adopted", "true")
	}
	path := "/v1/disks/" + url.PathEscape(name)
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return c.Do(ctx, http.MethodDelete, path, nil, nil)
}

// Exports lists the NBD exports and their connected clients.
func (c *Client) Exports(ctx context.Context) ([]Export, error) {
	var out []Export
	return out, c.Do(ctx, http.MethodGet, "/v1/exports", nil, &out)
}

// Info describes the daemon.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	return out, c.Do(ctx, http.MethodGet, "/v1/info", nil, &out)
}

// Health asks whether the daemon is healthy. A 503 answer is returned as
// Health{Status: "unavailable"} with a nil error.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	err := c.Do(ctx, http.MethodGet, "/v1/health", nil, &out)
	var apiErr *Error
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable {
		return Health{Status: "unavailable", Problems: []string{apiErr.Message}}, nil
	}
	return out, err
}
