package daemon

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/schedule"
)

// The scheduler: one goroutine (runPolicies, started by Run, stopped with
// the daemon's background context) that takes each target's time points,
// deletes expired automatic snapshots (policy_retention.go) and prunes
// the events log.
//
// Time. The scheduler goes by the wall clock (Config.Clock), which a host
// may step. It never trusts a timer's elapsed time: it sleeps at most
// maxPolicySleep, and each time it wakes it asks the clock for the time
// again and works out from it which points are due. So:
//   - Downtime, or a step forward over points: the points passed are not
//     back-filled (event "missed"), except the latest when it is less
//     than policy_grace old, which is taken at once.
//   - A step backward: each target remembers the last point it handled
//     (durably, in its record), and only points after it are due, so no
//     point is taken twice; the scheduler waits for the clock to pass it.
//   - A point is handled once, whatever happened: taken, skipped (the
//     previous automatic snapshot still copies), failed or missed.

// maxPolicySleep bounds the scheduler's sleep, and so how long a step of
// the host's clock goes unnoticed.
const maxPolicySleep = time.Minute

// maxMissedCount bounds the count of missed points an event reports.
const maxMissedCount = 100000

// runPolicies is the scheduler's loop.
func (d *Daemon) runPolicies(ctx context.Context) {
	for {
		now := d.clock.Now()
		next := d.policyTick(ctx, now)
		d.loopDone("policies", now)
		wait := maxPolicySleep
		if !next.IsZero() {
			if wait = min(wait, next.Sub(d.clock.Now())); wait <= 0 {
				continue // the clock passed the next point while this run worked
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.clock.After(wait):
		case <-d.pol.wake:
		}
	}
}

// policyTick handles every due time point, deletes expired snapshots and
// returns when the scheduler must look again (zero: nothing scheduled).
func (d *Daemon) policyTick(ctx context.Context, now time.Time) time.Time {
	for _, due := range d.duePoints(now) {
		if ctx.Err() != nil {
			return time.Time{}
		}
		switch result := d.runPoint(ctx, due, now); result {
		case resultStarted: // a started machine snapshot recorded its point itself
		case resultStopping:
			return time.Time{} // not handled: the next start takes it, within the grace
		default:
			d.recordPoint(due, result)
		}
	}
	next := d.nextPolicyPoint(now)
	if e := d.expireSnapshots(ctx, now); !e.IsZero() && (next.IsZero() || e.Before(next)) {
		next = e
	}
	d.pruneEvents(now)
	return next
}

// duePoint is one target's time point to handle now.
type duePoint struct {
	key    targetKey
	target targetRecord // as it was when chosen
	name   string       // the disk's or machine's name now
	policy policyRecord
	sched  schedule.Schedule
	point  time.Time
	// missed counts the points after the last one handled and before
	// point; late says point itself is older than policy_grace (so it is
	// missed too).
	missed int
	late   bool
}

// duePoints finds each target's latest point not yet handled, and drops
// targets whose disk or machine is gone.
func (d *Daemon) duePoints(now time.Time) []duePoint {
	live := d.liveTargets()
	p := &d.pol
	var out []duePoint
	var dropped []targetRecord
	p.mu.Lock()
	for k, t := range p.targets {
		name, ok := live[k]
		if !ok {
			if err := d.store.DeleteRecord(k.storeKey()); err != nil {
				d.log.Warn("could not drop a policy target", "target", t.rec.Name, "err", err)
				continue
			}
			delete(p.targets, k)
			dropped = append(dropped, t.rec)
			continue
		}
		pol := p.byName[t.rec.Policy]
		latest, ok := pol.sched.Latest(now)
		if !ok || !latest.After(t.rec.Last) {
			continue
		}
		out = append(out, duePoint{key: k, target: t.rec, name: name, policy: pol.rec, sched: pol.sched, point: latest,
			missed: pol.sched.Count(t.rec.Last, latest, maxMissedCount) - 1,
			late:   now.Sub(latest) > time.Duration(d.cfg.PolicyGrace)})
	}
	p.mu.Unlock()
	for _, t := range dropped {
		d.event(targetEvent(api.Event{Kind: api.EventDropped, Policy: t.Policy,
			Message: fmt.Sprintf("%s %q was deleted: policy %q no longer applies to it", t.Kind, t.Name, t.Policy)}, t.Kind, t.Name))
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].point.Before(out[j].point) || out[i].point.Equal(out[j].point) && out[i].name < out[j].name
	})
	return out
}

// targetEvent is e about a disk or a machine.
func targetEvent(e api.Event, kind, name string) api.Event {
	if kind == api.TargetMachine {
		e.Machine = name
	} else {
		e.Disk = name
	}
	return e
}

