package main

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func TestSnapshotExitCodes(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.SnapshotQuota = 2
	in := daemontest.Start(t, &cfg)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d", "--size", "1M")
	ok(t, sock, "snapshot", "create", "d", "one")
	ok(t, sock, "snapshot", "create", "d", "two")
	ok(t, sock, "disk", "create", "e", "--size", "1M")
	ok(t, sock, "snapshot", "create", "e", "one")
	checkExitCodes(t, sock, []exitCase{
		{"group alone", []string{"snapshot"}, exitOK, "^$"},
		{"unknown subcommand", []string{"snapshot", "frob"}, exitUsage, `unknown command "frob" for "cairn snapshot"`},
		{"create without name", []string{"snapshot", "create", "d"}, exitUsage, `accepts 2 arg\(s\), received 1`},
		{"show without name", []string{"snapshot", "show", "d"}, exitUsage, `accepts 2 arg`},
		{"delete extra", []string{"snapshot", "delete", "d", "one", "two"}, exitUsage, `accepts 2 arg`},
		{"diff without from", []string{"snapshot", "diff", "d"}, exitUsage, `accepts between 2 and 3 arg`},
		{"capacity of two", []string{"snapshot", "capacity", "d", "e"}, exitUsage, `accepts at most 1 arg`},
		{"list without disk", []string{"snapshot", "list"}, exitUsage, `^cairn: accepts 1 arg\(s\), received 0\nusage: cairn snapshot list DISK\n$`},
		{"unknown flag", []string{"snapshot", "rollback", "d", "one", "--hard"}, exitUsage, `unknown flag: --hard`},
		{"verify of two", []string{"verify", "d", "e"}, exitUsage, `accepts at most 1 arg`},
		{"store alone extra", []string{"store", "frob"}, exitUsage, `unknown command "frob" for "cairn store"`},
		{"task show without id", []string{"task", "show"}, exitUsage, `accepts 1 arg`},
		{"task wait extra", []string{"task", "wait", "a", "b"}, exitUsage, `accepts 1 arg`},

		{"reserved name", []string{"snapshot", "create", "d", "Auto-daily"}, exitError,
			`^cairn: NAME "Auto-daily": a snapshot name is 2 to 128 characters .*not starting with 'auto' \(reserved for automatic snapshots\)`},
		{"short name", []string{"snapshot", "create", "d", "x"}, exitError, `^cairn: NAME "x": a snapshot name is 2 to 128 characters`},
		{"url name", []string{"snapshot", "create", "d", "http://x"}, exitError, `^cairn: NAME "http://x": a snapshot name is`},
		{"bad disk name", []string{"snapshot", "create", "a!b", "s1"}, exitError, `^cairn: DISK "a!b": a name is`},
		{"duplicate", []string{"snapshot", "create", "e", "one"}, exitError, `^cairn: .*already exists`},
		{"quota", []string{"snapshot", "create", "d", "three"}, exitError, `^cairn: disk "d" already has 2 snapshots, its quota \(snapshot_quota = 2\): delete snapshots`},
		{"no disk", []string{"snapshot", "list", "nope"}, exitError, `^cairn: disk "nope" not found\n$`},
		{"no snapshot", []string{"snapshot", "show", "d", "nope"}, exitError, `^cairn: .*not found.*\n$`},
		{"delete missing", []string{"snapshot", "delete", "d", "nope"}, exitError, `not found`},
		{"rollback missing", []string{"snapshot", "rollback", "d", "nope"}, exitError, `not found`},
		{"diff missing", []string{"snapshot", "diff", "d", "nope"}, exitError, `not found`},
		{"capacity missing", []string{"snapshot", "capacity", "nope"}, exitError, `^cairn: disk "nope" not found\n$`},
		{"verify missing disk", []string{"verify", "nope"}, exitError, `^cairn: disk "nope" not found\n$`},
		{"task missing", []string{"task", "show", "rollback-99"}, exitError, `^cairn: task "rollback-99" not found`},
		{"task wait missing", []string{"task", "wait", "verify-99"}, exitError, `^cairn: task "verify-99" not found`},
	})
}

