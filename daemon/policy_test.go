package daemon_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/internal/clock"
)

// Policies run against a fake clock (internal/clock): the test moves the
// wall clock and waits for the scheduler to have done the work due then
// (Config.LoopDone), so no test sleeps and every time point is exact.

// policyRig is a daemon on a fake clock.
type policyRig struct {
	t     *testing.T
	clock *clock.Fake
	cfg   daemon.Config
	in    *daemontest.Instance
	c     *api.Client
	ticks chan time.Time
	loop  string // the loop whose runs ticks reports: "policies" unless tweak sets "capacity"
}

func newPolicyRig(t *testing.T, start string, tweak func(*daemon.Config)) *policyRig {
	t.Helper()
	r := &policyRig{t: t, clock: clock.NewFake(at(start)), ticks: make(chan time.Time, 10000), loop: "policies"}
	r.cfg = daemontest.Config(t, daemontest.DataDir(t))
	r.cfg.Clock = r.clock
	r.cfg.LoopDone = func(loop string, now time.Time) {
		if loop == r.loop {
			select {
			case r.ticks <- now:
			default:
			}
		}
	}
	if tweak != nil {
		tweak(&r.cfg)
	}
	r.start()
	return r
}

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func (r *policyRig) start() {
	r.t.Helper()
	r.in = daemontest.Start(r.t, &r.cfg)
	r.c = r.in.Client
	r.waitTick(r.clock.Now())
}

// restart stops the daemon, sets the wall clock to when (as a host that
// was down until then) and starts it again.
func (r *policyRig) restart(when string) {
	r.t.Helper()
	if err := r.in.Stop(); err != nil {
		r.t.Fatal(err)
	}
	r.clock.Step(at(when).Sub(r.clock.Now()))
	r.start()
}

// advanceTo lets time pass until when and waits for the scheduler's run
// at that time.
func (r *policyRig) advanceTo(when string) {
	r.t.Helper()
	r.clock.Advance(at(when).Sub(r.clock.Now()))
	r.waitTick(at(when))
}

// step moves the wall clock as a host's clock step does, then lets a
// minute pass, within which the scheduler looks at the clock again.
func (r *policyRig) step(d time.Duration) {
	r.t.Helper()
	r.clock.Step(d)
	r.clock.Advance(time.Minute)
	r.waitTick(r.clock.Now())
}

func (r *policyRig) waitTick(when time.Time) {
	r.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case now := <-r.ticks:
			if !now.Before(when) {
				return
			}
		case <-timeout:
			r.t.Fatalf("the scheduler did not run at %v", when)
		}
	}
}

func (r *policyRig) policy(req api.CreatePolicyRequest, disks ...string) {
	r.t.Helper()
	ctx := context.Background()
	if _, err := r.c.CreatePolicy(ctx, req); err != nil {
		r.t.Fatal(err)
	}
	if len(disks) > 0 {
		if _, err := r.c.ApplyPolicy(ctx, req.Name, api.PolicyTargetsRequest{Disks: disks}); err != nil {
			r.t.Fatal(err)
		}
	}
}

// snapshots names a disk's snapshots, oldest first, waiting for every
// one to be ready (so no point is skipped for a copy still running).
func (r *policyRig) snapshots(disk string) []string {
	r.t.Helper()
	list, err := r.c.Snapshots(context.Background(), disk)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for _, s := range list {
		waitSnapshot(r.t, r.c, disk, s.Name)
		out = append(out, s.Name)
	}
	return out
}

func (r *policyRig) wantSnapshots(disk string, want ...string) {
	r.t.Helper()
	if got := r.snapshots(disk); !slices.Equal(got, want) {
		r.t.Fatalf("disk %s has snapshots %v, want %v", disk, got, want)
	}
}

// events lists the events of a kind (all kinds: "").
func (r *policyRig) events(kind string) []api.Event {
	r.t.Helper()
	ev, err := r.c.Events(context.Background(), api.EventFilter{Kind: kind, Limit: 1000})
	if err != nil {
		r.t.Fatal(err)
	}
	return ev
}

