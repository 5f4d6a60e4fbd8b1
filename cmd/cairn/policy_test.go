package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/internal/clock"
)

// TestPolicyCommands: cairn policy create, list, show, set, apply, remove
// and delete, cairn events and cairn snapshot capacity --history against
// a daemon on a fake clock (a point and a capacity sample come when the
// test moves it).
func TestPolicyCommands(t *testing.T) {
	start := time.Date(2031, 1, 6, 9, 59, 0, 0, time.UTC)
	fc := clock.NewFake(start)
	ran := make(chan [2]any, 1000)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.Clock = fc
	cfg.LoopDone = func(loop string, now time.Time) { ran <- [2]any{loop, now} }
	in := daemontest.Start(t, &cfg)
	sock := in.Client.Socket
	waitLoops := func(at time.Time) {
		t.Helper()
		done := map[string]bool{}
		timeout := time.After(30 * time.Second)
		for !done["policies"] || !done["capacity"] {
			select {
			case r := <-ran:
				if !r[1].(time.Time).Before(at) {
					done[r[0].(string)] = true
				}
			case <-timeout:
				t.Fatalf("the loops did not run at %v: %v", at, done)
			}
		}
	}
	waitLoops(start)
	ok(t, sock, "disk", "create", "vm1", "--size", "1M")

	out := ok(t, sock, "policy", "create", "nightly", "--times", "10:00,22:00", "--weekdays", "mon,tue", "--retention", "7", "--time-zone", "UTC")
	for _, want := range []string{"nightly", "at 10:00,22:00, mon,tue", "7 days", "UTC", "Applied to nothing (cairn policy apply nightly DISK...)"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	ok(t, sock, "policy", "create", "rpo", "--every", "15m", "--retention", "forever", "--time-zone", "Europe/Berlin")
	out = ok(t, sock, "policy", "apply", "nightly", "vm1")
	if !strings.Contains(out, "01-06 10:00, 01-06 22:00, 01-07 10:00, 01-07 22:00, 01-12 10:00") && !strings.Contains(out, "vm1") {
		t.Errorf("apply output:\n%s", out)
	}
	rows := cells(ok(t, sock, "policy", "list"))
	if len(rows) != 3 || strings.Join(rows[0], " ") != "NAME SCHEDULE RETENTION TIME ZONE TARGETS NEXT RUN" ||
		rows[1][0] != "nightly" || rows[2][0] != "rpo" || !strings.Contains(strings.Join(rows[2], " "), "every 15m, every day forever Europe/Berlin -") {
		t.Errorf("policy list:\n%q", rows)
	}

	fc.Advance(time.Minute) // 10:00: the point, and a new hour for the sampler
	waitLoops(start.Add(time.Minute))
	out = ok(t, sock, "policy", "show", "nightly")
	if !strings.Contains(out, "taken") || !strings.Contains(out, "vm1") {
		t.Errorf("show after the point:\n%s", out)
	}
	rows = cells(ok(t, sock, "events"))
	if len(rows) != 2 || rows[1][3] != "taken" || rows[1][4] != "nightly" || rows[1][5] != "vm1" {
		t.Errorf("events:\n%q", rows)
	}
	var events []api.Event
	if err := json.Unmarshal([]byte(ok(t, sock, "events", "--kind", "taken", "-o", "json")), &events); err != nil || len(events) != 1 ||
		events[0].Snapshot != "auto-nightly-20310106T100000Z" {
		t.Errorf("events -o json: %+v %v", events, err)
	}
	if rows := cells(ok(t, sock, "events", "--since", "1")); len(rows) != 1 {
		t.Errorf("events after the last: %q", rows)
	}
	rows = cells(ok(t, sock, "snapshot", "list", "vm1"))
	if len(rows) != 2 || rows[1][0] != "auto-nightly-20310106T100000Z" || rows[1][5] != "auto" || rows[1][6] != "2031-01-13" {
		t.Errorf("snapshot list:\n%q", rows)
	}

	out = ok(t, sock, "policy", "set", "nightly", "--retention", "3")
	if !strings.Contains(out, "3 days") {
		t.Errorf("set output:\n%s", out)
	}
	var snap api.Snapshot
	json.Unmarshal([]byte(ok(t, sock, "snapshot", "show", "vm1", "auto-nightly-20310106T100000Z", "-o", "json")), &snap)
	if snap.RetentionDays != 3 {
		t.Errorf("the snapshot's retention is %d after policy set --retention 3", snap.RetentionDays)
	}
	if _, errs, code := cli(t, sock, "policy", "set", "nightly"); code != exitUsage || !strings.Contains(errs, "nothing to change") {
		t.Errorf("set with no flag: exit %d %q", code, errs)
	}
	if _, errs, code := cli(t, sock, "policy", "create", "bad", "--times", "25:00"); code != exitError || !strings.Contains(errs, "--times") {
		t.Errorf("create --times 25:00: exit %d %q", code, errs)
	}
	if _, errs, code := cli(t, sock, "policy", "remove", "rpo", "vm1"); code != exitError || !strings.Contains(errs, `does not have policy "rpo"`) {
		t.Errorf("remove a policy the disk lacks: exit %d %q", code, errs)
	}
	ok(t, sock, "policy", "remove", "nightly", "vm1")
	ok(t, sock, "policy", "delete", "nightly")
	if rows := cells(ok(t, sock, "policy", "list")); len(rows) != 2 {
		t.Errorf("after delete: %q", rows)
	}

	// Samples of vm1 at 10:00 (taken as the policy ran) and 11:00; of
	// the store at the start too.
	fc.Advance(time.Hour)
	waitLoops(start.Add(time.Hour + time.Minute))
	out = ok(t, sock, "snapshot", "capacity", "vm1", "--history")
	if !strings.Contains(out, "Stored bytes of disk vm1's chain, 2 samples every 1h0m0s") || !strings.Contains(out, "┤") ||
		!strings.Contains(out, "TIME") {
		t.Errorf("capacity --history:\n%s", out)
	}
	var h api.CapacityHistory
	if err := json.Unmarshal([]byte(ok(t, sock, "snapshot", "capacity", "--history", "-o", "json")), &h); err != nil || h.Kind != "store" || len(h.Samples) != 3 ||
		h.Samples[2].Snapshots != 1 {
		t.Errorf("store history: %+v %v", h, err)
	}
}
