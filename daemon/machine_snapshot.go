package daemon

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Machine snapshots (docs/machines.md): one snapshot of every disk of a
// machine at one instant (cow.CreateSnapshots), filesystem-consistent when
// the guest agent freezes the guest (freeze.go), plus the machine's
// configuration as it was. The members are ordinary snapshots named like
// the machine snapshot, one in each disk's chain; the machine snapshot's
// record is committed in the same store transaction as theirs.

// CreateMachineSnapshot starts a machine snapshot as a task: it freezes
// the guest if asked, seals every disk at one instant, thaws, and ends
// when every member has copied out (or one failed).
func (d *Daemon) CreateMachineSnapshot(ctx context.Context, name string, req api.CreateMachineSnapshotRequest) (api.Task, error) {
	return d.createMachineSnapshot(ctx, name, req, nil, nil)
}

// createMachineSnapshot starts a manual machine snapshot (auto nil) or a
// policy's automatic one; taken, when set, is told (on the task's
// goroutine) how taking it ended, before its copy-out is waited for.
func (d *Daemon) createMachineSnapshot(ctx context.Context, name string, req api.CreateMachineSnapshotRequest, auto *autoSnap, taken func(error)) (api.Task, error) {
	kind := api.SnapshotManual
	if auto != nil {
		kind = api.SnapshotAuto
	}
	if err := checkSnapshotName(req.Name, kind); err != nil {
		return api.Task{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Task{}, err
	}
	requested := req.Consistency
	if requested == "" {
		requested = api.ConsistencyAuto
	}
	switch requested {
	case api.ConsistencyCrash, api.ConsistencyFilesystem, api.ConsistencyAuto:
	default:
		return api.Task{}, invalidField(fieldConsistency, "consistency %q: must be crash, filesystem or auto", req.Consistency)
	}
	d.mu.Lock()
	m, err := d.lookupMachine(name)
	if err == nil {
		err = d.checkChange()
	}
	if err == nil && (m.snaps[req.Name] != nil || m.reserved[req.Name]) {
		err = fieldError(block.ErrExists, fieldName, "machine %q already has a snapshot %q", name, req.Name)
	}
	var vols []*cow.Volume
	for _, disk := range m.safeDisks(err) {
		k, kerr := d.liveDisk(disk)
		if kerr != nil {
			err = fmt.Errorf("machine %q: %w", name, kerr)
			break
		}
		if _, serr := k.vol.Snapshot(req.Name); serr == nil {
			err = fieldError(block.ErrExists, fieldName, "disk %q of machine %q already has a snapshot %q: choose another name", disk, name, req.Name)
			break
		}
		vols = append(vols, k.vol)
	}
	if err != nil {
		d.mu.Unlock()
		return api.Task{}, err
	}
	m.reserved[req.Name] = true
	rec := m.rec
	d.mu.Unlock()

	target := rec.Name + "@" + req.Name
	task, err := d.tasks.start(d.bg, taskSpec{kind: api.TaskMachineSnapshot, target: target, unit: unitBytes,
		notCancellable: notCancellableSnapshot}, func(ctx context.Context, progress progressFunc) (any, error) {
		defer func() {
			d.mu.Lock()
			delete(m.reserved, req.Name)
			d.mu.Unlock()
		}()
		m.op.Lock()
		s, err := d.takeMachineSnapshot(ctx, m, rec, vols, req, requested, auto)
		m.op.Unlock()
		if taken != nil {
			taken(err)
		}
		if err != nil {
			d.log.Error("machine snapshot failed", "machine", rec.Name, "snapshot", req.Name, "err", err)
			return nil, err
		}
		return d.waitMachineSnapshot(ctx, m, s, progress)
	})
	if err != nil {
		d.mu.Lock()
		delete(m.reserved, req.Name)
		d.mu.Unlock()
		if taken != nil {
			taken(err)
		}
	}
	return task, err
}

// notCancellableSnapshot is why a snapshot's copy-out is not cancelled.
const notCancellableSnapshot = "the snapshot is taken and copies out in the background; delete it to stop that"

// safeDisks is m's disks, or none after an error (so a caller can range
// over it before checking err).
func (m *machine) safeDisks(err error) []string {
	if err != nil || m == nil {
		return nil
	}
	return m.rec.Disks
}

// takeMachineSnapshot freezes (as asked), seals and commits. Caller holds
// m.op.
func (d *Daemon) takeMachineSnapshot(ctx context.Context, m *machine, rec machineRecord, vols []*cow.Volume, req api.CreateMachineSnapshotRequest, requested string, auto *autoSnap) (*machineSnapRecord, error) {
	d.snapMu.Lock()
	defer d.snapMu.Unlock()
	for i, v := range vols {
		n := len(v.Snapshots())
		if n >= d.cfg.SnapshotQuota && auto != nil {
			if err := d.evictOldestAuto(ctx, rec.Disks[i], v, auto, m); err != nil {
				return nil, fmt.Errorf("machine %q: %w", rec.Name, err)
			}
		} else if n >= d.cfg.SnapshotQuota {
			return nil, errorf(block.ErrQuota, "disk %q of machine %q already has %d snapshots, its quota (snapshot_quota = %d): delete snapshots it no longer needs to make room",
				rec.Disks[i], rec.Name, n, d.cfg.SnapshotQuota)
		}
	}
	member := auto.meta(api.CreateSnapshotRequest{Name: req.Name, Description: "member of machine snapshot " + rec.Name + "@" + req.Name}, api.SnapshotManual)
	if auto != nil {
		member.Kind = api.SnapshotAuto
	}
	s := &machineSnapRecord{Name: req.Name, Description: req.Description, Created: member.Created,
		Requested: requested, Config: rec.Config, Kind: member.Kind, Policy: member.Policy, RetentionDays: member.RetentionDays}
	if s.Created.IsZero() {
		s.Created = time.Now().UTC()
	}
	member.Created = s.Created
	group := make([]cow.Member, len(vols))
	for i, v := range vols {
		group[i] = cow.Member{Volume: v, Meta: member}
		s.Members = append(s.Members, memberRecord{Disk: rec.Disks[i], DiskID: d.diskID(rec.Disks[i]), Snapshot: req.Name})
	}
	f, consistency, reason, err := d.freezeGuest(ctx, rec, requested)
	if err != nil {
		return nil, err
	}
	s.Consistency, s.Reason = consistency, reason
	opts := cow.GroupOptions{Records: map[string]any{store.MachineSnapshotKey(rec.ID, req.Name): s}}
	if f != nil {
		opts.Sealed = func() {
			f.thaw()
			held, late := f.result()
			s.FrozenNS = int64(held)
			if late {
				s.Consistency = api.ConsistencyCrash
				s.Reason = fmt.Sprintf("the guest was thawed at freeze_timeout (%v) before every disk was sealed", time.Duration(d.cfg.FreezeTimeout))
			}
		}
	}
	infos, err := cow.CreateSnapshots(ctx, group, opts)
	if f != nil {
		f.thaw() // a no-op after Sealed; the thaw on an error path
	}
	if err != nil {
		return nil, fmt.Errorf("machine %q: %w", rec.Name, err)
	}
	if len(infos) > 0 {
		s.HoldNS = int64(infos[0].Hold)
	}
	for _, in := range infos {
		d.metrics.tookSnapshot(in)
	}
	if s.FrozenNS > 0 {
		d.metrics.froze(time.Duration(s.FrozenNS))
	}
	d.mu.Lock()
	m.snaps[s.Name] = s
	d.mu.Unlock()
	if requested == api.ConsistencyFilesystem && s.Consistency != api.ConsistencyFilesystem {
		// Required and not reached: the members must not stand as if it were.
		err := errorf(block.ErrFailed, "machine %q: no filesystem-consistent snapshot: %s", rec.Name, s.Reason)
		if derr := d.deleteMachineSnapshot(context.Background(), m, s, true); derr != nil {
			return nil, fmt.Errorf("%w; and deleting the crash-consistent snapshot taken failed: %v", err, derr)
		}
		return nil, err
	}
	d.log.Info("machine snapshot taken", "machine", rec.Name, "snapshot", s.Name, "consistency", s.Consistency,
		"frozen", time.Duration(s.FrozenNS), "hold", time.Duration(s.HoldNS), "disks", len(vols))
	return s, nil
}

// diskID is the id of the disk called name, 0 if none.
func (d *Daemon) diskID(name string) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if k := d.disks[name]; k != nil {
		return k.rec.ID
	}
	return 0
}