// nextPolicyPoint is the earliest point not yet handled of any target.
func (d *Daemon) nextPolicyPoint(now time.Time) time.Time {
	p := &d.pol
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	for _, t := range p.targets {
		from := now
		if t.rec.Last.After(from) {
			from = t.rec.Last
		}
		if n, ok := p.byName[t.rec.Policy].sched.Next(from); ok && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next
}

// runPoint handles one due point and returns its result.
func (d *Daemon) runPoint(ctx context.Context, due duePoint, now time.Time) string {
	grace := time.Duration(d.cfg.PolicyGrace)
	if n := due.missed + btoi(due.late); n > 0 {
		first, _ := due.sched.Next(due.target.Last)
		msg := fmt.Sprintf("%s of policy %q passed from %s while cairnd was not running or the host's clock stepped forward, and %s not back-filled",
			plural(n, "time point"), due.policy.Name, first.UTC().Format(time.RFC3339), isAre(n))
		if due.late {
			msg += fmt.Sprintf(" (the latest, %s, is older than policy_grace, %v)", due.point.UTC().Format(time.RFC3339), grace)
		} else {
			msg += fmt.Sprintf("; the latest, %s, is within policy_grace (%v) and is taken now", due.point.UTC().Format(time.RFC3339), grace)
		}
		d.event(targetEvent(api.Event{Kind: api.EventMissed, Policy: due.policy.Name, Message: msg}, due.target.Kind, due.name))
	}
	if due.late {
		return resultMissed
	}
	auto := &autoSnap{policy: due.policy.Name, retentionDays: due.policy.RetentionDays, created: now}
	name := autoName(due.policy.Name, due.point)
	if due.target.Kind == api.TargetMachine {
		return d.runMachinePoint(due, name, auto)
	}
	return d.runDiskPoint(ctx, due, name, auto)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	if n >= maxMissedCount {
		return fmt.Sprintf("at least %d %ss", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// keptFor describes how long an automatic snapshot is kept.
func keptFor(days int) string {
	if days == api.RetentionForever {
		return "kept until deleted by hand"
	}
	return "kept " + plural(days, "day")
}

// runDiskPoint takes a disk's automatic snapshot, unless the previous one
// still copies.
func (d *Daemon) runDiskPoint(ctx context.Context, due duePoint, name string, auto *autoSnap) string {
	ev := api.Event{Policy: due.policy.Name, Disk: due.name, Snapshot: name}
	_, vol, err := d.volume(due.name)
	if err != nil {
		ev.Kind, ev.Message = api.EventFailed, fmt.Sprintf("policy %q could not take %s: %v", due.policy.Name, exportName{due.name, name}, err)
		d.event(ev)
		return resultFailed
	}
	if prev, ok := newestAuto(vol); ok && prev.State == cow.StateCopying {
		ev.Kind = api.EventSkipped
		ev.Message = fmt.Sprintf("time point %s of policy %q skipped: the previous automatic snapshot %s is still copying out (%.0f%%)",
			due.point.UTC().Format(time.RFC3339), due.policy.Name, exportName{due.name, prev.Name}, prev.Progress)
		d.event(ev)
		return resultSkipped
	}
	req := api.CreateSnapshotRequest{Name: name, Description: "taken by policy " + due.policy.Name}
	snap, err := d.createSnapshot(ctx, due.name, req, auto)
	switch {
	case errors.Is(err, block.ErrExists):
		return resultTaken // taken before a restart that came before its point was recorded
	case errors.Is(err, block.ErrShutdown):
		return resultStopping
	case err != nil:
		ev.Kind, ev.Message = api.EventFailed, fmt.Sprintf("policy %q could not take %s: %v", due.policy.Name, exportName{due.name, name}, err)
		d.event(ev)
		return resultFailed
	}
	ev.Kind = api.EventTaken
	ev.Message = fmt.Sprintf("policy %q took %s (%s, written %s)", due.policy.Name, snap.Export, keptFor(auto.retentionDays), api.FormatSize(int64(snap.WrittenBytes)))
	d.event(ev)
	return resultTaken
}

// newestAuto is the disk's newest automatic snapshot.
func newestAuto(vol *cow.Volume) (cow.SnapshotInfo, bool) {
	snaps := vol.Snapshots()
	for i := len(snaps) - 1; i >= 0; i-- {
		if snaps[i].Kind == api.SnapshotAuto && snaps[i].State != cow.StateDeleting {
			return snaps[i], true
		}
	}
	return cow.SnapshotInfo{}, false
}

// runMachinePoint starts a machine's automatic snapshot (a task, as a
// manual one), unless the previous one is still being taken or copies.
// How it ends is an event, and the target's last result.
func (d *Daemon) runMachinePoint(due duePoint, name string, auto *autoSnap) string {
	ev := api.Event{Policy: due.policy.Name, Machine: due.name, Snapshot: name}
	if why := d.machineBusy(due); why != "" {
		ev.Kind = api.EventSkipped
		ev.Message = fmt.Sprintf("time point %s of policy %q skipped: %s", due.point.UTC().Format(time.RFC3339), due.policy.Name, why)
		d.event(ev)
		return resultSkipped
	}
	if d.checkChanges() != nil {
		return resultStopping
	}
	d.recordPoint(due, resultStarted) // before the task, whose end records the result
	d.setBusy(due, true)
	req := api.CreateMachineSnapshotRequest{Name: name, Description: "taken by policy " + due.policy.Name, Consistency: due.policy.consistency()}
	var once sync.Once
	ended := func(err error) { once.Do(func() { d.machinePointEnded(due, ev, name, auto, err) }) }
	if _, err := d.createMachineSnapshot(d.bg, due.name, req, auto, ended); err != nil {
		ended(err) // refused before its task started
	}
	return resultStarted
}

// machinePointEnded records how a machine's automatic snapshot ended:
// taken (its seal committed; its copy-out goes on in its task) or failed.
func (d *Daemon) machinePointEnded(due duePoint, ev api.Event, name string, auto *autoSnap, err error) {
	d.setBusy(due, false)
	result := resultTaken
	switch {
	case err == nil:
		ev.Kind, ev.Message = api.EventTaken, fmt.Sprintf("policy %q took machine snapshot %s@%s (%s)", due.policy.Name, due.name, name, keptFor(auto.retentionDays))
	case errors.Is(err, block.ErrExists):
		// taken before a restart that came before its point was recorded
	default:
		result = resultFailed
		ev.Kind, ev.Message = api.EventFailed, fmt.Sprintf("policy %q could not take machine snapshot %s@%s: %v", due.policy.Name, due.name, name, err)
	}
	d.recordResult(due, result)
	if ev.Kind != "" {
		d.event(ev)
	}
}

// machineBusy says why a machine's point must be skipped: its previous
// automatic snapshot is still being taken or still copies out.
func (d *Daemon) machineBusy(due duePoint) string {
	d.pol.mu.Lock()
	t := d.pol.targets[due.key]
	busy := t != nil && t.busy
	d.pol.mu.Unlock()
	if busy {
		return "the previous automatic machine snapshot is still being taken"
	}
	d.mu.Lock()
	m := d.machines[due.name]
	var disks []string
	if m != nil {
		disks = m.rec.Disks
	}
	d.mu.Unlock()
	var copying []string
	for _, disk := range disks {
		if _, vol, err := d.volume(disk); err == nil {
			if prev, ok := newestAuto(vol); ok && prev.State == cow.StateCopying {
				copying = append(copying, exportName{disk, prev.Name}.String())
			}
		}
	}
	if len(copying) > 0 {
		return "the previous automatic snapshot is still copying out (" + strings.Join(copying, ", ") + ")"
	}
	return ""
}

func (d *Daemon) setBusy(due duePoint, busy bool) {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	if t := d.pol.targets[due.key]; t != nil {
		t.busy = busy
	}
}

// recordPoint records, durably, that a target's point was handled, unless
// the target changed meanwhile (its policy removed or replaced).
func (d *Daemon) recordPoint(due duePoint, result string) {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	t := d.pol.targets[due.key]
	if t == nil || t.rec.Policy != due.target.Policy || !t.rec.Applied.Equal(due.target.Applied) {
		return
	}
	if t.rec.Last.After(due.point) {
		return // rescheduled meanwhile (cairn policy set): its points count from then
	}
	t.rec.Last, t.rec.LastResult = due.point, result
	if err := d.putDurable(due.key.storeKey(), t.rec); err != nil {
		d.log.Warn("could not record a policy's time point; after a restart it may be handled again", "policy", due.policy.Name, "target", due.name, "err", err)
	}
}

// recordResult records how a started point ended (a machine snapshot),
// if it is still the target's last point.
func (d *Daemon) recordResult(due duePoint, result string) {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	t := d.pol.targets[due.key]
	if t == nil || t.rec.Policy != due.target.Policy || !t.rec.Last.Equal(due.point) {
		return
	}
	t.rec.LastResult = result
	if err := d.store.PutRecord(due.key.storeKey(), t.rec); err != nil {
		d.log.Warn("could not record a policy's result", "policy", due.policy.Name, "target", due.name, "err", err)
	}
}

// startLoops starts the policy scheduler and the capacity sampler; they
// stop when the background context ends (shutdown waits for them).
func (d *Daemon) startLoops() {
	d.loops.Add(2)
	go func() {
		defer d.loops.Done()
		d.runPolicies(d.bg)
	}()
	go func() {
		defer d.loops.Done()
		d.runCapacitySampler(d.bg)
	}()
}

// loopDone tells Config.LoopDone, if set, that a loop is about to sleep.
func (d *Daemon) loopDone(loop string, now time.Time) {
	if d.cfg.LoopDone != nil {
		d.cfg.LoopDone(loop, now)
	}
}
