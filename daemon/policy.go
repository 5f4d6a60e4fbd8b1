package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/schedule"
	"github.com/cairn-storage/cairn/store"
)

// Automatic snapshot policies (docs/policies.md): a schedule (package
// schedule) and a retention, applied to disks and machines. This file
// holds the policies and their targets: records, the API's create, list,
// change, delete, apply and remove. policy_run.go runs them;
// policy_retention.go deletes what they took when its time is up, or to
// make room at the quota.
//
// A disk or a machine has at most one policy: applying another replaces
// it. Targets are kept by id, so a disk deleted and created again under
// its name does not inherit its predecessor's policy; a target whose disk
// or machine is gone is dropped at the next run (event "dropped").

// Policy defaults and limits.
const (
	DefaultPolicyQuota      = 100
	DefaultPolicyGrace      = 30 * time.Minute
	DefaultEventHistory     = 30 * 24 * time.Hour
	DefaultCapacityInterval = time.Hour
	DefaultCapacityHistory  = 90 * 24 * time.Hour
	// MaxRetentionDays is the longest retention short of forever
	// (Alibaba's bound).
	MaxRetentionDays = 65536
	// autoPrefix starts every automatic snapshot's name; manual snapshot
	// names may not (SnapshotNameRule).
	autoPrefix = "auto-"
)

// policyDefaults fills the policy, event and capacity settings.
func (c Config) policyDefaults() Config {
	if c.PolicyQuota == 0 {
		c.PolicyQuota = DefaultPolicyQuota
	}
	if c.PolicyGrace == 0 {
		c.PolicyGrace = Duration(DefaultPolicyGrace)
	}
	if c.EventHistory == 0 {
		c.EventHistory = Duration(DefaultEventHistory)
	}
	if c.CapacityInterval == 0 {
		c.CapacityInterval = Duration(DefaultCapacityInterval)
	}
	if c.CapacityHistory == 0 {
		c.CapacityHistory = Duration(DefaultCapacityHistory)
	}
	return c
}

// Record formats (store records; see records.go).
const (
	policyRecordVersion = 1
	targetRecordVersion = 1
)

// policyRecord is one policy.
type policyRecord struct {
	Version       int       `json:"version"`
	Name          string    `json:"name"`
	Description   string    `json:"description,omitempty"`
	Times         []string  `json:"times,omitempty"`
	EveryMinutes  int       `json:"every_minutes,omitempty"`
	Weekdays      []string  `json:"weekdays"`
	RetentionDays int       `json:"retention_days"` // api.RetentionForever: forever
	TimeZone      string    `json:"time_zone"`
	Consistency   string    `json:"consistency,omitempty"` // of machine snapshots; "": auto
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
}

// targetRecord is a policy applied to one disk or machine, with its
// schedule state: Last is the last time point handled (taken, skipped,
// failed or missed), so a restart neither repeats it nor back-fills
// before it.
type targetRecord struct {
	Version    int       `json:"version"`
	Kind       string    `json:"kind"` // api.TargetDisk or api.TargetMachine
	ID         uint64    `json:"id"`   // the disk's or machine's id
	Name       string    `json:"name"` // its name when applied
	Policy     string    `json:"policy"`
	Applied    time.Time `json:"applied"`
	Last       time.Time `json:"last"`
	LastResult string    `json:"last_result,omitempty"`
}

// Results of a time point (targetRecord.LastResult).
const (
	resultApplied = "" // no point handled since the policy was applied
	resultTaken   = "taken"
	resultStarted = "started" // a machine snapshot is being taken
	resultSkipped = "skipped"
	resultFailed  = "failed"
	resultMissed  = "missed"
	// resultStopping: cairnd began to stop before the point was taken; it
	// is not recorded, so the next start takes it within the grace.
	resultStopping = "stopping"
)

// policy is one policy in memory.
type policy struct {
	rec   policyRecord
	sched schedule.Schedule
}

// targetKey names a target: its kind and its disk's or machine's id.
type targetKey struct {
	kind string
	id   uint64
}

func (k targetKey) storeKey() string { return store.PolicyTargetKey(k.kind, k.id) }

// policyTarget is one target in memory.
type policyTarget struct {
	rec targetRecord
	// busy is set while a machine snapshot the policy started is being
	// taken: the next point is skipped.
	busy bool
}

