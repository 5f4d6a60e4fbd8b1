package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	// Should a case be accepted after all, the cairnd it starts stays in
	// the test's directory. Sockets go beside the data (the long data
	// directory's case needs that).
	t.Setenv("STATE_DIRECTORY", filepath.Join(dir, "state"))
	t.Setenv("RUNTIME_DIRECTORY", "")
	cfgFile := filepath.Join(dir, "cairnd.toml")
	if err := os.WriteFile(cfgFile, []byte("nbd_listen = \"0.0.0.0:10809\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badKey := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(badKey, []byte("data-dir = \"/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, exitOK, "Usage: cairnd"},
		{"help lists settings with their keys", []string{"-h"}, exitOK, "  --snapshot-quota N\n    \tmost snapshots one disk's chain may hold, 1 to 65536 (default 64; snapshot_quota in the config file)\n"},
		{"version", []string{"--version"}, exitOK, "cairnd " + daemon.Version},
		{"unknown flag", []string{"--listen", "x"}, exitUsage, "flag provided but not defined: -listen"},
		{"argument", []string{"--data-dir", dir, "extra"}, exitUsage, `unexpected argument "extra"`},
		{"non-loopback", []string{"--data-dir", dir, "--nbd-listen", "0.0.0.0:10809"}, exitUsage,
			`cairnd: --nbd-listen "0.0.0.0:10809": an address that is not loopback (127.0.0.1, [::1] or localhost) carries disk contents over the network: set --tls-cert and --tls-key`},
		{"from config file", []string{"--config", cfgFile, "--data-dir", dir}, exitUsage,
			`cairnd: config file ` + cfgFile + `: nbd_listen = "0.0.0.0:10809": an address that is not loopback`},
		{"default too long", []string{"--data-dir", "/tmp/" + strings.Repeat("d", 100)}, exitUsage,
			`(api_socket in the config file): a Unix socket path is limited to 107 bytes`},
		{"bad flag value", []string{"--data-dir", dir, "--snapshot-quota", "many"}, exitUsage, `invalid value "many" for flag -snapshot-quota: not a whole number`},
		{"removed flag", []string{"--data-dir", dir, "--redirect-on-write=false"}, exitUsage, "flag provided but not defined: -redirect-on-write"},
		{"flag overrides file", []string{"--config", cfgFile, "--data-dir", dir, "--nbd-listen", "127.0.0.1:1", "--log-level", "loud"}, exitUsage, "cairnd: --log-level \"loud\": must be debug, info, warn or error\n"},
		{"unknown key", []string{"--config", badKey}, exitUsage, "unknown key(s) data-dir"},
		{"missing config", []string{"--config", filepath.Join(dir, "none.toml")}, exitUsage, "none.toml"},
		{"log format", []string{"--data-dir", dir, "--log-format", "xml"}, exitUsage, `--log-format "xml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(tc.args, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("cairnd %s: exit %d, %q; want exit %d with %q", strings.Join(tc.args, " "), code, stderr.String(), tc.code, tc.want)
			}
		})
	}
}

// Flag over config file over default, for every kind of setting.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cairnd.toml")
	text := "data_dir = \"/srv/file\"\nsnapshot_quota = 10\nshutdown_timeout = \"7s\"\ncopy_out_share = 0.5\nfuse = false\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string // data_dir quota timeout share fuse log_level
	}{
		{"defaults", nil, "/var/lib/cairn 0 0s 0 true "},
		{"file", []string{"--config", file}, "/srv/file 10 7s 0.5 false "},
		{"flags over file", []string{"--config", file, "--data-dir", "/srv/flag", "--snapshot-quota", "20", "--shutdown-timeout", "9s",
			"--copy-out-share", "0.2", "--fuse", "--log-level", "debug"}, "/srv/flag 20 9s 0.2 true debug"},
		{"flags alone", []string{"--fuse=false", "-snapshot-quota=3"}, "/var/lib/cairn 3 0s 0 false "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("STATE_DIRECTORY", "")
			cfg, warnings, err := parseConfig(tc.args, io.Discard)
			if err != nil || len(warnings) != 0 {
				t.Fatalf("parseConfig: %v, warnings %q", err, warnings)
			}
			dataDir := cfg.DataDir
			if dataDir == "" {
				dataDir = daemon.DefaultDataDir()
			}
			got := fmt.Sprintf("%s %d %s %g %v %s", dataDir, cfg.SnapshotQuota, cfg.ShutdownTimeout, cfg.CopyOutShare, *cfg.FUSE, cfg.LogLevel)
			if got != tc.want {
				t.Errorf("cairnd %s: %q, want %q", strings.Join(tc.args, " "), got, tc.want)
			}
		})
	}
}

// A config file with the keys of removed settings: cairnd starts (here it
// gets as far as finding its data directory taken) and logs a warning
// naming each key.
func TestRemovedKeysWarn(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	daemontest.Start(t, &cfg)
	file := filepath.Join(t.TempDir(), "old.toml")
	if err := os.WriteFile(file, []byte("journal_max = \"1G\"\nredirect_on_write = false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	base := filepath.Dir(cfg.DataDir)
	code := run([]string{"--config", file, "--data-dir", cfg.DataDir, "--api-socket", filepath.Join(base, "a2.sock"), "--nbd-socket", filepath.Join(base, "n2.sock"), "--fuse=false"}, &stderr)
	if code != exitError || !strings.Contains(stderr.String(), "is in use by another cairnd") {
		t.Fatalf("exit %d, %q; want 1 with the data directory in use", code, stderr.String())
	}
	for _, key := range []string{"journal_max", "redirect_on_write"} {
		if !regexp.MustCompile(`level=WARN msg=".*` + key + ` was removed and is ignored: redirect-on-write is now the only write strategy`).MatchString(stderr.String()) {
			t.Errorf("no warning about %s in %q", key, stderr.String())
		}
	}
}

func TestSecondDaemonExits1(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	daemontest.Start(t, &cfg)
	var stderr bytes.Buffer
	base := filepath.Dir(cfg.DataDir)
	code := run([]string{"--data-dir", cfg.DataDir, "--api-socket", filepath.Join(base, "a2.sock"), "--nbd-socket", filepath.Join(base, "n2.sock")}, &stderr)
	want := fmt.Sprintf("cairnd: data directory %s is in use by another cairnd (pid %d)\n", cfg.DataDir, os.Getpid())
	if code != exitError || stderr.String() != want {
		t.Fatalf("exit %d, %q; want 1, %q", code, stderr.String(), want)
	}
}
