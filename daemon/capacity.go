package daemon

import (
	"context"
	"errors"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// ChainCapacity describes a disk's chain: snapshots, quota, stored bytes
// and what each snapshot alone holds.
func (d *Daemon) ChainCapacity(ctx context.Context, disk string) (api.ChainCapacity, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.ChainCapacity{}, err
	}
	chain, err := d.store.ChainBytes(ctx, k.rec.ID)
	if err != nil {
		return api.ChainCapacity{}, err
	}
	out := api.ChainCapacity{Disk: disk, Quota: d.cfg.SnapshotQuota, StoredBytes: chain.Stored, UncompressedBytes: chain.Uncompressed,
		Entries: chain.Entries, PerSnapshot: []api.SnapshotCapacity{}}
	for _, in := range vol.Snapshots() {
		u, err := vol.Usage(ctx, in.Name)
		if errors.Is(err, block.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return api.ChainCapacity{}, err
		}
		out.PerSnapshot = append(out.PerSnapshot, api.SnapshotCapacity{Name: in.Name, State: in.State, WrittenBytes: u.WrittenBytes,
			UniqueBytes: u.Unique.Bytes, UniqueStoredBytes: u.Unique.StoredBytes})
	}
	out.Snapshots = len(out.PerSnapshot)
	return out, nil
}

// Capacity describes every chain and the store.
func (d *Daemon) Capacity(ctx context.Context) (api.Capacity, error) {
	out := api.Capacity{Chains: []api.ChainCapacity{}}
	for _, disk := range d.ListDisks() {
		if disk.State != api.DiskReady {
			continue
		}
		c, err := d.ChainCapacity(ctx, disk.Name)
		if err != nil {
			if errors.Is(err, block.ErrNotFound) {
				continue // deleted meanwhile
			}
			return api.Capacity{}, err
		}
		out.Chains = append(out.Chains, c)
	}
	st, err := d.StoreStats(ctx)
	out.Store = st
	return out, err
}

// StoreStats describes the chunk store.
func (d *Daemon) StoreStats(ctx context.Context) (api.StoreStats, error) {
	s, err := d.store.Stats(ctx)
	if err != nil {
		return api.StoreStats{}, err
	}
	return api.StoreStats{Chunks: s.Chunks, LogicalBytes: s.LogicalBytes, UniqueBytes: s.UniqueBytes, StoredBytes: s.StoredBytes,
		ReclaimBytes: s.ReclaimBytes, DiskBytes: s.DiskBytes, DataEntries: s.DataEntries, ZeroEntries: s.ZeroEntries}, nil
}
