package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// DeleteDisk deletes a disk: its record, its live image unless it was
// adopted (opts.DeleteAdopted removes an adopted regular file too), and
// its snapshots, which it refuses to do unless opts.WithSnapshots (a
// block.ErrFailed naming how many, with Field with_snapshots). While NBD
// clients, FUSE files or kernel attachments have any of its exports open
// it fails with block.ErrInUse, unless opts.Force: then it detaches the
// kernel attachments, disconnects the NBD clients (requests in flight
// finish) and waits, up to forceTimeout, for every holder to go. No export of the disk opens and no snapshot of it is
// taken once it has begun.
func (d *Daemon) DeleteDisk(ctx context.Context, name string, opts api.DeleteDiskOptions) error {
	d.snapMu.Lock() // no snapshot is taken between the count and the delete
	d.mu.Lock()
	err := d.checkChange()
	var k *Disk
	if err == nil {
		k, err = d.lookup(name)
	}
	if err == nil && k.deleting {
		err = errorf(block.ErrInUse, "disk %q is already being deleted", name)
	}
	if err == nil {
		err = d.refuseDiskDelete(k, opts, nil)
	}
	if err == nil {
		k.deleting = true
	}
	d.mu.Unlock()
	d.snapMu.Unlock()
	if err != nil {
		return err
	}

	wctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	if err := d.waitReleased(wctx, k, anyExport, true); err != nil {
		d.mu.Lock()
		k.deleting = false
		d.mu.Unlock()
		return fmt.Errorf("delete disk %s: %w", name, err)
	}
	return d.removeDisk(k, opts)
}

// refuseDiskDelete says why disk k cannot be deleted with opts, or nil.
// with is the machine being deleted with its disks (its membership is no
// reason). Caller holds d.mu.
func (d *Daemon) refuseDiskDelete(k *Disk, opts api.DeleteDiskOptions, with *machine) error {
	name := k.rec.Name
	if clones := d.clonesOf(k.rec.ID, 0); len(clones) > 0 {
		return refuseClones(fmt.Sprintf("disk %q", name), clones)
	}
	if m := d.machineOf(name); m != nil && m != with {
		return errorf(block.ErrInUse, "disk %q belongs to machine %q: take it out of the machine first (cairn machine set %s --disks ...), or delete the machine with its disks (cairn machine delete %s --with-disks)",
			name, m.rec.Name, m.rec.Name, m.rec.Name)
	}
	if !opts.WithSnapshots {
		if err := d.refuseSnapshots(k); err != nil {
			return err
		}
	}
	if !opts.Force && k.clients(nil) > 0 {
		return fieldError(block.ErrInUse, fieldForce, "disk %q has %s: disconnect or detach them, or delete with force=true to disconnect NBD clients and detach kernel attachments", name, k.holdersText(nil))
	}
	return nil
}

// removeDisk deletes a disk nobody uses any more (deleting is set).
func (d *Daemon) removeDisk(k *Disk, opts api.DeleteDiskOptions) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	name := k.rec.Name
	err := d.store.DeleteRecord(diskKey(name))
	if err == nil {
		err = d.store.Sync()
	}
	if err != nil {
		k.deleting = false
		return fmt.Errorf("delete disk %s: %w", name, err)
	}
	delete(d.disks, name)
	if k.vol != nil && k.rec.Adopted != "" {
		// The adopted file stays: it must hold every write, including
		// ones still redirected to side files for a copying snapshot
		// (which goes with the disk).
		if err := k.vol.Flatten(); err != nil {
			d.log.Warn("merging redirected writes into a deleted disk's adopted image", "disk", name, "err", err)
		}
	}
	if err := k.close(); err != nil {
		d.log.Warn("closing a deleted disk's live image", "disk", name, "err", err)
	}
	d.dropChain(k.rec)
	path := d.livePath(k.rec)
	switch {
	case k.rec.Adopted == "" || opts.DeleteAdopted && isRegular(path):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing a deleted disk's live image", "disk", name, "path", path, "err", err)
		}
	default:
		d.log.Info("kept the adopted live image of a deleted disk", "disk", name, "path", path)
	}
	d.log.Info("disk deleted", "disk", name, "id", k.rec.ID)
	return nil
}

// refuseSnapshots is the error for deleting a disk that has snapshots
// without with_snapshots, or nil when it has none. Caller holds d.mu.
func (d *Daemon) refuseSnapshots(k *Disk) error {
	n, err := d.snapshotCount(k)
	if err != nil {
		return fmt.Errorf("delete disk %s: count its snapshots: %w", k.rec.Name, err)
	}
	if n == 0 {
		return nil
	}
	return fieldError(block.ErrFailed, fieldWithSnapshots,
		"disk %q has %d snapshot(s), which would be deleted with it: delete them first (cairn snapshot list %s), or delete with with_snapshots=true to delete them too",
		k.rec.Name, n, k.rec.Name)
}

// snapshotCount counts a disk's snapshots: its volume's, or for a disk
// whose live image did not open, the snapshot records of its chain.
// Caller holds d.mu.
func (d *Daemon) snapshotCount(k *Disk) (int, error) {
	if k.vol != nil {
		return len(k.vol.Snapshots()), nil
	}
	n := 0
	err := d.store.ListRecords(store.SnapshotPrefix(k.rec.ID), func(string, []byte) error { n++; return nil })
	return n, err
}

func isRegular(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular()
}