// policies is the daemon's policy state. mu is a leaf lock: it may be
// taken under Daemon.mu and snapMu, nothing is taken under it, and the
// only slow work under it is writing the small records it guards.
type policies struct {
	mu      sync.Mutex
	byName  map[string]*policy          // guarded by mu
	targets map[targetKey]*policyTarget // guarded by mu
	kept    map[string]string           // guarded by mu: expired snapshots kept, and why (reported once)
	wake    chan struct{}               // pokes the scheduler (policy_run.go) after a change
}

// autoSnap describes an automatic snapshot: the policy taking it, its
// retention and the scheduler's time.
type autoSnap struct {
	policy        string
	retentionDays int
	created       time.Time
}

// meta is the cow metadata of a snapshot: a manual one when a is nil.
func (a *autoSnap) meta(req api.CreateSnapshotRequest, kind string) cow.SnapshotMeta {
	m := cow.SnapshotMeta{Name: req.Name, Description: req.Description, Kind: kind}
	if a != nil {
		m.Policy, m.RetentionDays, m.Created = a.policy, a.retentionDays, a.created
	}
	return m
}

// expires is when a snapshot taken at created with a retention of days
// is deleted; nil when it is kept until deleted by hand.
func expires(created time.Time, days int) *api.Time {
	if days <= 0 {
		return nil
	}
	t := api.At(created.Add(retention(days)))
	return &t
}

// retention is a retention in days as a duration: whole days of 24 hours
// (a retention does not follow a time zone's daylight-saving changes).
func retention(days int) time.Duration { return time.Duration(days) * 24 * time.Hour }

// autoName is the name of the automatic snapshot a policy takes at point:
// auto-<policy>-<UTC time>, the same for every retry of the point.
func autoName(policy string, point time.Time) string {
	return autoPrefix + policy + "-" + point.UTC().Format("20060102T150405Z")
}

// loadPolicies reads the policies and their targets. A record of a format
// this cairnd does not know stops the start, saying so.
func (d *Daemon) loadPolicies() error {
	p := &d.pol
	p.byName = map[string]*policy{}
	p.targets = map[targetKey]*policyTarget{}
	p.kept = map[string]string{}
	p.wake = make(chan struct{}, 1)
	err := d.store.ListRecords(store.PolicyPrefix, func(key string, raw []byte) error {
		var rec policyRecord
		if err := decodeVersioned(key, raw, &rec, &rec.Version, policyRecordVersion); err != nil {
			return err
		}
		sched, err := rec.schedule()
		if err != nil {
			return fmt.Errorf("store record %s: %w", key, err)
		}
		p.byName[rec.Name] = &policy{rec: rec, sched: sched}
		return nil
	})
	if err != nil {
		return err
	}
	return d.store.ListRecords(store.PolicyTargetPrefix, func(key string, raw []byte) error {
		var rec targetRecord
		if err := decodeVersioned(key, raw, &rec, &rec.Version, targetRecordVersion); err != nil {
			return err
		}
		if p.byName[rec.Policy] == nil {
			d.log.Warn("dropping the target of a policy that no longer exists", "policy", rec.Policy, "target", rec.Name)
			return d.store.DeleteRecord(key)
		}
		p.targets[targetKey{rec.Kind, rec.ID}] = &policyTarget{rec: rec}
		return nil
	})
}

// decodeVersioned decodes a versioned record, refusing a version other
// than want with a message that says what to do.
func decodeVersioned(key string, raw []byte, v any, version *int, want int) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("store record %s is unreadable: %w", key, err)
	}
	if *version != want {
		return fmt.Errorf("store record %s has format version %d; this cairnd reads version %d: run the cairnd that wrote it (or a newer one)", key, *version, want)
	}
	return nil
}

// normalize writes the schedule's fields as the API shows them: times
// sorted and each once, weekdays Monday first.
func (r *policyRecord) normalize(sched schedule.Schedule) {
	r.Weekdays = sched.Weekdays()
	if r.EveryMinutes == 0 {
		r.Times = sched.Times()
	}
}

// consistency is what the policy's machine snapshots ask for.
func (r policyRecord) consistency() string {
	if r.Consistency == "" {
		return api.ConsistencyAuto
	}
	return r.Consistency
}