// waitMachineSnapshot reports the members' copy-out as the task's progress
// until every one is ready, and returns the machine snapshot; a failed
// member fails it.
func (d *Daemon) waitMachineSnapshot(ctx context.Context, m *machine, s *machineSnapRecord, progress progressFunc) (any, error) {
	tick := time.NewTicker(250 * time.Millisecond) // progress is sampled for the display; readiness is waited for
	defer tick.Stop()
	done := make(chan error, 1)
	go func() {
		for _, mem := range s.Members {
			_, vol, err := d.volume(mem.Disk)
			if err == nil {
				err = vol.WaitReady(ctx, mem.Snapshot)
			}
			if err != nil {
				done <- fmt.Errorf("member %s@%s: %w", mem.Disk, mem.Snapshot, err)
				return
			}
		}
		done <- nil
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				return nil, err
			}
			return d.machineSnapToAPI(m, s), nil
		case <-tick.C:
			done, total := d.machineSnapBytes(s)
			progress(done, total)
		}
	}
}

// machineSnapBytes is how many of its members' bytes are in the store.
func (d *Daemon) machineSnapBytes(s *machineSnapRecord) (done, total uint64) {
	for _, mem := range s.Members {
		if _, vol, err := d.volume(mem.Disk); err == nil {
			if in, err := vol.Snapshot(mem.Snapshot); err == nil {
				total += in.CopyBytes
				done += uint64(float64(in.CopyBytes) * in.Progress / 100)
			}
		}
	}
	return done, total
}

