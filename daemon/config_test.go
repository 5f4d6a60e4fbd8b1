package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func TestConfigValidate(t *testing.T) {
	long := "/tmp/" + strings.Repeat("x", 120) + ".sock"
	for _, tc := range []struct {
		name string
		cfg  daemon.Config
		err  string // substring; "" means valid
	}{
		{"defaults", daemon.Config{DataDir: "/tmp/d"}, ""},
		{"loopback v4", daemon.Config{DataDir: "/tmp/d", NBDListen: "127.0.0.1:10809"}, ""},
		{"loopback v4 range", daemon.Config{DataDir: "/tmp/d", NBDListen: "127.1.2.3:10809"}, ""},
		{"loopback v6", daemon.Config{DataDir: "/tmp/d", NBDListen: "[::1]:10809"}, ""},
		{"localhost", daemon.Config{DataDir: "/tmp/d", NBDListen: "localhost:0"}, ""},
		{"all interfaces", daemon.Config{DataDir: "/tmp/d", NBDListen: ":10809"}, "--nbd-listen \":10809\" (nbd_listen in the config file): NBD over TLS is not implemented yet, so only a loopback address"},
		{"any v4", daemon.Config{DataDir: "/tmp/d", NBDListen: "0.0.0.0:10809"}, "TLS is not implemented yet"},
		{"private", daemon.Config{DataDir: "/tmp/d", NBDListen: "192.168.1.5:10809"}, "only a loopback address"},
		{"hostname", daemon.Config{DataDir: "/tmp/d", NBDListen: "example.org:10809"}, "only a loopback address"},
		{"no port", daemon.Config{DataDir: "/tmp/d", NBDListen: "127.0.0.1"}, "--nbd-listen \"127.0.0.1\" (nbd_listen in the config file): want host:port"},
		{"bad port", daemon.Config{DataDir: "/tmp/d", NBDListen: "127.0.0.1:http-ish"}, "bad port"},
		{"log level", daemon.Config{DataDir: "/tmp/d", LogLevel: "loud"}, "--log-level \"loud\""},
		{"log level ok", daemon.Config{DataDir: "/tmp/d", LogLevel: "DEBUG"}, ""},
		{"log format", daemon.Config{DataDir: "/tmp/d", LogFormat: "xml"}, "--log-format \"xml\""},
		{"log format json", daemon.Config{DataDir: "/tmp/d", LogFormat: "json"}, ""},
		{"long api socket", daemon.Config{DataDir: "/tmp/d", APISocket: long}, "--api-socket"},
		{"long nbd socket", daemon.Config{DataDir: "/tmp/d", NBDSocket: long}, "--nbd-socket"},
		{"long data dir", daemon.Config{DataDir: "/tmp/" + strings.Repeat("d", 100)}, "limited to 107 bytes"},
		{"same sockets", daemon.Config{DataDir: "/tmp/d", APISocket: "/tmp/s", NBDSocket: "/tmp/s"}, "must differ"},
		{"negative timeout", daemon.Config{DataDir: "/tmp/d", ShutdownTimeout: daemon.Duration(-time.Second)}, "--shutdown-timeout"},
		{"journal max", daemon.Config{DataDir: "/tmp/d", JournalMax: "4G"}, ""},
		{"journal max unit", daemon.Config{DataDir: "/tmp/d", JournalMax: "lots"}, "--journal-max / journal_max"},
		{"journal max small", daemon.Config{DataDir: "/tmp/d", JournalMax: "1M"}, "must be at least 16M"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func TestLoadConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", `
data_dir = "/srv/cairn"
api_socket = "/run/c/api.sock"
nbd_socket = "/run/c/nbd.sock"
nbd_listen = "127.0.0.1:10809"
log_level = "debug"
log_format = "json"
shutdown_timeout = "7s"
redirect_on_write = false
`)
	cfg, err := daemon.LoadConfigFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := daemon.Config{DataDir: "/srv/cairn", APISocket: "/run/c/api.sock", NBDSocket: "/run/c/nbd.sock",
		NBDListen: "127.0.0.1:10809", LogLevel: "debug", LogFormat: "json", ShutdownTimeout: daemon.Duration(7 * time.Second)}
	if cfg.DataDir != want.DataDir || cfg.APISocket != want.APISocket || cfg.NBDSocket != want.NBDSocket ||
		cfg.NBDListen != want.NBDListen || cfg.LogLevel != want.LogLevel || cfg.LogFormat != want.LogFormat || cfg.ShutdownTimeout != want.ShutdownTimeout {
		t.Fatalf("loaded %+v", cfg)
	}
	if cfg.RedirectOnWrite == nil || *cfg.RedirectOnWrite {
		t.Fatalf("redirect_on_write = false loaded as %v", cfg.RedirectOnWrite)
	}
	for _, tc := range []struct{ name, text, err string }{
		{"unknown key", "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n", "unknown key(s) listen"},
		{"bad duration", "shutdown_timeout = \"soon\"\n", "shutdown_timeout"},
		{"bad toml", "data_dir = \n", "bad.toml"},
		{"wrong type", "data_dir = 5\n", "data_dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := daemon.LoadConfigFile(write("bad.toml", tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
	if _, err := daemon.LoadConfigFile(filepath.Join(dir, "missing.toml")); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestSystemdDirectoryDefaults(t *testing.T) {
	state := daemontest.DataDir(t)
	run := filepath.Join(filepath.Dir(state), "run")
	t.Setenv("STATE_DIRECTORY", state)
	t.Setenv("RUNTIME_DIRECTORY", run)
	cfg := daemontest.Config(t, "")
	in := daemontest.Start(t, &cfg)
	info, err := in.Client.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.DataDir != state || info.APISocket != filepath.Join(run, "cairn.sock") || info.NBDSocket != filepath.Join(run, "nbd.sock") {
		t.Fatalf("info %+v", info)
	}
}