// wantEvent finds the one event of kind about snapshot (any: "") whose
// message has every part.
func (r *policyRig) wantEvent(kind, snapshot string, parts ...string) api.Event {
	r.t.Helper()
	var found []api.Event
	for _, e := range r.events(kind) {
		if snapshot == "" || e.Snapshot == snapshot {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		r.t.Fatalf("%d %s events about %q, want 1: %+v", len(found), kind, snapshot, found)
	}
	for _, p := range parts {
		if !strings.Contains(found[0].Message, p) {
			r.t.Fatalf("%s event %q does not say %q", kind, found[0].Message, p)
		}
	}
	return found[0]
}

func (r *policyRig) target(policy string) api.PolicyTarget {
	r.t.Helper()
	p, err := r.c.Policy(context.Background(), policy)
	if err != nil {
		r.t.Fatal(err)
	}
	if len(p.Targets) != 1 {
		r.t.Fatalf("policy %s has %d targets, want 1", policy, len(p.Targets))
	}
	return p.Targets[0]
}

func intp(n int) *int { return &n }

// TestPolicyTakesAndExpires: a policy takes its snapshot at its point,
// named for it, marked automatic with its retention, and deletes it when
// the retention ends; policy show lists the next runs.
func TestPolicyTakesAndExpires(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil) // a Monday
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "daily", Times: []string{"10:00"}, RetentionDays: intp(1), TimeZone: "UTC"}, "d")
	if next := r.target("daily").NextRuns; len(next) != 5 || !next[0].Equal(at("2031-01-06T10:00:00Z")) || !next[4].Equal(at("2031-01-10T10:00:00Z")) {
		t.Fatalf("next runs %v", next)
	}
	r.advanceTo("2031-01-06T10:00:00Z")
	first := "auto-daily-20310106T100000Z"
	r.wantSnapshots("d", first)
	s, err := r.c.Snapshot(ctx, "d", first)
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != api.SnapshotAuto || s.Policy != "daily" || s.RetentionDays != 1 || s.Expires == nil || !s.Expires.Equal(at("2031-01-07T10:00:00Z")) {
		t.Fatalf("automatic snapshot: kind %q policy %q retention %d expires %v", s.Kind, s.Policy, s.RetentionDays, s.Expires)
	}
	r.wantEvent(api.EventTaken, first, `policy "daily" took d@`+first, "kept 1 day")
	if tg := r.target("daily"); tg.LastResult != "taken" || tg.LastPoint == nil || !tg.LastPoint.Equal(at("2031-01-06T10:00:00Z")) {
		t.Fatalf("target after the run: %+v", tg)
	}

	r.advanceTo("2031-01-07T09:59:59Z")
	r.wantSnapshots("d", first) // not yet expired
	r.advanceTo("2031-01-07T10:00:00Z")
	second := "auto-daily-20310107T100000Z"
	r.wantSnapshots("d", second)
	r.wantEvent(api.EventExpired, first, "end of its retention (1 day")
}

// TestPolicyDaylightSaving: a time in the spring gap runs at the gap's
// end, a time the autumn repeats runs once, at its first occurrence.
func TestPolicyDaylightSaving(t *testing.T) {
	t.Run("gap", func(t *testing.T) {
		r := newPolicyRig(t, "2026-03-29T00:00:00Z", nil) // 01:00 CET, the night clocks go forward at 02:00
		createDisk(t, r.in, "d", "1M")
		r.policy(api.CreatePolicyRequest{Name: "p", Times: []string{"02:30"}, TimeZone: "Europe/Berlin"}, "d")
		r.advanceTo("2026-03-29T00:59:59Z")
		r.wantSnapshots("d")
		r.advanceTo("2026-03-29T01:00:00Z") // 03:00 CEST, the first instant after the gap
		r.wantSnapshots("d", "auto-p-20260329T010000Z")
	})
	t.Run("repeat", func(t *testing.T) {
		r := newPolicyRig(t, "2026-10-25T00:00:00Z", nil) // 02:00 CEST; at 03:00 CEST clocks go back to 02:00 CET
		createDisk(t, r.in, "d", "1M")
		r.policy(api.CreatePolicyRequest{Name: "p", Times: []string{"02:30"}, TimeZone: "Europe/Berlin"}, "d")
		r.advanceTo("2026-10-25T00:30:00Z") // 02:30 CEST
		r.wantSnapshots("d", "auto-p-20261025T003000Z")
		r.advanceTo("2026-10-25T01:30:00Z") // 02:30 CET, the same wall time again
		r.wantSnapshots("d", "auto-p-20261025T003000Z")
		if next := r.target("p").NextRuns[0]; !next.Equal(at("2026-10-26T01:30:00Z")) {
			t.Fatalf("next run %v, want 02:30 CET the next day", next)
		}
	})
}