// ListMachineSnapshots lists a machine's snapshots, oldest first.
func (d *Daemon) ListMachineSnapshots(ctx context.Context, name string) ([]api.MachineSnapshot, error) {
	d.mu.Lock()
	m, err := d.lookupMachine(name)
	var snaps []*machineSnapRecord
	if err == nil {
		for _, s := range m.snaps {
			snaps = append(snaps, s)
		}
	}
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Created.Before(snaps[j].Created) })
	out := make([]api.MachineSnapshot, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, d.machineSnapToAPI(m, s))
	}
	return out, nil
}

// GetMachineSnapshot describes one machine snapshot.
func (d *Daemon) GetMachineSnapshot(ctx context.Context, name, snap string) (api.MachineSnapshot, error) {
	m, s, err := d.machineSnapshot(name, snap)
	if err != nil {
		return api.MachineSnapshot{}, err
	}
	return d.machineSnapToAPI(m, s), nil
}

// machineSnapshot finds a machine snapshot.
func (d *Daemon) machineSnapshot(name, snap string) (*machine, *machineSnapRecord, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.lookupMachine(name)
	if err != nil {
		return nil, nil, err
	}
	s := m.snaps[snap]
	if s == nil {
		return nil, nil, errorf(block.ErrNotFound, "machine %q has no snapshot %q", name, snap)
	}
	return m, s, nil
}

