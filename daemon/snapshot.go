package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// CreateSnapshot takes a crash-consistent snapshot of a disk. It returns
// with the snapshot's record durable and the snapshot copying.
func (d *Daemon) CreateSnapshot(ctx context.Context, disk string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	return d.createSnapshot(ctx, disk, req, nil)
}

// createSnapshot takes a manual snapshot (auto nil) or a policy's
// automatic one: at the quota, an automatic snapshot first evicts the
// disk's oldest automatic snapshot that may go (policy_retention.go).
func (d *Daemon) createSnapshot(ctx context.Context, disk string, req api.CreateSnapshotRequest, auto *autoSnap) (api.Snapshot, error) {
	kind := api.SnapshotManual
	if auto != nil {
		kind = api.SnapshotAuto
	}
	if err := checkSnapshotName(req.Name, kind); err != nil {
		return api.Snapshot{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Snapshot{}, err
	}
	d.mu.Lock()
	err := d.checkChange()
	d.mu.Unlock()
	if err != nil {
		return api.Snapshot{}, err
	}
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.Snapshot{}, err
	}
	d.snapMu.Lock()
	defer d.snapMu.Unlock()
	if _, _, err := d.volume(disk); err != nil {
		return api.Snapshot{}, err // deleted, or being deleted, meanwhile
	}
	if n := len(vol.Snapshots()); n >= d.cfg.SnapshotQuota && auto != nil {
		if err := d.evictOldestAuto(ctx, disk, vol, auto, nil); err != nil {
			return api.Snapshot{}, err
		}
	} else if n >= d.cfg.SnapshotQuota {
		return api.Snapshot{}, errorf(block.ErrQuota, "disk %q already has %d snapshots, its quota (snapshot_quota = %d): delete snapshots it no longer needs (cairn snapshot delete %s NAME) to make room",
			disk, n, d.cfg.SnapshotQuota, disk)
	}
	// Stop well before the store's reserve: a snapshot that could not
	// store a block would only fail.
	if err := d.store.RoomForData(); err != nil {
		return api.Snapshot{}, fmt.Errorf("cannot snapshot disk %q: %w", disk, err)
	}
	info, err := vol.CreateSnapshot(ctx, auto.meta(req, kind))
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	u, err := vol.Usage(ctx, info.Name)
	if err != nil && !errors.Is(err, block.ErrNotFound) {
		return api.Snapshot{}, fmt.Errorf("disk %q: snapshot %q taken, but: %w", disk, info.Name, err)
	}
	d.metrics.tookSnapshot(info)
	d.log.Info("snapshot taken", "disk", disk, "snapshot", info.Name, "seq", info.Seq, "hold", info.Hold, "drain", info.Drain, "written_bytes", u.WrittenBytes)
	out := d.snapToAPI(k, info, u, nil)
	task, err := d.tasks.start(d.bg, copyOutSpec(disk, info.Name), d.copyOutTask(vol, info.Name))
	if err != nil {
		d.log.Warn("no task follows the snapshot's copy-out (it copies out all the same)", "disk", disk, "snapshot", info.Name, "err", err)
	}
	out.Task = task.ID
	return out, nil
}

// snapToAPI describes a snapshot; clients are the NBD clients by export
// (nbdClients; nil: none).
func (d *Daemon) snapToAPI(k *Disk, in cow.SnapshotInfo, u cow.Usage, clients map[string][]api.NBDClient) api.Snapshot {
	export := exportName{k.rec.Name, in.Name}.String()
	return api.Snapshot{
		Disk: k.rec.Name, Name: in.Name, Seq: in.Seq, Description: in.Description, Kind: in.Kind,
		Policy: in.Policy, RetentionDays: in.RetentionDays, Expires: expires(in.Created, in.RetentionDays),
		Created: api.At(in.Created), State: in.State, Progress: in.Progress, Reason: in.Reason, Size: in.Size,
		WrittenBytes: u.WrittenBytes, UniqueBytes: u.Unique.Bytes, UniqueStoredBytes: u.Unique.StoredBytes,
		HoldMicros:  float64(in.Hold) / float64(time.Microsecond),
		DrainMicros: float64(in.Drain) / float64(time.Microsecond),
		Export:      export, Clients: exportClients(clients, export),
	}
}

// ListSnapshots lists a disk's chain, oldest first, with what each holds
// and what deleting it would free.
func (d *Daemon) ListSnapshots(ctx context.Context, disk string) ([]api.Snapshot, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return nil, err
	}
	clients := d.nbdClients()
	infos := vol.Snapshots()
	out := make([]api.Snapshot, 0, len(infos))
	for _, in := range infos {
		u, err := vol.Usage(ctx, in.Name)
		if errors.Is(err, block.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d.snapToAPI(k, in, u, clients))
	}
	return out, nil
}

// GetSnapshot describes one snapshot.
func (d *Daemon) GetSnapshot(ctx context.Context, disk, snap string) (api.Snapshot, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.Snapshot{}, err
	}
	in, err := vol.Snapshot(snap)
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	u, err := vol.Usage(ctx, snap)
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	return d.snapToAPI(k, in, u, d.nbdClients()), nil
}

// SnapshotsCopying counts the snapshots of every disk still copying out.
func (d *Daemon) SnapshotsCopying() int {
	d.mu.Lock()
	var vols []*cow.Volume
	for _, k := range d.disks {
		if k.vol != nil {
			vols = append(vols, k.vol)
		}
	}
	d.mu.Unlock()
	n := 0
	for _, v := range vols {
		for _, s := range v.Snapshots() {
			if s.State == cow.StateCopying {
				n++
			}
		}
	}
	return n
}