// schedule is the record's schedule.
func (r policyRecord) schedule() (schedule.Schedule, error) {
	return schedule.New(schedule.Spec{Times: r.Times, Every: r.EveryMinutes, Weekdays: r.Weekdays, Zone: r.TimeZone})
}

// checkPolicy validates a policy's record as a request would set it and
// returns its schedule; errors name the API field.
func checkPolicy(rec policyRecord) (schedule.Schedule, error) {
	if !ValidName(rec.Name) {
		return schedule.Schedule{}, invalidField(fieldName, "name %q: a policy name is %s", rec.Name, NameRule)
	}
	if err := checkDescription(rec.Description); err != nil {
		return schedule.Schedule{}, err
	}
	if d := rec.RetentionDays; d != api.RetentionForever && (d < 1 || d > MaxRetentionDays) {
		return schedule.Schedule{}, invalidField("retention_days", "retention_days %d: must be from 1 to %d days, or %d to keep the snapshots until deleted by hand",
			d, MaxRetentionDays, api.RetentionForever)
	}
	switch rec.Consistency {
	case "", api.ConsistencyAuto, api.ConsistencyCrash, api.ConsistencyFilesystem:
	default:
		return schedule.Schedule{}, invalidField(fieldConsistency, "consistency %q: must be crash, filesystem or auto (of the machine snapshots it takes)", rec.Consistency)
	}
	sched, err := rec.schedule()
	if se := (*schedule.Error)(nil); errors.As(err, &se) {
		return sched, invalidField(se.Field, "%s", se.Error())
	}
	return sched, err
}

// hostZone is the host's IANA time zone name (a policy's default): $TZ,
// /etc/timezone, or where /etc/localtime points; UTC when none says.
func hostZone() string {
	candidates := []string{strings.TrimPrefix(os.Getenv("TZ"), ":")}
	if b, err := os.ReadFile("/etc/timezone"); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(b)))
	}
	if link, err := os.Readlink("/etc/localtime"); err == nil {
		if _, name, ok := strings.Cut(filepath.ToSlash(link), "zoneinfo/"); ok {
			candidates = append(candidates, name)
		}
	}
	for _, c := range candidates {
		if c == "" || c == "Local" || filepath.IsAbs(c) {
			continue
		}
		if _, err := time.LoadLocation(c); err == nil {
			return c
		}
	}
	return "UTC"
}

// CreatePolicy creates a policy, applied to nothing yet.
func (d *Daemon) CreatePolicy(ctx context.Context, req api.CreatePolicyRequest) (api.Policy, error) {
	now := d.clock.Now().UTC()
	rec := policyRecord{Version: policyRecordVersion, Name: req.Name, Description: req.Description, Times: req.Times,
		EveryMinutes: req.EveryMinutes, Weekdays: req.Weekdays, RetentionDays: api.DefaultRetentionDays,
		TimeZone: req.TimeZone, Consistency: req.Consistency, Created: now, Updated: now}
	if req.RetentionDays != nil {
		rec.RetentionDays = *req.RetentionDays
	}
	if rec.TimeZone == "" {
		rec.TimeZone = hostZone()
	}
	sched, err := checkPolicy(rec)
	if err != nil {
		return api.Policy{}, err
	}
	rec.normalize(sched)
	if err := d.checkChanges(); err != nil {
		return api.Policy{}, err
	}
	p := &d.pol
	p.mu.Lock()
	switch {
	case p.byName[rec.Name] != nil:
		err = fieldError(block.ErrExists, fieldName, "policy %q already exists: change it with cairn policy set, or choose another name", rec.Name)
	case len(p.byName) >= d.cfg.PolicyQuota:
		err = errorf(block.ErrQuota, "there are already %d policies, the quota (policy_quota = %d): delete policies no longer used (cairn policy delete NAME)",
			len(p.byName), d.cfg.PolicyQuota)
	default:
		err = d.putDurable(store.PolicyKey(rec.Name), rec)
	}
	if err == nil {
		p.byName[rec.Name] = &policy{rec: rec, sched: sched}
	}
	p.mu.Unlock()
	if err != nil {
		return api.Policy{}, err
	}
	d.log.Info("policy created", "policy", rec.Name, "times", rec.Times, "every_minutes", rec.EveryMinutes, "weekdays", rec.Weekdays,
		"retention_days", rec.RetentionDays, "time_zone", rec.TimeZone)
	return d.GetPolicy(ctx, rec.Name)
}