// machineSnapToAPI describes s, its state aggregated from its members'.
func (d *Daemon) machineSnapToAPI(m *machine, s *machineSnapRecord) api.MachineSnapshot {
	out := api.MachineSnapshot{Machine: m.rec.Name, Name: s.Name, Description: s.Description, Created: api.At(s.Created),
		Kind: s.Kind, Policy: s.Policy, RetentionDays: s.RetentionDays, Expires: expires(s.Created, s.RetentionDays),
		Requested: s.Requested, Consistency: s.Consistency, Reason: s.Reason, Config: s.Config,
		FrozenMicros: float64(s.FrozenNS) / 1e3, HoldMicros: float64(s.HoldNS) / 1e3}
	states := map[string]int{}
	var written, done float64
	var reasons []string
	for _, mem := range s.Members {
		mm := api.MachineSnapshotMember{Disk: mem.Disk, Snapshot: mem.Snapshot, Export: exportName{mem.Disk, mem.Snapshot}.String(), State: api.SnapshotFailed}
		if _, vol, err := d.volume(mem.Disk); err == nil {
			if in, err := vol.Snapshot(mem.Snapshot); err == nil {
				mm.State, mm.Progress = in.State, in.Progress
				w := float64(max(in.CopyBytes, 1))
				written += w
				done += w * in.Progress / 100
				if in.Reason != "" {
					reasons = append(reasons, mem.Disk+": "+in.Reason)
				}
			} else {
				reasons = append(reasons, mem.Disk+": "+err.Error())
			}
		} else {
			reasons = append(reasons, mem.Disk+": "+err.Error())
		}
		states[mm.State]++
		out.Members = append(out.Members, mm)
	}
	if out.Kind == "" {
		out.Kind = api.SnapshotManual // recorded before policies existed
	}
	switch {
	case s.Deleting || states[api.SnapshotDeleting] > 0:
		out.State = api.SnapshotDeleting
	case states[api.SnapshotFailed] > 0:
		out.State = api.SnapshotFailed
		out.Reason = strings.Join(append([]string{s.Reason}, reasons...), "; ")
		out.Reason = strings.TrimPrefix(out.Reason, "; ")
	case states[api.SnapshotCopying] > 0:
		out.State = api.SnapshotCopying
	default:
		out.State = api.SnapshotReady
	}
	out.Progress = 100
	if written > 0 {
		out.Progress = 100 * done / written
	}
	return out
}

// DeleteMachineSnapshot deletes every member and the machine snapshot.
func (d *Daemon) DeleteMachineSnapshot(ctx context.Context, name, snap string, force bool) (api.DeleteSnapshotResult, error) {
	m, s, err := d.machineSnapshot(name, snap)
	if err != nil {
		return api.DeleteSnapshotResult{}, err
	}
	m.op.Lock()
	defer m.op.Unlock()
	var freed uint64
	err = d.deleteMachineSnapshotFreed(ctx, m, s, force, &freed)
	return api.DeleteSnapshotResult{FreedBytes: freed}, err
}

func (d *Daemon) deleteMachineSnapshot(ctx context.Context, m *machine, s *machineSnapRecord, force bool) error {
	var freed uint64
	return d.deleteMachineSnapshotFreed(ctx, m, s, force, &freed)
}

// deleteMachineSnapshotFreed records the delete, durably, then deletes the
// members and the record. A crash part-way is finished at the next start.
// Caller holds m.op.
func (d *Daemon) deleteMachineSnapshotFreed(ctx context.Context, m *machine, s *machineSnapRecord, force bool, freed *uint64) error {
	d.mu.Lock()
	id := m.rec.ID
	rec := *s
	rec.Deleting = true
	d.mu.Unlock()
	if err := d.putDurable(store.MachineSnapshotKey(id, s.Name), rec); err != nil {
		return fmt.Errorf("delete machine snapshot %s@%s: %w", m.rec.Name, s.Name, err)
	}
	d.mu.Lock()
	s.Deleting = true
	d.mu.Unlock()
	for _, mem := range s.Members {
		res, err := d.deleteSnapshot(ctx, mem.Disk, mem.Snapshot, force)
		if err != nil && !errors.Is(err, block.ErrNotFound) {
			return fmt.Errorf("delete machine snapshot %s@%s (it stays deleting; delete it again to finish): %w", m.rec.Name, s.Name, err)
		}
		*freed += res.FreedBytes
	}
	return d.finishMachineSnapshotDelete(ctx, m, s)
}

