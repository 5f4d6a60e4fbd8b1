package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// cli runs one cairn command line in-process against socket.
func cli(t *testing.T, socket string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "CAIRN_SOCKET" {
			return socket
		}
		return ""
	}
	code = execute(context.Background(), args, &out, &errb, env)
	return out.String(), errb.String(), code
}

// ok runs a command that must succeed and returns its output.
func ok(t *testing.T, socket string, args ...string) string {
	t.Helper()
	out, errs, code := cli(t, socket, args...)
	if code != exitOK {
		t.Fatalf("cairn %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// cells splits a human table into rows of whitespace-separated cells.
func cells(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func TestDiskCommands(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket

	out := ok(t, sock, "disk", "create", "vm1", "--size", "10G", "--description", "first vm")
	for _, want := range []string{"Name:", "vm1", "10 GiB (10737418240 bytes)", "64 KiB", "first vm", "ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	ok(t, sock, "disk", "create", "db", "--size", "512M", "--block-size", "256K")

	rows := cells(ok(t, sock, "disk", "list"))
	want := [][]string{
		{"NAME", "SIZE", "BLOCK", "CLIENTS", "STATE", "DESCRIPTION"},
		{"db", "512", "MiB", "256", "KiB", "0", "ready"},
		{"vm1", "10", "GiB", "64", "KiB", "0", "ready", "first", "vm"},
	}
	if !equalRows(rows, want) {
		t.Errorf("disk list:\n%q\nwant\n%q", rows, want)
	}
	// Columns line up: every row starts its SIZE cell at the same offset.
	lines := strings.Split(ok(t, sock, "disk", "ls"), "\n")
	if col := strings.Index(lines[0], "SIZE"); strings.Index(lines[1], "512") != col || strings.Index(lines[2], "10 GiB") != col {
		t.Errorf("columns do not line up:\n%s", strings.Join(lines, "\n"))
	}

	var disks []api.Disk
	if err := json.Unmarshal([]byte(ok(t, sock, "disk", "list", "-o", "json")), &disks); err != nil || len(disks) != 2 || disks[1].Size != 10<<30 {
		t.Fatalf("disk list -o json: %+v, %v", disks, err)
	}

	out = ok(t, sock, "disk", "grow", "vm1", "20G")
	if !strings.Contains(out, "20 GiB") {
		t.Errorf("grow output:\n%s", out)
	}
	var d api.Disk
	if err := json.Unmarshal([]byte(ok(t, sock, "-o", "json", "disk", "show", "vm1")), &d); err != nil || d.Size != 20<<30 || d.Description != "first vm" {
		t.Fatalf("disk show -o json: %+v, %v", d, err)
	}

	out = ok(t, sock, "disk", "delete", "db")
	if out != "deleted disk db\n" {
		t.Errorf("delete output %q", out)
	}
	_, errs, code := cli(t, sock, "disk", "show", "db")
	if code != exitError || errs != "cairn: disk \"db\" not found\n" {
		t.Errorf("show a deleted disk: exit %d, %q", code, errs)
	}
}

func equalRows(a, b [][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if strings.Join(a[i], " ") != strings.Join(b[i], " ") {
			return false
		}
	}
	return true
}

func TestExitCodes(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "taken", "--size", "1M")
	checkExitCodes(t, sock, []exitCase{
		{"no command", []string{}, exitOK, "^$"},
		{"help", []string{"disk", "--help"}, exitOK, "^$"},
		{"group alone", []string{"disk"}, exitOK, "^$"},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"unknown subcommand", []string{"disk", "frobnicate"}, exitUsage, `unknown command "frobnicate" for "cairn disk"`},
		{"unknown flag", []string{"disk", "list", "--colour"}, exitUsage, `unknown flag: --colour`},
		{"missing arg", []string{"disk", "show"}, exitUsage, `^cairn: accepts 1 arg\(s\), received 0\nusage: cairn disk show NAME\n$`},
		{"usage of a group", []string{"disk", "frob"}, exitUsage, `\nusage: cairn disk COMMAND \(cairn disk --help lists them\)\n$`},
		{"usage of a flag error", []string{"disk", "create", "x", "--sise", "1M"}, exitUsage, `^cairn: unknown flag: --sise\nusage: cairn disk create NAME --size SIZE \| --adopt PATH \| --from DISK@SNAPSHOT\n$`},
		{"extra arg", []string{"disk", "list", "x"}, exitUsage, `unknown command "x"`},
		{"no size", []string{"disk", "create", "x"}, exitUsage, `needs --size`},
		{"bad size", []string{"disk", "create", "x", "--size", "10X"}, exitUsage, `invalid --size: invalid size "10X"`},
		{"bad block size", []string{"disk", "create", "x", "--size", "1G", "--block-size", "big"}, exitUsage, `invalid --block-size`},
		{"size and adopt", []string{"disk", "create", "x", "--size", "1G", "--adopt", "/x"}, exitUsage, `exclude each other`},
		{"bad grow size", []string{"disk", "grow", "taken", "lots"}, exitUsage, `invalid SIZE`},
		{"bad output", []string{"-o", "yaml", "info"}, exitUsage, `invalid -o "yaml": use table or json`},
		{"bad name", []string{"disk", "create", "-x", "--size", "1M"}, exitUsage, `unknown shorthand flag: 'x'`},
		{"bad name after --", []string{"disk", "create", "--size", "1M", "--", "-x"}, exitError, `^cairn: NAME "-x": a name is 1 to 64 characters`},
		{"duplicate", []string{"disk", "create", "taken", "--size", "1M"}, exitError, `^cairn: disk "taken" already exists\n$`},
		{"server-side size rule", []string{"disk", "create", "odd", "--size", "1000"}, exitError, `^cairn: --size: 1000 bytes is not a multiple of 4 KiB`},
		{"server-side block size rule", []string{"disk", "create", "odd", "--size", "1M", "--block-size", "3K"}, exitError, `^cairn: --block-size: 3072 bytes: must be a power of two`},
		{"grow size rule", []string{"disk", "grow", "taken", "1000"}, exitError, `^cairn: SIZE: 1000 B is smaller than`},
		{"bad disk name in a path", []string{"disk", "show", "a!b"}, exitError, `^cairn: NAME "a!b": a name is`},
		{"shrink", []string{"disk", "grow", "taken", "4K"}, exitError, `only grow`},
		{"delete missing", []string{"disk", "delete", "nope"}, exitError, `^cairn: disk "nope" not found\n$`},
	})
}

// exitCase is one command line, the exit code it must give and what its
// stderr must match.
type exitCase struct {
	name   string
	args   []string
	code   int
	stderr string // regexp
}

func checkExitCodes(t *testing.T, sock string, cases []exitCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, errs, code := cli(t, sock, tc.args...)
			if code != tc.code || !regexp.MustCompile(tc.stderr).MatchString(errs) {
				t.Fatalf("cairn %s: exit %d, stderr %q; want exit %d, stderr matching %q", strings.Join(tc.args, " "), code, errs, tc.code, tc.stderr)
			}
		})
	}
}

