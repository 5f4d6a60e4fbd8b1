package api

import (
	"context"
	"net/http"
	"net/url"
)

func machinePath(name string) string { return "/v1/machines/" + url.PathEscape(name) }
func machineSnapPath(machine, snap string) string {
	return machinePath(machine) + "/snapshots/" + url.PathEscape(snap)
}

// Machines lists every machine, by name.
func (c *Client) Machines(ctx context.Context) ([]Machine, error) {
	return get[[]Machine](ctx, c, "/v1/machines")
}

// Machine describes one machine.
func (c *Client) Machine(ctx context.Context, name string) (Machine, error) {
	return get[Machine](ctx, c, machinePath(name))
}

// CreateMachine groups existing disks into a machine.
func (c *Client) CreateMachine(ctx context.Context, req CreateMachineRequest) (Machine, error) {
	return call[Machine](ctx, c, http.MethodPost, "/v1/machines", req)
}

// UpdateMachine changes a machine.
func (c *Client) UpdateMachine(ctx context.Context, name string, req UpdateMachineRequest) (Machine, error) {
	return call[Machine](ctx, c, http.MethodPatch, machinePath(name), req)
}

// DeleteMachine deletes a machine (its disks stay unless opts.WithDisks).
func (c *Client) DeleteMachine(ctx context.Context, name string, opts DeleteMachineOptions) error {
	q := flags(map[string]bool{"force": opts.Force, "with_snapshots": opts.WithSnapshots, "with_disks": opts.WithDisks})
	return c.Do(ctx, http.MethodDelete, withQuery(machinePath(name), q), nil, nil)
}

// CreateMachineSnapshot starts a machine snapshot and returns its task.
func (c *Client) CreateMachineSnapshot(ctx context.Context, machine string, req CreateMachineSnapshotRequest) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, machinePath(machine)+"/snapshots", req)
}

// MachineSnapshots lists a machine's snapshots, oldest first.
func (c *Client) MachineSnapshots(ctx context.Context, machine string) ([]MachineSnapshot, error) {
	return get[[]MachineSnapshot](ctx, c, machinePath(machine)+"/snapshots")
}

// MachineSnapshot describes one machine snapshot.
func (c *Client) MachineSnapshot(ctx context.Context, machine, snap string) (MachineSnapshot, error) {
	return get[MachineSnapshot](ctx, c, machineSnapPath(machine, snap))
}

// DeleteMachineSnapshot deletes a machine snapshot and its members.
func (c *Client) DeleteMachineSnapshot(ctx context.Context, machine, snap string, force bool) (DeleteSnapshotResult, error) {
	path := withQuery(machineSnapPath(machine, snap), flags(map[string]bool{"force": force}))
	return call[DeleteSnapshotResult](ctx, c, http.MethodDelete, path, nil)
}

// RollbackMachine starts rolling every disk of a machine back to a machine
// snapshot and returns the task.
func (c *Client) RollbackMachine(ctx context.Context, machine, snap string, force bool) (Task, error) {
	path := withQuery(machineSnapPath(machine, snap)+"/rollback", flags(map[string]bool{"force": force}))
	return call[Task](ctx, c, http.MethodPost, path, nil)
}

func imagePath(name string) string { return "/v1/images/" + url.PathEscape(name) }

// Images lists every image, by name.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	return get[[]Image](ctx, c, "/v1/images")
}

// Image describes one image.
func (c *Client) Image(ctx context.Context, name string) (Image, error) {
	return get[Image](ctx, c, imagePath(name))
}

// CreateImage starts making an image and returns its task.
func (c *Client) CreateImage(ctx context.Context, req CreateImageRequest) (Task, error) {
	return call[Task](ctx, c, http.MethodPost, "/v1/images", req)
}

// DeleteImage deletes an image.
func (c *Client) DeleteImage(ctx context.Context, name string) (DeleteSnapshotResult, error) {
	return call[DeleteSnapshotResult](ctx, c, http.MethodDelete, imagePath(name), nil)
}
