package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// DeleteSnapshot deletes a snapshot (metadata only: its entries merge into
// its successor). While NBD clients, FUSE files or kernel attachments read
// it, it fails with block.ErrInUse, unless force: then it detaches the
// attachments, disconnects the NBD clients and waits, up to forceTimeout,
// for every reader to go.
func (d *Daemon) DeleteSnapshot(ctx context.Context, disk, snap string, force bool) (api.DeleteSnapshotResult, error) {
	if m, ms, ok := d.memberOf(disk, snap); ok {
		return api.DeleteSnapshotResult{}, errorf(block.ErrInUse, "snapshot %s is part of machine snapshot %s@%s: delete that instead (cairn machine snapshot delete %s %s)",
			exportName{disk, snap}, m, ms, m, ms)
	}
	if err := d.checkNoClones(disk, snap); err != nil {
		return api.DeleteSnapshotResult{}, err
	}
	return d.deleteSnapshot(ctx, disk, snap, force)
}

// checkNoClones refuses to delete snapshot snap of disk (every snapshot
// when snap is "") while clones read through it.
func (d *Daemon) checkNoClones(disk, snap string) error {
	d.mu.Lock()
	k := d.disks[disk]
	d.mu.Unlock()
	if k == nil || k.vol == nil {
		return nil
	}
	seq := uint64(0)
	if snap != "" {
		in, err := k.vol.Snapshot(snap)
		if err != nil {
			return nil // the delete says it is not found
		}
		seq = in.Seq
	}
	d.mu.Lock()
	clones := d.clonesOf(k.rec.ID, seq)
	d.mu.Unlock()
	if len(clones) == 0 {
		return nil
	}
	if snap == "" {
		return refuseClones(fmt.Sprintf("disk %q", disk), clones)
	}
	return refuseClones("snapshot "+exportName{disk, snap}.String(), clones)
}

// deleteSnapshot is DeleteSnapshot without the machine snapshot check.
func (d *Daemon) deleteSnapshot(ctx context.Context, disk, snap string, force bool) (api.DeleteSnapshotResult, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.DeleteSnapshotResult{}, err
	}
	export := exportName{disk, snap}
	wctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	wasHeld := true // a release may race the first refusal: retry once
	for {
		freed, err := vol.DeleteSnapshot(ctx, snap)
		switch {
		case err == nil:
			d.log.Info("snapshot deleted", "disk", disk, "snapshot", snap, "freed_bytes", freed.Bytes, "freed_stored_bytes", freed.StoredBytes)
			if freed.Bytes > 0 {
				d.kickGC()
			}
			return api.DeleteSnapshotResult{FreedBytes: freed.Bytes, FreedStoredBytes: freed.StoredBytes}, nil
		case errors.Is(err, block.ErrInUse) && !force:
			d.mu.Lock()
			who := k.holdersText(onlySnapshot(snap))
			d.mu.Unlock()
			if who == "" {
				who = "a reader"
			}
			return api.DeleteSnapshotResult{}, fieldError(block.ErrInUse, fieldForce, "snapshot %s is being read by %s (NBD export %s, its file in the FUSE view, or a kernel attachment): disconnect or detach them, or delete with force=true to disconnect NBD clients and detach kernel attachments; open FUSE files must be closed", export, who, export)
		case errors.Is(err, block.ErrInUse):
			// Every view is opened through openExport, so the snapshot
			// has no reader once its holders are gone; one that opens
			// meanwhile is disconnected at the next turn. A view without
			// a holder twice in a row is none of the daemon's: give up
			// rather than spin.
			d.mu.Lock()
			held := k.clients(onlySnapshot(snap)) > 0
			d.mu.Unlock()
			if !held && !wasHeld {
				return api.DeleteSnapshotResult{}, fmt.Errorf("disk %q: %w", disk, err)
			}
			wasHeld = held
			if err := d.waitReleased(wctx, k, onlySnapshot(snap), true); err != nil {
				return api.DeleteSnapshotResult{}, fmt.Errorf("delete snapshot %s: %w", export, err)
			}
		default:
			return api.DeleteSnapshotResult{}, fmt.Errorf("disk %q: %w", disk, err)
		}
	}
}

// kickGC gives freed chunks' space back to the filesystem soon, instead of
// at the store's next periodic GC: one collection at a time, in the
// background (the store's Close waits for it).
func (d *Daemon) kickGC() {
	if !d.gcRunning.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer d.gcRunning.Store(false)
		if err := d.store.RunGC(); err != nil {
			d.log.Warn("store garbage collection", "err", err)
		}
	}()
}