// TestPolicyQuota: at the quota a policy deletes the disk's oldest
// automatic snapshot, never a manual one nor one a clone reads through;
// when every slot is manual its snapshot fails, saying so.
func TestPolicyQuota(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:30:00Z", func(c *daemon.Config) { c.SnapshotQuota = 3 })
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	if _, err := r.c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "m1"}); err != nil {
		t.Fatal(err)
	}
	r.policy(api.CreatePolicyRequest{Name: "h", EveryMinutes: 60, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	r.advanceTo("2031-01-06T11:00:00Z")
	r.wantSnapshots("d", "m1", "auto-h-20310106T100000Z", "auto-h-20310106T110000Z")
	r.advanceTo("2031-01-06T12:00:00Z")
	r.wantSnapshots("d", "m1", "auto-h-20310106T110000Z", "auto-h-20310106T120000Z")
	r.wantEvent(api.EventEvicted, "auto-h-20310106T100000Z", "quota (snapshot_quota = 3)", "oldest automatic snapshot")

	// A clone reads through the oldest automatic snapshot: the next goes.
	if _, err := r.c.CreateDisk(ctx, api.CreateDiskRequest{Name: "clone", From: "d@auto-h-20310106T110000Z"}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-06T13:00:00Z")
	r.wantSnapshots("d", "m1", "auto-h-20310106T110000Z", "auto-h-20310106T130000Z")
	r.wantEvent(api.EventEvicted, "auto-h-20310106T120000Z")

	// Only manual snapshots and the clone's origin are left to go.
	if _, err := r.c.DeleteSnapshot(ctx, "d", "auto-h-20310106T130000Z", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "m2"}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-06T14:00:00Z")
	r.wantSnapshots("d", "m1", "auto-h-20310106T110000Z", "m2")
	r.wantEvent(api.EventFailed, "auto-h-20310106T140000Z", "quota of 3 snapshots", "2 are manual, which a policy never deletes",
		"auto-h-20310106T110000Z: ", "clone")
	if tg := r.target("h"); tg.LastResult != "failed" {
		t.Fatalf("last result %q, want failed", tg.LastResult)
	}
}

// TestPolicyAllManualQuota: a chain full of manual snapshots makes the
// policy's snapshot fail with an event that says so; nothing is deleted.
func TestPolicyAllManualQuota(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:30:00Z", func(c *daemon.Config) { c.SnapshotQuota = 2 })
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	for _, n := range []string{"m1", "m2"} {
		if _, err := r.c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	r.policy(api.CreatePolicyRequest{Name: "h", EveryMinutes: 60, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	r.wantSnapshots("d", "m1", "m2")
	r.wantEvent(api.EventFailed, "auto-h-20310106T100000Z", "2 are manual, which a policy never deletes", "cairn snapshot delete d NAME")
}

// TestPolicySkipsWhileCopying: a point comes while the disk's previous
// automatic snapshot is still copying out: it is skipped with an event,
// and the next point is taken as usual.
func TestPolicySkipsWhileCopying(t *testing.T) {
	need(t, "nbdcopy")
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	createDisk(t, r.in, "d", "128M")
	// 128 MiB of random data copies out in a few hundred milliseconds;
	// the two points below are handled within a millisecond of each other.
	src := filepath.Join(t.TempDir(), "random")
	data := make([]byte, 128<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", src, nbdURI(r.in, "d")).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy: %v\n%s", err, out)
	}
	r.policy(api.CreatePolicyRequest{Name: "m", EveryMinutes: 1, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	r.advanceTo("2031-01-06T10:01:00Z")
	r.wantEvent(api.EventSkipped, "auto-m-20310106T100100Z", "d@auto-m-20310106T100000Z is still copying out")
	if tg := r.target("m"); tg.LastResult != "skipped" {
		t.Fatalf("last result %q, want skipped", tg.LastResult)
	}
	r.wantSnapshots("d", "auto-m-20310106T100000Z") // waits until it is ready
	r.advanceTo("2031-01-06T10:02:00Z")
	r.wantSnapshots("d", "auto-m-20310106T100000Z", "auto-m-20310106T100200Z")
}

// TestPolicyRestart: after downtime the missed points are not back-filled,
// except the latest when it is within policy_grace; a restart never takes
// a point twice.
func TestPolicyRestart(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T10:59:00Z", func(c *daemon.Config) { c.PolicyGrace = daemon.Duration(30 * time.Minute) })
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "h", EveryMinutes: 60, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T11:00:00Z")
	r.wantSnapshots("d", "auto-h-20310106T110000Z")

	// Down from 11:00 to 13:10: 12:00 is missed, 13:00 is 10 minutes old.
	r.restart("2031-01-06T13:10:00Z")
	r.wantSnapshots("d", "auto-h-20310106T110000Z", "auto-h-20310106T130000Z")
	r.wantEvent(api.EventMissed, "", "1 time point of policy \"h\" passed from 2031-01-06T12:00:00Z", "is not back-filled",
		"the latest, 2031-01-06T13:00:00Z, is within policy_grace (30m0s) and is taken now")

	// Down from 13:10 to 15:40: 14:00 missed, 15:00 is 40 minutes old.
	r.restart("2031-01-06T15:40:00Z")
	r.wantSnapshots("d", "auto-h-20310106T110000Z", "auto-h-20310106T130000Z")
	missed := r.events(api.EventMissed)
	if len(missed) != 2 || !strings.Contains(missed[1].Message, "2 time points") || !strings.Contains(missed[1].Message, "older than policy_grace") {
		t.Fatalf("missed events %+v", missed)
	}
	if tg := r.target("h"); tg.LastResult != "missed" || !tg.LastPoint.Equal(at("2031-01-06T15:00:00Z")) {
		t.Fatalf("target %+v", tg)
	}

	// A restart at the same time handles nothing again.
	n := len(r.events(""))
	r.restart("2031-01-06T15:40:00Z")
	if got := len(r.events("")); got != n {
		t.Fatalf("a restart with no time passed added %d events", got-n)
	}
	r.advanceTo("2031-01-06T16:00:00Z")
	r.wantSnapshots("d", "auto-h-20310106T110000Z", "auto-h-20310106T130000Z", "auto-h-20310106T160000Z")
}

// TestPolicyClockSteps: a step of the host's clock backwards never takes a
// point twice; a step forwards is handled like downtime.
func TestPolicyClockSteps(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "h", EveryMinutes: 60, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	r.step(-30 * time.Minute) // back to 09:31
	if next := r.target("h").NextRuns[0]; !next.Equal(at("2031-01-06T11:00:00Z")) {
		t.Fatalf("next run %v after the step back, want 11:00 (10:00 was taken)", next)
	}
	r.advanceTo("2031-01-06T10:00:00Z")
	r.advanceTo("2031-01-06T10:30:00Z")
	r.wantSnapshots("d", "auto-h-20310106T100000Z")
	r.advanceTo("2031-01-06T11:00:00Z")
	r.step(5*time.Hour + 10*time.Minute) // forward to 16:11
	r.wantSnapshots("d", "auto-h-20310106T100000Z", "auto-h-20310106T110000Z", "auto-h-20310106T160000Z")
	r.wantEvent(api.EventMissed, "", "4 time points", "from 2031-01-06T12:00:00Z", "the host's clock stepped forward")
}

// TestPolicyRetentionChanges: a new retention applies to the snapshots the
// policy already took; removing or deleting the policy keeps them, and
// they still expire.
func TestPolicyRetentionChanges(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	snap := "auto-p-20310106T100000Z"
	if s, _ := r.c.Snapshot(ctx, "d", snap); s.RetentionDays != api.DefaultRetentionDays {
		t.Fatalf("retention %d, want the default %d", s.RetentionDays, api.DefaultRetentionDays)
	}
	if _, err := r.c.UpdatePolicy(ctx, "p", api.UpdatePolicyRequest{RetentionDays: intp(2)}); err != nil {
		t.Fatal(err)
	}
	if s, _ := r.c.Snapshot(ctx, "d", snap); s.RetentionDays != 2 || !s.Expires.Equal(at("2031-01-08T10:00:00Z")) {
		t.Fatalf("after the change: retention %d expires %v", s.RetentionDays, s.Expires)
	}
	if _, err := r.c.RemovePolicy(ctx, "p", api.PolicyTargetsRequest{Disks: []string{"d"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.c.DeletePolicy(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-07T10:00:00Z")
	r.wantSnapshots("d", snap) // kept, and no new one
	r.advanceTo("2031-01-08T10:00:00Z")
	r.wantSnapshots("d")
	r.wantEvent(api.EventExpired, snap, "2 days")

	// Forever: never expires.
	r.policy(api.CreatePolicyRequest{Name: "f", EveryMinutes: 60, RetentionDays: intp(api.RetentionForever), TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-08T11:00:00Z")
	if s, _ := r.c.Snapshot(ctx, "d", "auto-f-20310108T110000Z"); s.RetentionDays != api.RetentionForever || s.Expires != nil {
		t.Fatalf("forever: retention %d expires %v", s.RetentionDays, s.Expires)
	}
}

// TestPolicyKeepsWhatClonesNeed: an expired snapshot a clone reads
// through stays, with one event saying why, and goes once the clone is
// gone.
func TestPolicyKeepsWhatClonesNeed(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, Weekdays: []string{"mon"}, RetentionDays: intp(1), TimeZone: "UTC"}, "d")
	r.advanceTo("2031-01-06T10:00:00Z")
	snap := "auto-p-20310106T100000Z"
	r.wantSnapshots("d", snap)
	if _, err := r.c.CreateDisk(ctx, api.CreateDiskRequest{Name: "c", From: "d@" + snap}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-07T10:00:00Z")
	r.advanceTo("2031-01-07T11:00:00Z")
	r.wantSnapshots("d", snap)
	r.wantEvent(api.EventKept, snap, "past its retention", "clones that read through it: c")
	if err := r.c.DeleteDisk(ctx, "c", api.DeleteDiskOptions{}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-07T11:01:00Z")
	r.wantSnapshots("d")
	r.wantEvent(api.EventExpired, snap)
}

// TestPolicyOnMachine: a machine's policy takes machine snapshots (every
// disk at one instant) marked automatic, which expire whole.
func TestPolicyOnMachine(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	ctx := context.Background()
	createDisk(t, r.in, "root", "1M")
	createDisk(t, r.in, "data", "1M")
	if _, err := r.c.CreateMachine(ctx, api.CreateMachineRequest{Name: "vm", Disks: []string{"root", "data"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, RetentionDays: intp(1),
		TimeZone: "UTC", Consistency: api.ConsistencyCrash}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.ApplyPolicy(ctx, "p", api.PolicyTargetsRequest{Machines: []string{"vm"}}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-06T10:00:00Z")
	name := "auto-p-20310106T100000Z"
	ms := waitMachineSnapshot(t, r.c, "vm", name)
	if ms.Kind != api.SnapshotAuto || ms.Policy != "p" || ms.RetentionDays != 1 || ms.Consistency != api.ConsistencyCrash || len(ms.Members) != 2 {
		t.Fatalf("machine snapshot %+v", ms)
	}
	for _, disk := range []string{"root", "data"} {
		if s, err := r.c.Snapshot(ctx, disk, name); err != nil || s.Kind != api.SnapshotAuto {
			t.Fatalf("member %s@%s: %+v %v", disk, name, s, err)
		}
	}
	waitEvent(t, r, api.EventTaken, name)
	if tg := r.target("p"); tg.Kind != api.TargetMachine || tg.LastResult != "taken" {
		t.Fatalf("target %+v", tg)
	}
	r.advanceTo("2031-01-07T09:00:00Z")
	r.wantSnapshots("root", name)
	r.advanceTo("2031-01-07T09:59:00Z")
	if _, err := r.c.UpdatePolicy(ctx, "p", api.UpdatePolicyRequest{RetentionDays: intp(3)}); err != nil {
		t.Fatal(err)
	}
	if ms, _ := r.c.MachineSnapshot(ctx, "vm", name); ms.RetentionDays != 3 {
		t.Fatalf("machine snapshot retention %d after the policy's changed to 3", ms.RetentionDays)
	}
	if _, err := r.c.RemovePolicy(ctx, "p", api.PolicyTargetsRequest{Machines: []string{"vm"}}); err != nil {
		t.Fatal(err)
	}
	r.advanceTo("2031-01-09T10:00:00Z")
	r.wantSnapshots("root")
	r.wantSnapshots("data")

	// A policy that requires filesystem consistency of a machine without
	// a guest agent: its snapshots fail, each point with an event, and the
	// next point is tried again.
	createDisk(t, r.in, "other", "1M")
	if _, err := r.c.CreateMachine(ctx, api.CreateMachineRequest{Name: "noagent", Disks: []string{"other"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "fs", EveryMinutes: 60, TimeZone: "UTC", Consistency: api.ConsistencyFilesystem}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.ApplyPolicy(ctx, "fs", api.PolicyTargetsRequest{Machines: []string{"noagent"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.CreateMachineSnapshot(ctx, "noagent", api.CreateMachineSnapshotRequest{Name: "auto-mine"}); err == nil {
		t.Fatal("a manual machine snapshot named auto-mine was accepted")
	}
	for _, point := range []string{"2031-01-09T11:00:00Z", "2031-01-09T12:00:00Z"} {
		r.advanceTo(point)
		waitEvent(t, r, api.EventFailed, "auto-fs-"+at(point).Format("20060102T150405Z"))
	}
	if tg := r.target("fs"); tg.LastResult != "failed" {
		t.Fatalf("target %+v", tg)
	}
	r.wantSnapshots("other")
	if e := r.wantEvent(api.EventExpired, name, "machine snapshot vm@"+name); e.Machine != "vm" {
		t.Fatalf("event %+v", e)
	}
}

func waitMachineSnapshot(t *testing.T, c *api.Client, machine, name string) api.MachineSnapshot {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := c.MachineSnapshot(context.Background(), machine, name)
		if err == nil && ms.State == api.SnapshotReady {
			return ms
		}
		var ae *api.Error
		if err != nil && !(errors.As(err, &ae) && ae.Code == api.CodeNotFound) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("machine snapshot %s@%s not ready", machine, name)
	return api.MachineSnapshot{}
}

// waitEvent waits for an event the daemon writes in a task (a machine
// snapshot's).
func waitEvent(t *testing.T, r *policyRig, kind, snapshot string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range r.events(kind) {
			if e.Snapshot == snapshot {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s event about %s", kind, snapshot)
}

// TestPolicyRules: every rule of a policy's fields answers 400 naming the
// field; names, the quota, targets and the reserved auto prefix.
func TestPolicyRules(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", func(c *daemon.Config) { c.PolicyQuota = 2 })
	ctx := context.Background()
	createDisk(t, r.in, "d", "1M")
	for _, tc := range []struct {
		req   api.CreatePolicyRequest
		field string
	}{
		{api.CreatePolicyRequest{Name: "bad name", Times: []string{"10:00"}}, "name"},
		{api.CreatePolicyRequest{Name: "p"}, "times"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"25:00"}}, "times"},
		{api.CreatePolicyRequest{Name: "p", EveryMinutes: 1000}, "every_minutes"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, Weekdays: []string{"someday"}}, "weekdays"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, TimeZone: "Nowhere/Town"}, "time_zone"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, RetentionDays: intp(0)}, "retention_days"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, RetentionDays: intp(65537)}, "retention_days"},
		{api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}, Consistency: "perfect"}, "consistency"},
	} {
		_, err := r.c.CreatePolicy(ctx, tc.req)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 400 || ae.Field != tc.field {
			t.Errorf("create %+v: %v, want 400 about %s", tc.req, err, tc.field)
		}
	}
	p, err := r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.TimeZone == "" || p.RetentionDays != 30 || len(p.Weekdays) != 7 || p.Consistency != api.ConsistencyAuto {
		t.Fatalf("defaults: %+v", p)
	}
	for _, tc := range []struct {
		err  error
		code string
	}{
		{second(r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "p", Times: []string{"10:00"}})), api.CodeAlreadyExists},
		{second(r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "q", Times: []string{"10:00"}})), ""},
		{second(r.c.CreatePolicy(ctx, api.CreatePolicyRequest{Name: "r", Times: []string{"10:00"}})), api.CodeQuotaExceeded},
		{second(r.c.ApplyPolicy(ctx, "p", api.PolicyTargetsRequest{Disks: []string{"nope"}})), api.CodeNotFound},
		{second(r.c.ApplyPolicy(ctx, "nope", api.PolicyTargetsRequest{Disks: []string{"d"}})), api.CodeNotFound},
		{second(r.c.RemovePolicy(ctx, "p", api.PolicyTargetsRequest{Disks: []string{"d"}})), api.CodeNotFound},
		{second(r.c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "auto-mine"})), api.CodeInvalidArgument},
		{second(r.c.UpdatePolicy(ctx, "p", api.UpdatePolicyRequest{EveryMinutes: intp(0)})), api.CodeInvalidArgument},
	} {
		var ae *api.Error
		switch {
		case tc.code == "" && tc.err != nil:
			t.Errorf("unexpected error %v", tc.err)
		case tc.code != "" && (!errors.As(tc.err, &ae) || ae.Code != tc.code):
			t.Errorf("%v, want %s", tc.err, tc.code)
		}
	}
	// Applying another policy replaces the disk's.
	for _, name := range []string{"p", "q"} {
		if _, err := r.c.ApplyPolicy(ctx, name, api.PolicyTargetsRequest{Disks: []string{"d"}}); err != nil {
			t.Fatal(err)
		}
	}
	if p, _ := r.c.Policy(ctx, "p"); len(p.Targets) != 0 {
		t.Fatalf("policy p still has targets %+v after q was applied", p.Targets)
	}
	if q, _ := r.c.Policy(ctx, "q"); len(q.Targets) != 1 || q.Targets[0].Name != "d" {
		t.Fatalf("policy q targets %+v", q.Targets)
	}
	if disk, _ := r.c.Disk(ctx, "d"); disk.Policy != "q" {
		t.Fatalf("disk d shows policy %q, want q", disk.Policy)
	}
}

func second[T any](_ T, err error) error { return err }

// TestEventsListing: the events log pages with since, filters by kind,
// policy and disk, and its newest events come without a cursor.
func TestEventsListing(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", nil)
	ctx := context.Background()
	createDisk(t, r.in, "a", "1M")
	createDisk(t, r.in, "b", "1M")
	r.policy(api.CreatePolicyRequest{Name: "pa", EveryMinutes: 60, TimeZone: "UTC"}, "a")
	r.policy(api.CreatePolicyRequest{Name: "pb", EveryMinutes: 60, TimeZone: "UTC"}, "b")
	for h := 10; h <= 12; h++ {
		r.advanceTo(fmt.Sprintf("2031-01-06T%02d:00:00Z", h))
		r.snapshots("a")
		r.snapshots("b")
	}
	all := r.events("")
	if len(all) != 6 {
		t.Fatalf("%d events, want 6: %+v", len(all), all)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID {
			t.Fatalf("events out of order: %+v", all)
		}
	}
	after, err := r.c.Events(ctx, api.EventFilter{Since: all[3].ID})
	if err != nil || len(after) != 2 || after[0].ID != all[4].ID {
		t.Fatalf("since %d: %+v %v", all[3].ID, after, err)
	}
	newest, _ := r.c.Events(ctx, api.EventFilter{Limit: 2})
	if len(newest) != 2 || newest[1].ID != all[5].ID || newest[0].ID != all[4].ID {
		t.Fatalf("newest two: %+v", newest)
	}
	onlyB, _ := r.c.Events(ctx, api.EventFilter{Disk: "b"})
	byPolicy, _ := r.c.Events(ctx, api.EventFilter{Policy: "pb", Kind: api.EventTaken})
	if len(onlyB) != 3 || len(byPolicy) != 3 || onlyB[0].Policy != "pb" {
		t.Fatalf("disk b: %+v; policy pb: %+v", onlyB, byPolicy)
	}
	var ae *api.Error
	if _, err := r.c.Events(ctx, api.EventFilter{Kind: "nonsense"}); !errors.As(err, &ae) || ae.Field != "kind" {
		t.Fatalf("a bad kind: %v", err)
	}
}

// TestEventsPruned: events older than event_history go.
func TestEventsPruned(t *testing.T) {
	r := newPolicyRig(t, "2031-01-06T09:59:00Z", func(c *daemon.Config) { c.EventHistory = daemon.Duration(2 * time.Hour) })
	createDisk(t, r.in, "d", "1M")
	r.policy(api.CreatePolicyRequest{Name: "h", EveryMinutes: 60, TimeZone: "UTC"}, "d")
	for _, when := range []string{"2031-01-06T10:00:00Z", "2031-01-06T11:00:00Z", "2031-01-06T12:00:00Z"} {
		r.advanceTo(when)
		r.snapshots("d")
	}
	if n := len(r.events("")); n != 3 {
		t.Fatalf("%d events, want 3", n)
	}
	r.advanceTo("2031-01-06T13:30:00Z") // the 10:00 and 11:00 events are older than 2h
	ev := r.events("")
	if len(ev) != 2 || ev[0].Snapshot != "auto-h-20310106T120000Z" {
		t.Fatalf("after pruning: %+v", ev)
	}
}
