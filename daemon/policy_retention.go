package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// What becomes of automatic snapshots (docs/policies.md):
//   - Each keeps the retention it was taken with; changing the policy's
//     retention rewrites it on every snapshot the policy took (as
//     Alibaba's console does), so the new retention applies to them too.
//     Removing or deleting the policy leaves its snapshots with the
//     retention they have.
//   - When the retention ends the snapshot is deleted (event "expired"),
//     unless something needs it: a clone reading through it, an image
//     being made from it, an NBD client or FUSE file reading it. Then it
//     is kept (event "kept", once) and deleted once nothing does.
//     Images, once made, hold chunk references of their own and never
//     keep a snapshot.
//   - At the chain's quota an automatic snapshot first deletes the oldest
//     automatic snapshot of the disk that may go (event "evicted"); a
//     manual snapshot is never deleted by a policy. When none may go, the
//     automatic snapshot fails, saying so.
//   - A disk snapshot that is a member of a machine snapshot goes with
//     its machine snapshot: by the machine snapshot's retention, or, at
//     the quota, only for a policy of that machine.

// whyKeep says what needs snapshot snap of disk (a clone reads through
// it, or an image is being made from it); "" when nothing does.
func (d *Daemon) whyKeep(disk, snap string) string {
	if err := d.checkNoClones(disk, snap); err != nil {
		return err.Error()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, im := range d.images {
		for _, x := range im.reading {
			if x.disk == disk && x.snap == snap {
				return fmt.Sprintf("image %q is being made from it", name)
			}
		}
	}
	return ""
}

// evictOldestAuto deletes the oldest automatic snapshot of disk that may
// go, to make room for auto at the quota. For a policy of machine m (not
// nil) that is the machine's own automatic machine snapshot, deleted
// whole. Caller holds snapMu, and m.op when m is set.
func (d *Daemon) evictOldestAuto(ctx context.Context, disk string, vol *cow.Volume, auto *autoSnap, m *machine) error {
	members := d.machineMembers()
	manual, kept := 0, []string{}
	for _, in := range vol.Snapshots() {
		if in.State == cow.StateDeleting {
			continue
		}
		if in.Kind != api.SnapshotAuto {
			manual++
			continue
		}
		why := ""
		var freed uint64
		if ms, ok := members[exportName{disk, in.Name}]; ok {
			why, freed = d.evictMachineSnapshot(ctx, m, ms)
		} else if why = d.whyKeep(disk, in.Name); why == "" {
			res, err := d.deleteSnapshot(ctx, disk, in.Name, false)
			if err != nil {
				why = err.Error()
			}
			freed = res.FreedBytes
		}
		if why != "" {
			kept = append(kept, in.Name+": "+why)
			continue
		}
		d.event(api.Event{Kind: api.EventEvicted, Policy: in.Policy, Disk: disk, Snapshot: in.Name,
			Message: fmt.Sprintf("%s deleted to make room for policy %q's snapshot: disk %q is at its quota (snapshot_quota = %d) and it was the oldest automatic snapshot that could go (freed %s)",
				exportName{disk, in.Name}, auto.policy, disk, d.cfg.SnapshotQuota, api.FormatSize(int64(freed)))})
		return nil
	}
	msg := fmt.Sprintf("disk %q is at its quota of %d snapshots (snapshot_quota) and no automatic snapshot can make room: %d %s manual, which a policy never deletes",
		disk, d.cfg.SnapshotQuota, manual, isAre(manual))
	if len(kept) > 0 {
		msg += fmt.Sprintf(", and %d automatic %s needed (%s)", len(kept), isAre(len(kept)), strings.Join(kept, "; "))
	}
	return errorf(block.ErrQuota, "%s: delete snapshots by hand (cairn snapshot delete %s NAME) or raise snapshot_quota", msg, disk)
}

// memberRef names a machine snapshot.
type memberRef struct{ machine, snap string }

// machineMembers maps every machine snapshot's members to it.
func (d *Daemon) machineMembers() map[exportName]memberRef {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[exportName]memberRef{}
	for _, m := range d.machines {
		for _, s := range m.snaps {
			for _, mem := range s.Members {
				out[exportName{mem.Disk, mem.Snapshot}] = memberRef{m.rec.Name, s.Name}
			}
		}
	}
	return out
}

// evictMachineSnapshot deletes machine snapshot ref to make room for a
// policy of machine m (nil: a disk's policy, which never deletes a
// machine snapshot), and says why not when it cannot. Caller holds m.op.
func (d *Daemon) evictMachineSnapshot(ctx context.Context, m *machine, ref memberRef) (why string, freed uint64) {
	if m == nil || m.rec.Name != ref.machine {
		return fmt.Sprintf("a member of machine snapshot %s@%s, which only a policy of that machine deletes", ref.machine, ref.snap), 0
	}
	d.mu.Lock()
	s := m.snaps[ref.snap]
	d.mu.Unlock()
	if s == nil || s.Kind != api.SnapshotAuto {
		return "a member of a manual machine snapshot", 0
	}
	if why := d.whyKeepMachineSnapshot(s); why != "" {
		return why, 0
	}
	if err := d.deleteMachineSnapshotFreed(ctx, m, s, false, &freed); err != nil {
		return err.Error(), 0
	}
	return "", freed
}

// whyKeepMachineSnapshot says what needs one of s's members.
func (d *Daemon) whyKeepMachineSnapshot(s *machineSnapRecord) string {
	for _, mem := range s.Members {
		if why := d.whyKeep(mem.Disk, mem.Snapshot); why != "" {
			return why
		}
	}
	return ""
}

// expireSnapshots deletes the automatic snapshots whose retention ended
// by now and returns when the next one ends (zero: none).
func (d *Daemon) expireSnapshots(ctx context.Context, now time.Time) time.Time {
	var next time.Time
	due := func(created time.Time, days int) bool {
		if days <= 0 {
			return false
		}
		at := created.Add(retention(days))
		if at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			return false
		}
		return true
	}
	members := d.machineMembers()
	type volume struct {
		disk string
		vol  *cow.Volume
	}
	var vols []volume
	type msnap struct {
		m *machine
		s *machineSnapRecord
	}
	var msnaps []msnap
	d.mu.Lock()
	for _, k := range d.sortedDisks() {
		if k.exportable() {
			vols = append(vols, volume{k.rec.Name, k.vol})
		}
	}
	for _, m := range d.machines {
		for _, s := range m.snaps {
			if !s.Deleting && due(s.Created, s.RetentionDays) {
				msnaps = append(msnaps, msnap{m, s})
			}
		}
	}
	d.mu.Unlock()
	for _, v := range vols {
		for _, in := range v.vol.Snapshots() {
			if in.Kind != api.SnapshotAuto || in.State == cow.StateDeleting || ctx.Err() != nil {
				continue
			}
			if _, member := members[exportName{v.disk, in.Name}]; member || !due(in.Created, in.RetentionDays) {
				continue
			}
			d.expireDiskSnapshot(ctx, v.disk, in)
		}
	}
	for _, x := range msnaps {
		if ctx.Err() == nil {
			d.expireMachineSnapshot(ctx, x.m, x.s)
		}
	}
	return next
}