func TestAdoptRelativePath(t *testing.T) {
	dir := t.TempDir()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{dir}
	in := daemontest.Start(t, &cfg)
	t.Chdir(dir)
	if err := os.WriteFile("old.raw", make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var d api.Disk
	if err := json.Unmarshal([]byte(ok(t, in.Client.Socket, "disk", "create", "old", "--adopt", "old.raw", "-o", "json")), &d); err != nil {
		t.Fatal(err)
	}
	if want, _ := filepath.Abs("old.raw"); d.Path != want || !d.Adopted || d.Size != 1<<20 {
		t.Fatalf("adopted %+v", d)
	}
	ok(t, in.Client.Socket, "disk", "delete", "old")
	if _, err := os.Stat("old.raw"); err != nil {
		t.Fatalf("delete removed the adopted file: %v", err)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cairn.sock")
	_, errs, code := cli(t, sock, "info")
	if code != exitError || !strings.HasPrefix(errs, "cairn: cannot reach cairnd at "+sock+": ") ||
		!strings.Contains(errs, "is it running? start it with `make run` or `systemctl start cairnd`") {
		t.Fatalf("exit %d, %q", code, errs)
	}
}

func TestSocketChoice(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	a := &app{getenv: func(string) string { return "" }}
	if got := a.socketPath(); got != systemSocket {
		t.Errorf("with nothing: %s", got)
	}
	if err := os.MkdirAll(".cairn", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(localSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := a.socketPath(); got != localSocket {
		t.Errorf("with ./.cairn/cairn.sock: %s", got)
	}
	a.getenv = func(k string) string { return map[string]string{"CAIRN_SOCKET": "/env.sock"}[k] }
	if got := a.socketPath(); got != "/env.sock" {
		t.Errorf("with CAIRN_SOCKET: %s", got)
	}
	a.socket = "/flag.sock"
	if got := a.socketPath(); got != "/flag.sock" {
		t.Errorf("with --socket: %s", got)
	}
}

func TestExportListAndInfo(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "a", "--size", "1M")
	rows := cells(ok(t, sock, "export", "list"))
	if len(rows) != 2 || strings.Join(rows[1], " ") != "a rw 1 MiB 0 -" {
		t.Fatalf("export list: %q", rows)
	}
	out := ok(t, sock, "info")
	for _, want := range []string{"Version:", "Data directory:  " + in.Config.DataDir, "API socket:", sock, "Disks:           1",
		"Store space:     ", "reserve 96 MiB of 96 MiB held, snapshots stop below 96 MiB free"} {
		if !strings.Contains(out, want) {
			t.Errorf("info lacks %q:\n%s", want, out)
		}
	}
	var info api.Info
	if err := json.Unmarshal([]byte(ok(t, sock, "info", "-o", "json")), &info); err != nil || info.Disks != 1 {
		t.Fatalf("info -o json: %+v, %v", info, err)
	}

	if err := exec.Command("/usr/bin/python3", "-c", "import nbd").Run(); err != nil {
		t.Skip("/usr/bin/python3 cannot import nbd: install python3-libnbd to test a connected client")
	}
	cmd := exec.Command("/usr/bin/python3", "-m", "nbd", "-u", "nbd+unix:///a?socket="+in.Info().NBDSocket,
		"-c", "import sys\nh.pread(512, 0)\nprint('connected', flush=True)\nsys.stdin.read()")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "connected\n" {
		t.Fatalf("nbd client: %q %v", line, err)
	}
	rows = cells(ok(t, sock, "export", "list"))
	if len(rows) != 2 || rows[1][4] != "1" {
		t.Fatalf("export list with a client: %q", rows)
	}
	// Refusals name the flags that lift them, never the API's fields.
	ok(t, sock, "snapshot", "create", "a", "s1", "--wait")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"disk", "delete", "a"}, `cairn: disk "a" has 1 snapshot(s), which would be deleted with it: delete them first (cairn snapshot list a), or delete with --with-snapshots to delete them too` + "\n"},
		{[]string{"disk", "delete", "a", "--with-snapshots"}, `cairn: disk "a" has 1 connected NBD client: disconnect or detach them, or delete with --force to disconnect NBD clients and detach kernel attachments` + "\n"},
		{[]string{"snapshot", "rollback", "a", "s1"}, `or roll back with --force to disconnect NBD clients and detach kernel attachments` + "\n"},
	} {
		_, errs, code := cli(t, sock, c.args...)
		if code != exitError || !strings.HasSuffix(errs, c.want) || strings.Contains(errs, "=true") || strings.Contains(errs, "with_snapshots") {
			t.Errorf("cairn %s with a client: exit %d, %q; want exit 1 ending %q", strings.Join(c.args, " "), code, errs, c.want)
		}
	}
	ok(t, sock, "disk", "delete", "a", "--force", "--with-snapshots")
}

