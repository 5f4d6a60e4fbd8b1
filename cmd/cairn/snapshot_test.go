package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// nbdWrite runs qemu-io commands against a disk's live NBD export.
func nbdWrite(t *testing.T, in *daemontest.Instance, disk string, cmds ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (apt-get install qemu-utils): it writes the disks these tests snapshot")
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, "nbd+unix:///"+disk+"?socket="+in.Info().NBDSocket)
	if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
}

// waitReady waits until a snapshot is ready, as create --wait does.
func waitReady(t *testing.T, sock, disk, name string) {
	t.Helper()
	a := &app{stdout: io.Discard, stderr: io.Discard, client: &api.Client{Socket: sock}}
	snap, err := a.client.Snapshot(context.Background(), disk, name)
	if err == nil {
		_, err = a.waitSnapshot(context.Background(), snap)
	}
	if err != nil {
		t.Fatalf("wait for %s@%s: %v", disk, name, err)
	}
}

// decode decodes a command's -o json output.
func decode[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, out)
	}
	return v
}

// lacks returns the wants that out does not contain.
func lacks(out string, wants ...string) []string {
	var missing []string
	for _, w := range wants {
		if !strings.Contains(out, w) {
			missing = append(missing, w)
		}
	}
	return missing
}

// TestSnapshotCommands walks a chain through every snapshot command:
//
//	s1: blocks 0 (0x11) and 1 (0x22)   written 128 KiB
//	s2: block 0 (0x33)                 written 64 KiB; overrides s1's block 0
//	s3: block 8 (0x44)                 written 64 KiB
//
// so s1 alone holds 0x11 (64 KiB unique), and deleting it frees that.
func TestSnapshotCommands(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d", "--size", "1M")

	nbdWrite(t, in, "d", "write -P 0x11 0 64k", "write -P 0x22 64k 64k")
	out := ok(t, sock, "snapshot", "create", "d", "s1", "--wait", "--description", "first one")
	if m := lacks(out, "Name:", "s1", "Disk:", "State:", "ready", "Sequence:", "first one", "Written:", "128 KiB", "Export:", "d@s1 (read-only)"); m != nil {
		t.Errorf("create --wait output lacks %q:\n%s", m, out)
	}
	nbdWrite(t, in, "d", "write -P 0x33 0 64k")
	s2 := decode[api.Snapshot](t, ok(t, sock, "snapshot", "create", "d", "s2", "-o", "json"))
	if s2.Name != "s2" || s2.Disk != "d" || s2.Export != "d@s2" || s2.Kind != api.SnapshotManual ||
		(s2.State != api.SnapshotCopying && s2.State != api.SnapshotReady) {
		t.Errorf("create -o json: %+v", s2)
	}
	nbdWrite(t, in, "d", "write -P 0x44 512k 64k")
	_, errs, code := cli(t, sock, "snapshot", "create", "d", "s3", "--wait")
	if code != exitOK || !strings.Contains(errs, "snapshot d@s3: 100% (64 KiB of 64 KiB)\n") {
		t.Errorf("create --wait: exit %d, progress on stderr %q", code, errs)
	}
	ok(t, sock, "task", "list") // nothing yet, but it answers

	waitReady(t, sock, "d", "s2")
	rows := cells(ok(t, sock, "snapshot", "list", "d"))
	header := "NAME CREATED STATE PROGRESS KIND EXPIRES WRITTEN UNIQUE HOLD"
	if len(rows) != 4 || strings.Join(rows[0], " ") != header {
		t.Fatalf("snapshot list:\n%q", rows)
	}
	// CREATED is two cells (date, time), sizes two each (number, unit);
	// s1 alone holds a chunk (0x11), whatever it compresses to.
	for i, want := range []string{"s1 ready 100% manual - 128 KiB", "s2 ready 100% manual - 64 KiB 0 B", "s3 ready 100% manual - 64 KiB 0 B"} {
		got := strings.Join(append([]string{rows[i+1][0]}, rows[i+1][3:]...), " ")
		if !strings.HasPrefix(got, want+" ") || !regexp.MustCompile(` [0-9.]+ [KMG]?i?B [0-9.]+(µs|ms|s)$`).MatchString(got) {
			t.Errorf("snapshot list row %d: %q, want %q, unique bytes and a hold", i+1, got, want)
		}
	}
	snaps := decode[[]api.Snapshot](t, ok(t, sock, "snapshot", "ls", "d", "-o", "json"))
	if len(snaps) != 3 || snaps[0].Name != "s1" || snaps[0].WrittenBytes != 128<<10 || snaps[0].UniqueBytes == 0 ||
		snaps[0].Description != "first one" || snaps[2].Seq <= snaps[1].Seq {
		t.Errorf("snapshot list -o json: %+v", snaps)
	}

	// diff: s1 → s3 changed blocks 0 and 8; s3 → live nothing.
	out = ok(t, sock, "snapshot", "diff", "d", "s1", "s3")
	if want := "OFFSET  LENGTH\n0       65536\n524288  65536\ntotal: 128 KiB (131072 bytes) in 2 extents changed from s1 to s3, of 1 MiB\n"; out != want {
		t.Errorf("snapshot diff:\n%s\nwant\n%s", out, want)
	}
	ch := decode[api.Changes](t, ok(t, sock, "snapshot", "diff", "d", "s2", "-o", "json"))
	if ch.From != "s2" || ch.To != "" || ch.BlockSize != 64<<10 || ch.ChangedBytes != 64<<10 ||
		len(ch.Extents) != 1 || ch.Extents[0] != (api.Extent{Offset: 512 << 10, Length: 64 << 10}) {
		t.Errorf("snapshot diff s2 (to live) -o json: %+v", ch)
	}

	out = ok(t, sock, "snapshot", "capacity", "d")
	if m := lacks(out, "Snapshots:", "3 of 64", "Stored:", "SNAPSHOT", "UNIQUE", "s1", "s3"); m != nil {
		t.Errorf("snapshot capacity d lacks %q:\n%s", m, out)
	}
	cc := decode[api.ChainCapacity](t, ok(t, sock, "snapshot", "capacity", "d", "-o", "json"))
	if cc.Snapshots != 3 || cc.Quota != 64 || len(cc.PerSnapshot) != 3 || cc.PerSnapshot[0] != (api.SnapshotCapacity{Name: "s1", State: api.SnapshotReady, WrittenBytes: 128 << 10, UniqueBytes: snaps[0].UniqueBytes, UniqueStoredBytes: snaps[0].UniqueStoredBytes}) {
		t.Errorf("snapshot capacity d -o json: %+v", cc)
	}
	out = ok(t, sock, "snapshot", "capacity")
	if m := lacks(out, "DISK", "SNAPSHOTS", "QUOTA", "Chunks:", "Logical:", "Stored:"); m != nil || cells(out)[1][0] != "d" {
		t.Errorf("snapshot capacity lacks %q:\n%s", m, out)
	}
	capy := decode[api.Capacity](t, ok(t, sock, "snapshot", "capacity", "-o", "json"))
	if len(capy.Chains) != 1 || capy.Store.Chunks < 4 {
		t.Errorf("snapshot capacity -o json: %+v", capy)
	}
	out = ok(t, sock, "store", "stats")
	if m := lacks(out, "Chunks:", "Logical:", "Unique:", "Stored:", "Reclaimable:", "On disk:", "Entries:"); m != nil {
		t.Errorf("store stats lacks %q:\n%s", m, out)
	}
	if st := decode[api.StoreStats](t, ok(t, sock, "store", "stats", "-o", "json")); st.LogicalBytes < 256<<10 {
		t.Errorf("store stats -o json: %+v", st)
	}

	out = ok(t, sock, "verify")
	if !regexp.MustCompile(`^checked [1-9][0-9]* chunks and [1-9][0-9]* entries: no faults\n$`).MatchString(out) {
		t.Errorf("verify: %q", out)
	}
	vt := decode[api.Task](t, ok(t, sock, "verify", "d", "-o", "json"))
	if vt.Kind != api.TaskVerify || vt.State != api.TaskSucceeded || vt.Disk != "d" {
		t.Errorf("verify d -o json: %+v", vt)
	}

	// rollback to s2 (--force: qemu-io's connection may not be gone yet).
	out, errs, code = cli(t, sock, "snapshot", "rollback", "d", "s2", "--force")
	if code != exitOK || out != "rolled back d to snapshot s2\n" || !strings.Contains(errs, "rollback d@s2: 100%") {
		t.Errorf("rollback: exit %d, %q, stderr %q", code, out, errs)
	}

	all := decode[[]api.Task](t, ok(t, sock, "task", "list", "-o", "json"))
	var tasks []api.Task
	for _, k := range all {
		if k.Kind != api.TaskCopyOut {
			tasks = append(tasks, k)
		}
	}
	if len(tasks) != 3 || len(all) != 6 {
		t.Fatalf("task list -o json: %+v", all)
	}
	if copies := decode[[]api.Task](t, ok(t, sock, "task", "list", "--kind", "copy-out", "--state", "succeeded", "-o", "json")); len(copies) != 3 {
		t.Fatalf("task list --kind copy-out --state succeeded: %+v", copies)
	}
	rows = cells(ok(t, sock, "task", "ls", "--kind", "verify"))
	if strings.Join(rows[0], " ") != "ID KIND DISK TARGET STATE PROGRESS CREATED" || len(rows) != 3 {
		t.Errorf("task list:\n%q", rows)
	}
	for _, k := range tasks {
		out := ok(t, sock, "task", "show", k.ID)
		if m := lacks(out, "ID:", k.ID, "Kind:", k.Kind, "State:", "succeeded", "Finished:"); m != nil {
			t.Errorf("task show %s lacks %q:\n%s", k.ID, m, out)
		}
		if k.Kind == api.TaskVerify && !strings.Contains(out, "no faults") {
			t.Errorf("task show of a verify lacks its result:\n%s", out)
		}
		ok(t, sock, "task", "wait", k.ID)
	}

	if out := ok(t, sock, "__complete", "snapshot", "show", "d", ""); !strings.HasPrefix(out, "s1\ns2\ns3\n") {
		t.Errorf("snapshot name completion: %q", out)
	}
	if out := ok(t, sock, "__complete", "snapshot", "diff", "d", "s1", ""); !strings.HasPrefix(out, "s1\ns2\ns3\n") {
		t.Errorf("diff TO completion: %q", out)
	}
	if out := ok(t, sock, "__complete", "snapshot", "show", "d", "s1", ""); strings.Contains(out, "s2") {
		t.Errorf("completion past the last argument: %q", out)
	}
	if out := ok(t, sock, "__complete", "task", "wait", ""); !strings.Contains(out, tasks[0].ID+"\t") {
		t.Errorf("task id completion: %q", out)
	}

	out = ok(t, sock, "snapshot", "delete", "d", "s1")
	if out != fmt.Sprintf("deleted snapshot d@s1, freed 64 KiB (65536 bytes; %s stored)\n", api.FormatSize(int64(snaps[0].UniqueStoredBytes))) {
		t.Errorf("snapshot delete: %q", out)
	}
	if res := decode[api.DeleteSnapshotResult](t, ok(t, sock, "snapshot", "rm", "d", "s3", "-o", "json")); res.FreedBytes != 64<<10 {
		t.Errorf("snapshot delete s3 -o json: %+v (s3 alone held 0x44)", res)
	}
	if rows := cells(ok(t, sock, "snapshot", "list", "d")); len(rows) != 2 || rows[1][0] != "s2" {
		t.Errorf("after deletes:\n%q", rows)
	}
	ok(t, sock, "verify", "d")
}

func TestFormatHold(t *testing.T) {
	for us, want := range map[float64]string{1.444: "1.4µs", 312.4: "312µs", 1500: "1.50ms", 2.5e6: "2.50s"} {
		if got := formatHold(us); got != want {
			t.Errorf("formatHold(%v) = %q, want %q", us, got, want)
		}
	}
	if !strings.Contains(ratio(300, 100), "3.00x") || ratio(1, 0) != "" {
		t.Errorf("ratio: %q %q", ratio(300, 100), ratio(1, 0))
	}
}
