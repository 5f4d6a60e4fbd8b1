package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Exports of disks to image files (docs/export.md): the client reads the
// snapshot's NBD export DISK@SNAPSHOT. A live disk is exported from a
// snapshot taken for the purpose, named by the task's id and deleted when
// the transfer ends; for a disk of a machine with a guest agent that is a
// machine snapshot, filesystem-consistent when the agent answers.

// ExportDisk starts the export of a disk (or one of its snapshots).
func (d *Daemon) ExportDisk(ctx context.Context, disk string, req api.ExportRequest) (api.Transfer, error) {
	_, vol, err := d.volume(disk)
	if err != nil {
		return api.Transfer{}, err
	}
	switch req.Consistency {
	case "", api.ConsistencyCrash, api.ConsistencyFilesystem, api.ConsistencyAuto:
	default:
		return api.Transfer{}, invalidField(fieldConsistency, "consistency %q: must be crash, filesystem or auto", req.Consistency)
	}
	if req.Snapshot != "" && req.Consistency != "" {
		return api.Transfer{}, invalidField(fieldConsistency, "consistency: only for an export of the live disk (the snapshot %q is what it is)", req.Snapshot)
	}
	if req.Snapshot != "" {
		if _, err := vol.Snapshot(req.Snapshot); err != nil {
			return api.Transfer{}, fieldError(block.ErrNotFound, "snapshot", "disk %q has no snapshot %q (cairn snapshot list %s)", disk, req.Snapshot, disk)
		}
	}
	if req.ChangesSince != "" {
		since, err := vol.Snapshot(req.ChangesSince)
		if err != nil {
			return api.Transfer{}, fieldError(block.ErrNotFound, "changes_since", "changes_since: disk %q has no snapshot %q", disk, req.ChangesSince)
		}
		if req.Snapshot != "" {
			if to, _ := vol.Snapshot(req.Snapshot); to.Seq <= since.Seq {
				return api.Transfer{}, invalidField("changes_since", "changes_since: snapshot %q is not older than %q", req.ChangesSince, req.Snapshot)
			}
		}
	}
	d.mu.Lock()
	m := d.machineOf(disk)
	useMachine := req.Snapshot == "" && m != nil && m.rec.AgentSocket != "" && req.Consistency != api.ConsistencyCrash
	machineName := ""
	if m != nil {
		machineName = m.rec.Name
	}
	d.mu.Unlock()
	if req.Consistency == api.ConsistencyFilesystem && !useMachine {
		return api.Transfer{}, invalidField(fieldConsistency, "consistency filesystem: disk %q is not in a machine with a guest agent (cairn machine set --agent-socket)", disk)
	}

	var snap string      // what the client reads
	var temporary string // the snapshot (or machine snapshot) taken for the export
	target := exportName{disk, req.Snapshot}.String()
	work := transferWork{
		setup: func(ctx context.Context, id string) (api.Transfer, error) {
			snap = req.Snapshot
			if snap == "" {
				temporary = id
				var err error
				if snap, err = d.exportSnapshot(ctx, disk, machineName, id, req.Consistency, useMachine); err != nil {
					return api.Transfer{}, err
				}
			}
			in, err := vol.Snapshot(snap)
			if err != nil {
				return api.Transfer{}, err
			}
			td := api.TransferDisk{Name: disk, Export: exportName{disk, snap}.String(), Size: in.Size, BlockSize: vol.BlockSize(),
				Snapshot: snap, Temporary: temporary != ""}
			if req.ChangesSince != "" {
				td.ChangesSince, td.ChangesContext = req.ChangesSince, "cairn:since:"+req.ChangesSince
			}
			return api.Transfer{Disks: []api.TransferDisk{td}}, nil
		},
		cleanup: func(ctx context.Context, failed bool) error {
			if temporary == "" {
				return nil
			}
			return d.dropExportSnapshot(ctx, disk, machineName, temporary, useMachine)
		},
	}
	return d.startTransfer(taskSpec{kind: api.TaskExport, disk: disk, target: target, unit: unitBytes}, work)
}

// exportSnapshot takes the snapshot a live disk is exported from, named
// name: a machine snapshot when useMachine (consistency through the guest
// agent), else a disk snapshot. It returns the disk's snapshot to read.
func (d *Daemon) exportSnapshot(ctx context.Context, disk, machine, name, consistency string, useMachine bool) (string, error) {
	desc := "taken for export task " + name + "; deleted when it ends"
	if !useMachine {
		if _, err := d.CreateSnapshot(ctx, disk, api.CreateSnapshotRequest{Name: name, Description: desc}); err != nil {
			return "", fmt.Errorf("snapshot for the export: %w", err)
		}
		return name, nil
	}
	if consistency == "" {
		consistency = api.ConsistencyAuto
	}
	task, err := d.CreateMachineSnapshot(ctx, machine, api.CreateMachineSnapshotRequest{Name: name, Description: desc, Consistency: consistency})
	if err != nil {
		return "", fmt.Errorf("machine snapshot for the export: %w", err)
	}
	t, err := d.tasks.waitEnded(ctx, task.ID)
	if err == nil && t.State != api.TaskSucceeded {
		err = errors.New(t.Error)
	}
	if err != nil {
		d.dropExportSnapshot(context.Background(), disk, machine, name, true)
		return "", fmt.Errorf("machine snapshot for the export: %w", err)
	}
	_, s, err := d.machineSnapshot(machine, name)
	if err != nil {
		return "", err
	}
	for _, mem := range s.Members {
		if mem.Disk == disk {
			return mem.Snapshot, nil
		}
	}
	return "", errorf(block.ErrFailed, "machine snapshot %s@%s has no member for disk %q", machine, name, disk)
}

// dropExportSnapshot deletes the snapshot an export took, disconnecting
// readers left behind (a client whose lease ran out).
func (d *Daemon) dropExportSnapshot(ctx context.Context, disk, machine, name string, useMachine bool) error {
	var err error
	if useMachine {
		_, err = d.DeleteMachineSnapshot(ctx, machine, name, true)
	} else {
		_, err = d.DeleteSnapshot(ctx, disk, name, true)
	}
	if err != nil && !errors.Is(err, block.ErrNotFound) {
		return fmt.Errorf("delete the snapshot %q taken for the export: %w (delete it with cairn snapshot delete %s %s)", name, err, disk, name)
	}
	return nil
}

// abandonTransfer cleans up after a transfer a stop of cairnd
// interrupted: the snapshot an export took, the disks an import made.
func (d *Daemon) abandonTransfer(t api.Task) {
	ctx := context.Background()
	var err error
	switch t.Kind {
	case api.TaskExport:
		d.mu.Lock()
		m := d.machineOf(t.Disk)
		d.mu.Unlock()
		if m != nil {
			if _, _, merr := d.machineSnapshot(m.rec.Name, t.ID); merr == nil {
				err = d.dropExportSnapshot(ctx, t.Disk, m.rec.Name, t.ID, true)
				break
			}
		}
		err = d.dropExportSnapshot(ctx, t.Disk, "", t.ID, false)
	case api.TaskImport:
		err = d.dropImported(ctx, strings.Split(t.Target, ","))
	}
	if err != nil {
		d.log.Warn("cleaning up after an interrupted transfer", "task", t.ID, "err", err)
	}
	d.tasks.abandon(t, "what it made was removed; run the "+t.Kind+" again")
}
