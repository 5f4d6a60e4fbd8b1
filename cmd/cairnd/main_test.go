package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
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
		{"version", []string{"--version"}, exitOK, "cairnd " + daemon.Version},
		{"unknown flag", []string{"--listen", "x"}, exitUsage, "flag provided but not defined: -listen"},
		{"argument", []string{"--data-dir", dir, "extra"}, exitUsage, `unexpected argument "extra"`},
		{"non-loopback", []string{"--data-dir", dir, "--nbd-listen", "0.0.0.0:10809"}, exitUsage,
			`cairnd: --nbd-listen "0.0.0.0:10809" (nbd_listen in the config file): NBD over TLS is not implemented yet, so only a loopback address`},
		{"from config file", []string{"--config", cfgFile, "--data-dir", dir}, exitUsage, "TLS is not implemented yet"},
		{"flag overrides file", []string{"--config", cfgFile, "--data-dir", dir, "--nbd-listen", "127.0.0.1:1", "--log-level", "loud"}, exitUsage, `--log-level "loud"`},
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
