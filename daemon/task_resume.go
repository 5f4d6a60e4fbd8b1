package daemon

import (
	"context"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Tasks across restarts, and the task of a snapshot's copy-out.

// loadTasks reads the task records and, for the tasks a stop interrupted,
// resumes those whose work goes on by itself (a copy-out, the copy-out of
// a machine snapshot) and ends the rest saying what to do.
func (d *Daemon) loadTasks() error {
	interrupted, err := d.tasks.load(d.store, d.log, time.Duration(d.cfg.TaskHistory))
	if err != nil {
		return err
	}
	for _, t := range interrupted {
		switch t.Kind {
		case api.TaskCopyOut:
			if _, vol, err := d.volume(t.Disk); err == nil {
				if in, err := vol.Snapshot(t.Target); err == nil && cow.Readable(in.State) {
					d.tasks.resume(d.bg, t, copyOutSpec(t.Disk, t.Target), d.copyOutTask(vol, t.Target))
					continue
				}
			}
			d.tasks.abandon(t, "the snapshot no longer exists or failed (cairn snapshot show "+t.Disk+" "+t.Target+")")
		case api.TaskMachineSnapshot:
			machine, snap, _ := strings.Cut(t.Target, "@")
			if m, s, err := d.machineSnapshot(machine, snap); err == nil {
				d.tasks.resume(d.bg, t, taskSpec{kind: t.Kind, target: t.Target, unit: unitBytes, notCancellable: notCancellableSnapshot},
					func(ctx context.Context, progress progressFunc) (any, error) {
						return d.waitMachineSnapshot(ctx, m, s, progress)
					})
				continue
			}
			d.tasks.abandon(t, "it stopped before every disk was sealed, so no machine snapshot was taken; take it again")
		case api.TaskRollback, api.TaskMachineRollback:
			d.tasks.abandon(t, "the disks are partly rolled back; run the rollback again to finish it")
		case api.TaskFlatten:
			d.tasks.abandon(t, "the clone still reads through its parent or is already independent (cairn disk show "+t.Disk+
				" says which: parent or flattened), and its data is intact either way; run cairn disk flatten "+t.Disk+" again to finish")
		case api.TaskImageCreate:
			d.tasks.abandon(t, "the half-made image "+t.Target+" was dropped; create it again (cairn image create "+t.Target+" ...)")
		case api.TaskExport, api.TaskImageExport, api.TaskImport:
			d.abandonTransfer(t)
		default:
			d.tasks.abandon(t, "run it again")
		}
	}
	return nil
}

// copyOutSpec is the task of a snapshot's copy-out.
func copyOutSpec(disk, snap string) taskSpec {
	return taskSpec{kind: api.TaskCopyOut, disk: disk, target: snap, unit: unitBytes, notCancellable: notCancellableSnapshot}
}

// copyOutTask follows a snapshot's copy-out (the volume's worker does the
// work) until it is ready; a failed snapshot fails the task with its
// reason.
func (d *Daemon) copyOutTask(vol *cow.Volume, snap string) taskFunc {
	return func(ctx context.Context, progress progressFunc) (any, error) {
		done := make(chan error, 1)
		go func() { done <- vol.WaitReady(ctx, snap) }()
		tick := time.NewTicker(250 * time.Millisecond) // progress is sampled for the display; readiness is waited for
		defer tick.Stop()
		for {
			select {
			case err := <-done:
				return nil, err
			case <-tick.C:
				if in, err := vol.Snapshot(snap); err == nil {
					progress(uint64(float64(in.CopyBytes)*in.Progress/100), in.CopyBytes)
				}
			}
		}
	}
}

// CancelTask stops a task that can be stopped safely, or says why not.
func (d *Daemon) CancelTask(ctx context.Context, id string) (api.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	t, err := d.tasks.cancelTask(ctx, id, func(t api.Task) string {
		switch t.Kind {
		case api.TaskRollback, api.TaskMachineRollback:
			return notCancellableRollback
		case api.TaskCopyOut, api.TaskMachineSnapshot:
			return notCancellableSnapshot
		}
		return "it cannot be stopped part-way"
	})
	if err == nil && !t.Ended() {
		err = errorf(block.ErrInUse, "task %s was asked to stop and has not yet; see it with cairn task show %s", id, id)
	}
	return t, err
}