// expireDiskSnapshot deletes an expired snapshot, or keeps it saying why.
func (d *Daemon) expireDiskSnapshot(ctx context.Context, disk string, in cow.SnapshotInfo) {
	export := exportName{disk, in.Name}
	why := d.whyKeep(disk, in.Name)
	if why == "" {
		res, err := d.deleteSnapshot(ctx, disk, in.Name, false)
		if err == nil || errors.Is(err, block.ErrNotFound) {
			d.forgetKept(export.String())
			d.event(api.Event{Kind: api.EventExpired, Policy: in.Policy, Disk: disk, Snapshot: in.Name,
				Message: fmt.Sprintf("%s reached the end of its retention (%s, taken %s) and was deleted (freed %s)",
					export, plural(in.RetentionDays, "day"), in.Created.UTC().Format(time.RFC3339), api.FormatSize(int64(res.FreedBytes)))})
			return
		}
		why = err.Error()
	}
	d.keepExpired(export.String(), api.Event{Kind: api.EventKept, Policy: in.Policy, Disk: disk, Snapshot: in.Name,
		Message: fmt.Sprintf("%s is past its retention (%s) and kept while something needs it: %s", export, plural(in.RetentionDays, "day"), why)}, why)
}

// expireMachineSnapshot deletes an expired machine snapshot, or keeps it
// saying why.
func (d *Daemon) expireMachineSnapshot(ctx context.Context, m *machine, s *machineSnapRecord) {
	name := m.rec.Name + "@" + s.Name
	m.op.Lock()
	defer m.op.Unlock()
	d.mu.Lock()
	current := m.snaps[s.Name] == s && !s.Deleting
	d.mu.Unlock()
	if !current {
		return // deleted meanwhile
	}
	why := d.whyKeepMachineSnapshot(s)
	if why == "" {
		var freed uint64
		err := d.deleteMachineSnapshotFreed(ctx, m, s, false, &freed)
		if err == nil {
			d.forgetKept(name)
			d.event(api.Event{Kind: api.EventExpired, Policy: s.Policy, Machine: m.rec.Name, Snapshot: s.Name,
				Message: fmt.Sprintf("machine snapshot %s reached the end of its retention (%s, taken %s) and was deleted (freed %s)",
					name, plural(s.RetentionDays, "day"), s.Created.UTC().Format(time.RFC3339), api.FormatSize(int64(freed)))})
			return
		}
		why = err.Error()
	}
	d.keepExpired(name, api.Event{Kind: api.EventKept, Policy: s.Policy, Machine: m.rec.Name, Snapshot: s.Name,
		Message: fmt.Sprintf("machine snapshot %s is past its retention (%s) and kept while something needs it: %s", name, plural(s.RetentionDays, "day"), why)}, why)
}