// checkChanges refuses changes once shutdown began.
func (d *Daemon) checkChanges() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.checkChange()
}

// UpdatePolicy changes a policy's fields. A new schedule counts from now:
// its points before the change are not due. A new retention applies to
// the snapshots the policy already took.
func (d *Daemon) UpdatePolicy(ctx context.Context, name string, req api.UpdatePolicyRequest) (api.Policy, error) {
	if err := d.checkChanges(); err != nil {
		return api.Policy{}, err
	}
	p := &d.pol
	p.mu.Lock()
	pol, err := d.lookupPolicy(name)
	if err != nil {
		p.mu.Unlock()
		return api.Policy{}, err
	}
	rec := pol.rec
	rec.Times, rec.Weekdays = slices.Clone(rec.Times), slices.Clone(rec.Weekdays)
	if req.Description != nil {
		rec.Description = *req.Description
	}
	if req.Times != nil {
		rec.Times, rec.EveryMinutes = *req.Times, 0
	}
	if req.EveryMinutes != nil {
		rec.EveryMinutes = *req.EveryMinutes
		if req.Times == nil {
			rec.Times = nil
		}
	}
	if req.Weekdays != nil {
		rec.Weekdays = *req.Weekdays
	}
	if req.RetentionDays != nil {
		rec.RetentionDays = *req.RetentionDays
	}
	if req.TimeZone != nil {
		rec.TimeZone = *req.TimeZone
	}
	if req.Consistency != nil {
		rec.Consistency = *req.Consistency
	}
	now := d.clock.Now().UTC()
	rec.Updated = now
	sched, err := checkPolicy(rec)
	if err == nil {
		rec.normalize(sched)
		err = d.putDurable(store.PolicyKey(name), rec)
	}
	rescheduled := err == nil && (req.Times != nil || req.EveryMinutes != nil || req.Weekdays != nil || req.TimeZone != nil)
	if rescheduled {
		for k, t := range p.targets {
			if t.rec.Policy == name && t.rec.Last.Before(now) {
				t.rec.Last = now
				if err := d.store.PutRecord(k.storeKey(), t.rec); err != nil {
					d.log.Warn("could not record a policy target's schedule; its next point counts from its last one", "policy", name, "target", t.rec.Name, "err", err)
				}
			}
		}
	}
	if err == nil {
		pol.rec, pol.sched = rec, sched
	}
	p.mu.Unlock()
	if err != nil {
		return api.Policy{}, err
	}
	d.pokePolicies()
	if req.RetentionDays != nil {
		d.reconcileRetention(ctx, name, rec.RetentionDays)
	}
	d.log.Info("policy changed", "policy", name, "times", rec.Times, "every_minutes", rec.EveryMinutes, "weekdays", rec.Weekdays,
		"retention_days", rec.RetentionDays, "time_zone", rec.TimeZone)
	return d.GetPolicy(ctx, name)
}

// lookupPolicy finds a policy by the name in a request. Caller holds
// pol.mu.
func (d *Daemon) lookupPolicy(name string) (*policy, error) {
	if !ValidName(name) {
		return nil, invalidField(fieldName, "name %q: a policy name is %s", name, NameRule)
	}
	pol := d.pol.byName[name]
	if pol == nil {
		return nil, errorf(block.ErrNotFound, "policy %q not found (cairn policy list shows them)", name)
	}
	return pol, nil
}

// DeletePolicy deletes a policy and removes it from its targets. The
// snapshots it took stay, and are still deleted when their retention
// ends.
func (d *Daemon) DeletePolicy(ctx context.Context, name string) error {
	if err := d.checkChanges(); err != nil {
		return err
	}
	p := &d.pol
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := d.lookupPolicy(name); err != nil {
		return err
	}
	deletes := []string{store.PolicyKey(name)}
	for k, t := range p.targets {
		if t.rec.Policy == name {
			deletes = append(deletes, k.storeKey())
		}
	}
	if err := d.updateDurable(nil, deletes); err != nil {
		return err
	}
	for k, t := range p.targets {
		if t.rec.Policy == name {
			delete(p.targets, k)
		}
	}
	delete(p.byName, name)
	d.metrics.forgetPolicy(name)
	d.log.Info("policy deleted", "policy", name, "targets", len(deletes)-1)
	return nil
}