// finishMachineSnapshotDelete deletes what is left of a machine snapshot
// being deleted (its record says so): members that still exist, then the
// record.
func (d *Daemon) finishMachineSnapshotDelete(ctx context.Context, m *machine, s *machineSnapRecord) error {
	for _, mem := range s.Members {
		if _, vol, err := d.volume(mem.Disk); err == nil {
			if _, err := vol.Snapshot(mem.Snapshot); err == nil {
				if _, err := vol.DeleteSnapshot(ctx, mem.Snapshot); err != nil {
					return err
				}
			}
		}
	}
	if err := d.deleteDurable(store.MachineSnapshotKey(m.rec.ID, s.Name)); err != nil {
		return err
	}
	d.mu.Lock()
	delete(m.snaps, s.Name)
	d.mu.Unlock()
	d.log.Info("machine snapshot deleted", "machine", m.rec.Name, "snapshot", s.Name)
	return nil
}

// memberOf returns the machine snapshot that disk@snap belongs to, if any.
func (d *Daemon) memberOf(disk, snap string) (machineName, machineSnap string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.machines {
		for _, s := range m.snaps {
			for _, mem := range s.Members {
				if mem.Disk == disk && mem.Snapshot == snap {
					return m.rec.Name, s.Name, true
				}
			}
		}
	}
	return "", "", false
}

// RollbackMachine starts rolling every disk of a machine back to a machine
// snapshot, as one task. As with a disk's rollback, no disk may have
// clients on its live export (force disconnects them) and none connect
// until it ends: the VM must be stopped, or it sees its disks change
// under it.
func (d *Daemon) RollbackMachine(ctx context.Context, name, snap string, force bool) (api.Task, error) {
	m, s, err := d.machineSnapshot(name, snap)
	if err != nil {
		return api.Task{}, err
	}
	ms := d.machineSnapToAPI(m, s)
	if ms.State != api.SnapshotReady && ms.State != api.SnapshotCopying {
		return api.Task{}, errorf(block.ErrFailed, "machine snapshot %s@%s is %s and cannot be rolled back to: %s", name, snap, ms.State, ms.Reason)
	}
	var prepared []*rollbackPrep
	undo := func() {
		for _, p := range prepared {
			p.done()
		}
	}
	for _, mem := range s.Members {
		p, err := d.prepareRollback(ctx, mem.Disk, mem.Snapshot, force)
		if err != nil {
			undo()
			return api.Task{}, fmt.Errorf("rollback machine %q to %q: %w", name, snap, err)
		}
		prepared = append(prepared, p)
	}
	d.log.Info("machine rollback started", "machine", name, "snapshot", snap)
	task, err := d.tasks.start(d.bg, taskSpec{kind: api.TaskMachineRollback, target: name + "@" + snap,
		notCancellable: notCancellableRollback}, func(ctx context.Context, progress progressFunc) (any, error) {
		defer undo()
		m.op.Lock()
		defer m.op.Unlock()
		for i, p := range prepared {
			err := p.vol.Rollback(ctx, snap, func(done, total uint64) {
				progress(uint64(i)*1000+done*1000/max(total, 1), uint64(len(prepared))*1000)
			})
			d.fuseChanged(p.disk)
			if err != nil {
				d.log.Error("machine rollback failed", "machine", name, "snapshot", snap, "disk", p.disk, "err", err)
				return nil, fmt.Errorf("disk %q: %w (disks before it in the machine are rolled back; run the rollback again)", p.disk, err)
			}
		}
		d.log.Info("machine rollback done", "machine", name, "snapshot", snap)
		return nil, nil
	})
	if err != nil {
		undo()
	}
	return task, err
}
