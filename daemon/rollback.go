package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// settleTimeout bounds how long a rollback waits for the live export's
// clients that have just disconnected to be released.
const settleTimeout = time.Second

// Rollback starts rolling a disk back to a snapshot as a task. Clients of
// the live disk, kernel attachments among them, must be gone (force
// disconnects and detaches them); no new ones connect until the rollback
// ends.
func (d *Daemon) Rollback(ctx context.Context, disk, snap string, force bool) (api.Task, error) {
	p, err := d.prepareRollback(ctx, disk, snap, force)
	if err != nil {
		return api.Task{}, err
	}
	d.log.Info("rollback started", "disk", disk, "snapshot", snap)
	task, err := d.tasks.start(d.bg, taskSpec{kind: api.TaskRollback, disk: disk, target: snap, unit: unitBytes,
		notCancellable: notCancellableRollback}, func(ctx context.Context, progress progressFunc) (any, error) {
		defer p.done()
		defer d.fuseChanged(disk)
		bs := uint64(p.vol.BlockSize())
		err := p.vol.Rollback(ctx, snap, func(done, total uint64) { progress(done*bs, total*bs) })
		if err != nil {
			d.log.Error("rollback failed", "disk", disk, "snapshot", snap, "err", err)
		} else {
			d.log.Info("rollback done", "disk", disk, "snapshot", snap)
		}
		return nil, err
	})
	if err != nil {
		p.done()
	}
	return task, err
}

// notCancellableRollback is why a rollback is not stopped half-way.
const notCancellableRollback = "a rollback stopped half-way leaves the disk neither as it was nor as the snapshot; let it finish (run it again if it was interrupted)"

// rollbackPrep is a disk ready to be rolled back: its live export has no
// clients and refuses new ones until done is called.
type rollbackPrep struct {
	disk string
	vol  *cow.Volume
	done func()
}

// prepareRollback checks that disk can be rolled back to snap now and
// closes its live export to new clients (done reopens it).
func (d *Daemon) prepareRollback(ctx context.Context, disk, snap string, force bool) (*rollbackPrep, error) {
	d.settleLiveClients(ctx, disk)
	d.mu.Lock()
	k, err := d.liveDisk(disk)
	if err == nil && k.rollingBack {
		err = errorf(block.ErrInUse, "disk %q is already being rolled back", disk)
	}
	if err == nil && !force && k.clients(liveExport) > 0 {
		err = fieldError(block.ErrInUse, fieldForce, "disk %q has %s on its live export: stop the VM, disconnect or detach them, or roll back with force=true to disconnect NBD clients and detach kernel attachments", disk, k.holdersText(liveExport))
	}
	if err != nil {
		d.mu.Unlock()
		return nil, err
	}
	vol := k.vol
	k.rollingBack = true
	d.mu.Unlock()
	done := func() {
		d.mu.Lock()
		k.rollingBack = false
		d.mu.Unlock()
	}
	in, err := vol.Snapshot(snap)
	if err == nil && !in.Readable() {
		err = errorf(block.ErrFailed, "snapshot %s is %s and cannot be rolled back to: %s", exportName{disk, snap}, in.State, in.Reason)
	}
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, forceTimeout)
		err = d.waitReleased(wctx, k, liveExport, true)
		cancel()
	}
	if err != nil {
		done()
		return nil, fmt.Errorf("rollback %s to %s: %w", disk, snap, err)
	}
	return &rollbackPrep{disk: disk, vol: vol, done: done}, nil
}

// settleLiveClients waits up to settleTimeout for the holders of a disk's
// live export to be released: a client that has just disconnected is
// released only when its handler finishes, after the client saw the
// disconnect, so a rollback right after a VM stops is not refused for a
// connection that is already gone. A client that stays connected costs
// the wait; the rollback then refuses it (or, forced, disconnects it).
func (d *Daemon) settleLiveClients(ctx context.Context, disk string) {
	d.mu.Lock()
	k := d.disks[disk]
	d.mu.Unlock()
	if k == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	_ = d.waitReleased(ctx, k, liveExport, false) // the caller checks the count
}