// updateDurable applies record puts and deletes at once, durably.
func (d *Daemon) updateDurable(puts map[string]any, deletes []string) error {
	if err := d.store.Update(puts, deletes); err != nil {
		return err
	}
	return d.store.Sync()
}

// resolveTargets finds the disks and machines a request names, by id.
func (d *Daemon) resolveTargets(req api.PolicyTargetsRequest) ([]targetRecord, error) {
	if len(req.Disks) == 0 && len(req.Machines) == 0 {
		return nil, invalidField(fieldDisks, "disks: name at least one disk or machine")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []targetRecord
	for _, name := range req.Disks {
		if err := checkDiskName(fieldDisks, name); err != nil {
			return nil, err
		}
		k := d.disks[name]
		if k == nil {
			return nil, fieldError(block.ErrNotFound, fieldDisks, "disks: disk %q not found", name)
		}
		out = append(out, targetRecord{Kind: api.TargetDisk, ID: k.rec.ID, Name: name})
	}
	for _, name := range req.Machines {
		m := d.machines[name]
		if m == nil {
			return nil, fieldError(block.ErrNotFound, "machines", "machines: machine %q not found", name)
		}
		out = append(out, targetRecord{Kind: api.TargetMachine, ID: m.rec.ID, Name: name})
	}
	return out, nil
}

// ApplyPolicy applies a policy to disks and machines, replacing the
// policy each had. Its first point is the first after now.
func (d *Daemon) ApplyPolicy(ctx context.Context, name string, req api.PolicyTargetsRequest) (api.Policy, error) {
	if err := d.checkChanges(); err != nil {
		return api.Policy{}, err
	}
	targets, err := d.resolveTargets(req)
	if err != nil {
		return api.Policy{}, err
	}
	now := d.clock.Now().UTC()
	p := &d.pol
	p.mu.Lock()
	if _, err := d.lookupPolicy(name); err != nil {
		p.mu.Unlock()
		return api.Policy{}, err
	}
	puts := map[string]any{}
	for i := range targets {
		t := &targets[i]
		t.Version, t.Policy, t.Applied, t.Last = targetRecordVersion, name, now, now
		puts[targetKey{t.Kind, t.ID}.storeKey()] = *t
	}
	err = d.updateDurable(puts, nil)
	if err == nil {
		for _, t := range targets {
			if old := p.targets[targetKey{t.Kind, t.ID}]; old != nil && old.rec.Policy != name {
				d.log.Info("policy replaced on its target", "target", t.Name, "old", old.rec.Policy, "new", name)
			}
			p.targets[targetKey{t.Kind, t.ID}] = &policyTarget{rec: t}
		}
	}
	p.mu.Unlock()
	if err != nil {
		return api.Policy{}, err
	}
	d.pokePolicies()
	d.log.Info("policy applied", "policy", name, "disks", req.Disks, "machines", req.Machines)
	return d.GetPolicy(ctx, name)
}

// RemovePolicy removes a policy from disks and machines that have it. The
// snapshots it took of them stay.
func (d *Daemon) RemovePolicy(ctx context.Context, name string, req api.PolicyTargetsRequest) (api.Policy, error) {
	if err := d.checkChanges(); err != nil {
		return api.Policy{}, err
	}
	targets, err := d.resolveTargets(req)
	if err != nil {
		return api.Policy{}, err
	}
	p := &d.pol
	p.mu.Lock()
	if _, err := d.lookupPolicy(name); err != nil {
		p.mu.Unlock()
		return api.Policy{}, err
	}
	var deletes []string
	for _, t := range targets {
		cur := p.targets[targetKey{t.Kind, t.ID}]
		if cur == nil || cur.rec.Policy != name {
			p.mu.Unlock()
			field := fieldDisks
			if t.Kind == api.TargetMachine {
				field = "machines"
			}
			return api.Policy{}, fieldError(block.ErrNotFound, field, "%s: %s %q does not have policy %q", field, t.Kind, t.Name, name)
		}
		deletes = append(deletes, targetKey{t.Kind, t.ID}.storeKey())
	}
	err = d.updateDurable(nil, deletes)
	if err == nil {
		for _, t := range targets {
			delete(p.targets, targetKey{t.Kind, t.ID})
		}
	}
	p.mu.Unlock()
	if err != nil {
		return api.Policy{}, err
	}
	d.log.Info("policy removed", "policy", name, "disks", req.Disks, "machines", req.Machines)
	return d.GetPolicy(ctx, name)
}

// ListPolicies describes every policy, by name.
func (d *Daemon) ListPolicies(ctx context.Context) []api.Policy {
	live := d.liveTargets()
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	out := make([]api.Policy, 0, len(d.pol.byName))
	for _, pol := range d.pol.byName {
		out = append(out, d.policyToAPI(pol, live))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// GetPolicy describes one policy with its targets' next time points.
func (d *Daemon) GetPolicy(ctx context.Context, name string) (api.Policy, error) {
	live := d.liveTargets()
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	pol, err := d.lookupPolicy(name)
	if err != nil {
		return api.Policy{}, err
	}
	return d.policyToAPI(pol, live), nil
}

// nextRunsShown is how many of a target's next points the API lists.
const nextRunsShown = 5

// policyToAPI describes pol; live names the disks and machines that
// exist now, by target. Caller holds pol.mu.
func (d *Daemon) policyToAPI(pol *policy, live map[targetKey]string) api.Policy {
	r := pol.rec
	out := api.Policy{Name: r.Name, Description: r.Description, Times: r.Times, EveryMinutes: r.EveryMinutes, Weekdays: r.Weekdays,
		RetentionDays: r.RetentionDays, TimeZone: r.TimeZone, Consistency: r.consistency(), Created: api.At(r.Created), Updated: api.At(r.Updated), Targets: []api.PolicyTarget{}}
	if out.Weekdays == nil {
		out.Weekdays = []string{}
	}
	now := d.clock.Now()
	for k, t := range d.pol.targets {
		name, ok := live[k]
		if t.rec.Policy != r.Name || !ok {
			continue
		}
		pt := api.PolicyTarget{Kind: k.kind, Name: name, Applied: api.At(t.rec.Applied), LastResult: t.rec.LastResult, NextRuns: []api.Time{}}
		if t.rec.LastResult != resultApplied {
			last := api.At(t.rec.Last)
			pt.LastPoint = &last
		}
		from := now
		if t.rec.Last.After(from) {
			from = t.rec.Last // the host's clock stepped back: nothing before the last point is due again
		}
		for _, p := range pol.sched.NextN(from, nextRunsShown) {
			pt.NextRuns = append(pt.NextRuns, api.At(p))
		}
		if len(pt.NextRuns) > 0 && (out.NextRun == nil || pt.NextRuns[0].Before(out.NextRun.Time)) {
			next := pt.NextRuns[0]
			out.NextRun = &next
		}
		out.Targets = append(out.Targets, pt)
	}
	sort.Slice(out.Targets, func(i, j int) bool {
		a, b := out.Targets[i], out.Targets[j]
		return a.Kind < b.Kind || a.Kind == b.Kind && a.Name < b.Name
	})
	return out
}

// liveTargets names every disk and machine that exists now, by target.
func (d *Daemon) liveTargets() map[targetKey]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[targetKey]string, len(d.disks)+len(d.machines))
	for name, k := range d.disks {
		out[targetKey{api.TargetDisk, k.rec.ID}] = name
	}
	for name, m := range d.machines {
		out[targetKey{api.TargetMachine, m.rec.ID}] = name
	}
	return out
}

// policyOf is the policy applied to a disk or machine, "" if none.
func (d *Daemon) policyOf(kind string, id uint64) string {
	d.pol.mu.Lock()
	defer d.pol.mu.Unlock()
	if t := d.pol.targets[targetKey{kind, id}]; t != nil {
		return t.rec.Policy
	}
	return ""
}

// pokePolicies wakes the scheduler to look at the policies again.
func (d *Daemon) pokePolicies() {
	select {
	case d.pol.wake <- struct{}{}:
	default:
	}
}