func TestCompletion(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "alpha", "--size", "1M")
	ok(t, sock, "disk", "create", "beta", "--size", "1M")
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := ok(t, sock, "completion", shell); !strings.Contains(out, "cairn") {
			t.Errorf("completion %s: %q", shell, out[:min(len(out), 200)])
		}
	}
	out := ok(t, sock, "__complete", "disk", "show", "")
	if !strings.Contains(out, "alpha\nbeta\n") {
		t.Errorf("disk name completion: %q", out)
	}
	ok(t, sock, "snapshot", "create", "alpha", "s1")
	ok(t, sock, "snapshot", "create", "alpha", "s2")
	// Every command that takes a disk or a snapshot completes them
	// (":4" is cobra's "no file completion", ":16" "directories only").
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"mount", "alpha@"}, "alpha@s1\nalpha@s2\n:4\n"},
		{[]string{"mount", "alpha@s1", ""}, ":16\n"},
		{[]string{"snapshot", "list", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"snap", "show", "alpha", ""}, "s1\ns2\n:4\n"},
		{[]string{"snapshot", "delete", "alpha", ""}, "s1\ns2\n:4\n"},
		{[]string{"snapshot", "rollback", "alpha", ""}, "s1\ns2\n:4\n"},
		{[]string{"snapshot", "diff", "alpha", "s1", ""}, "s1\ns2\n:4\n"},
		{[]string{"snapshot", "create", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"snapshot", "capacity", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"disk", "grow", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"disk", "delete", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"export", "list", ""}, "alpha\nbeta\n:4\n"},
		{[]string{"verify", ""}, "alpha\nbeta\n:4\n"},
	} {
		out := ok(t, sock, append([]string{"__complete"}, c.args...)...)
		if !strings.HasPrefix(out, c.want) {
			t.Errorf("cairn __complete %q: %q; want %q first", c.args, out, c.want)
		}
	}
}

func TestVersionAndExportFilter(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if out := ok(t, sock, args...); out != "cairn dev\ncairnd "+in.Info().Version+"\n" {
			t.Errorf("cairn %s: %q", args[0], out)
		}
	}
	out, _, code := cli(t, "/nonexistent.sock", "version")
	if code != exitOK || !strings.HasPrefix(out, "cairn dev\ncairnd: unknown (cannot reach cairnd") {
		t.Errorf("cairn version without cairnd: exit %d, %q", code, out)
	}
	ok(t, sock, "disk", "create", "a", "--size", "1M")
	ok(t, sock, "disk", "create", "b", "--size", "1M")
	ok(t, sock, "snapshot", "create", "a", "s1", "--wait")
	rows := cells(ok(t, sock, "export", "list", "a"))
	if len(rows) != 3 || rows[1][0] != "a" || rows[2][0] != "a@s1" {
		t.Errorf("export list a: %q", rows)
	}
	if rows := cells(ok(t, sock, "export", "list")); len(rows) != 4 {
		t.Errorf("export list: %q", rows)
	}
	if _, errs, code := cli(t, sock, "export", "list", "nope"); code != exitError || errs != "cairn: disk \"nope\" not found\n" {
		t.Errorf("export list nope: exit %d, %q", code, errs)
	}
}