// TestVerifyFindsFaults corrupts a stored chunk while cairnd is stopped:
// verify must print the fault and exit 1, as must task wait on it.
func TestVerifyFindsFaults(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d", "--size", "1M")
	nbdWrite(t, in, "d", "write -P 0x5a 0 64k")
	ok(t, sock, "snapshot", "create", "d", "s1", "--wait")
	if out := ok(t, sock, "verify", "d"); !strings.HasSuffix(out, ": no faults\n") {
		t.Fatalf("verify before corrupting: %q", out)
	}
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	corruptAChunk(t, filepath.Join(in.Config.DataDir, "store"))
	in = daemontest.Start(t, &in.Config)

	for _, args := range [][]string{{"verify"}, {"verify", "d"}} {
		out, errs, code := cli(t, sock, args...)
		if code != exitError || !regexp.MustCompile(`^checked 1 chunks and 1 entries: 1 fault\(s\):\n  .+\n$`).MatchString(out) ||
			!regexp.MustCompile(`^verify( d)?: 0%\n(.*\n)*verify( d)?: 100%.*\ncairn: verify found 1 fault\(s\)\n$`).MatchString(errs) {
			t.Errorf("cairn %s on a corrupt store: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
		}
	}
	// The verify before the restart is kept too (tasks outlive restarts).
	tasks := decode[[]struct{ ID string }](t, ok(t, sock, "task", "list", "--kind", "verify", "-o", "json"))
	if len(tasks) != 3 {
		t.Fatalf("tasks: %+v", tasks)
	}
	out, _, code := cli(t, sock, "task", "wait", tasks[0].ID)
	if code != exitError || !strings.Contains(out, "1 fault(s):") {
		t.Errorf("task wait on a verify that found faults: exit %d, %q", code, out)
	}
}

// corruptAChunk flips a byte of the first chunk in the store at dir.
func corruptAChunk(t *testing.T, dir string) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		it.Seek([]byte{'c'}) // c<hash>: chunks (store/keys.go)
		if !it.ValidForPrefix([]byte{'c'}) {
			t.Fatal("the store holds no chunk")
		}
		key := it.Item().KeyCopy(nil)
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		v[len(v)-1] ^= 0x40
		return txn.Set(key, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCreateWaitWhenStoreFull: with the store's filesystem (a small tmpfs
// of its own) left with just the free space snapshots need, a snapshot is
// taken but cannot store its block: create --wait exits 1 with the
// reason, and list shows it failed.
func TestCreateWaitWhenStoreFull(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.SmallFS(t, "320m"))
	cfg.StoreReserve = "96M"
	in := daemontest.Start(t, &cfg)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d", "--size", "1M")
	random := filepath.Join(t.TempDir(), "random")
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	if err := os.WriteFile(random, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	nbdWrite(t, in, "d", "write -s "+random+" 0 1M")
	// 16 KiB more than snapshots need: the snapshot is taken, its 1 MiB
	// of chunks cannot be stored.
	daemontest.Fill(t, cfg.DataDir, 96<<20+16<<10)
	out, errs, code := cli(t, sock, "snapshot", "create", "d", "s1", "--wait")
	if code != exitError || out != "" || !regexp.MustCompile(`\ncairn: snapshot d@s1 failed: the snapshot store is full: .*free space`).MatchString(errs) {
		t.Fatalf("create --wait with a full store: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if rows := cells(ok(t, sock, "snapshot", "list", "d")); len(rows) != 2 || rows[1][3] != "failed" || rows[1][4] != "-" {
		t.Errorf("list after the failure: %q", rows)
	}
	if out := ok(t, sock, "snapshot", "show", "d", "s1"); !strings.Contains(out, "Reason:") || !strings.Contains(out, "store is full") {
		t.Errorf("show of a failed snapshot:\n%s", out)
	}
	// info warns, on stderr, and says what to do.
	out, errs, code = cli(t, sock, "info")
	if code != exitOK || !strings.Contains(out, "Store space:     low: ") ||
		!regexp.MustCompile(`^cairn: warning: the store's filesystem \(.*\) has 96 MiB free: snapshots stop below 96 MiB; delete the failed snapshots d@s1 .*keep the store on a filesystem of its own\n$`).MatchString(errs) {
		t.Errorf("info with the store low: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}