// keepExpired reports, once per snapshot and reason, that an expired
// snapshot is kept.
func (d *Daemon) keepExpired(name string, e api.Event, why string) {
	d.pol.mu.Lock()
	seen := d.pol.kept[name] == why
	d.pol.kept[name] = why
	d.pol.mu.Unlock()
	if !seen {
		d.event(e)
	}
}

func (d *Daemon) forgetKept(name string) {
	d.pol.mu.Lock()
	delete(d.pol.kept, name)
	d.pol.mu.Unlock()
}

// reconcileRetention gives every snapshot policy took the retention days:
// after the policy's retention changed, and at start (finishing a change
// a stop interrupted).
func (d *Daemon) reconcileRetention(ctx context.Context, policy string, days int) {
	d.mu.Lock()
	var vols []*cow.Volume
	for _, k := range d.sortedDisks() {
		if k.exportable() {
			vols = append(vols, k.vol)
		}
	}
	var machines []*machine
	for _, m := range d.machines {
		machines = append(machines, m)
	}
	d.mu.Unlock()
	n := 0
	for _, v := range vols {
		for _, in := range v.Snapshots() {
			if in.Kind == api.SnapshotAuto && in.Policy == policy && in.RetentionDays != days {
				if err := v.SetRetention(in.Name, days); err != nil && !errors.Is(err, block.ErrNotFound) {
					d.log.Warn("could not change an automatic snapshot's retention; retried at the next start", "snapshot", in.Name, "err", err)
					continue
				}
				n++
			}
		}
	}
	for _, m := range machines {
		m.op.Lock()
		d.mu.Lock()
		var change []*machineSnapRecord
		for _, s := range m.snaps {
			if s.Policy == policy && s.RetentionDays != days && !s.Deleting {
				change = append(change, s)
			}
		}
		d.mu.Unlock()
		for _, s := range change {
			d.mu.Lock()
			rec := *s
			d.mu.Unlock()
			rec.RetentionDays = days
			if err := d.putDurable(store.MachineSnapshotKey(m.rec.ID, s.Name), rec); err != nil {
				d.log.Warn("could not change an automatic machine snapshot's retention; retried at the next start", "machine", m.rec.Name, "snapshot", s.Name, "err", err)
				continue
			}
			d.mu.Lock()
			s.RetentionDays = days
			d.mu.Unlock()
			n++
		}
		m.op.Unlock()
	}
	if n > 0 {
		d.log.Info("automatic snapshots take their policy's new retention", "policy", policy, "retention_days", days, "snapshots", n)
	}
}

// reconcileAllRetention runs reconcileRetention for every policy.
func (d *Daemon) reconcileAllRetention(ctx context.Context) {
	d.pol.mu.Lock()
	want := map[string]int{}
	for name, p := range d.pol.byName {
		want[name] = p.rec.RetentionDays
	}
	d.pol.mu.Unlock()
	for name, days := range want {
		d.reconcileRetention(ctx, name, days)
	}
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}
