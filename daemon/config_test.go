package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
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
		{"all interfaces", daemon.Config{DataDir: "/tmp/d", NBDListen: ":10809"}, "--nbd-listen \":10809\" (nbd_listen in the config file): an address that is not loopback"},
		{"any v4", daemon.Config{DataDir: "/tmp/d", NBDListen: "0.0.0.0:10809"}, "set --tls-cert and --tls-key"},
		{"private", daemon.Config{DataDir: "/tmp/d", NBDListen: "192.168.1.5:10809"}, "not loopback"},
		{"any v4 with TLS", daemon.Config{DataDir: "/tmp/d", NBDListen: "0.0.0.0:10809", TLSCert: "/c.pem", TLSKey: "/k.pem"}, ""},
		{"cert without key", daemon.Config{DataDir: "/tmp/d", TLSCert: "/c.pem"}, "--tls-cert \"/c.pem\" (tls_cert in the config file): tls_cert and tls_key go together"},
		{"client CA without cert", daemon.Config{DataDir: "/tmp/d", TLSClientCA: "/ca.pem"}, "--tls-client-ca"},
		{"tls_required without cert", daemon.Config{DataDir: "/tmp/d", TLSRequired: []string{"*"}}, "--tls-required [\"*\"]"},
		{"bad tls_required pattern", daemon.Config{DataDir: "/tmp/d", TLSCert: "/c", TLSKey: "/k", TLSRequired: []string{"[x"}}, "not a pattern"},
		{"bad role", daemon.Config{DataDir: "/tmp/d", NBDTCPRole: "boss"}, "--nbd-tcp-role"},
		{"bad principal", daemon.Config{DataDir: "/tmp/d", Admin: []string{"bob"}}, "--admin [\"bob\"] (admin in the config file)"},
		{"bad grant", daemon.Config{DataDir: "/tmp/d", Grant: []string{"uid:5 operator"}}, "--grant"},
		{"relative adopt_allow", daemon.Config{DataDir: "/tmp/d", AdoptAllow: []string{"images"}}, "--adopt-allow"},
		{"root adopt_allow", daemon.Config{DataDir: "/tmp/d", AdoptAllow: []string{"/"}}, "every file"},
		{"negative connections", daemon.Config{DataDir: "/tmp/d", NBDMaxConnections: -1}, "--nbd-max-connections"},
		{"hostname", daemon.Config{DataDir: "/tmp/d", NBDListen: "example.org:10809"}, "not loopback"},
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
		{"negative timeout", daemon.Config{DataDir: "/tmp/d", ShutdownTimeout: daemon.Duration(-time.Second)}, "--shutdown-timeout -1s (shutdown_timeout in the config file): must not be negative"},
		{"store reserve", daemon.Config{DataDir: "/tmp/d", StoreReserve: "1G"}, ""},
		{"store reserve unit", daemon.Config{DataDir: "/tmp/d", StoreReserve: "lots"}, `--store-reserve "lots" (store_reserve in the config file): `},
		{"copy-out share", daemon.Config{DataDir: "/tmp/d", CopyOutShare: 2}, "--copy-out-share 2 (copy_out_share in the config file): must be from 0.01 to 1"},
		{"copy-out share small", daemon.Config{DataDir: "/tmp/d", CopyOutShare: 0.001}, "must be at least 0.01"},
		{"snapshot quota", daemon.Config{DataDir: "/tmp/d", SnapshotQuota: 70000}, "--snapshot-quota 70000 (snapshot_quota in the config file): must be from 1 to 65536"},
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
snapshot_quota = 10
store_reserve = "1G"
copy_out_share = 0.5
fuse = false
fuse_dir = "/run/c/fuse"
freeze_timeout = "3s"
task_history = "48h"
agent_socket_dirs = "/run/c/agents,/srv/agents"
image_quota = 5
nbd_max_connections = 100
nbd_idle_timeout = "1h"
tls_cert = "/etc/cairn/tls/server-cert.pem"
tls_key = "/etc/cairn/tls/server-key.pem"
tls_client_ca = "/etc/cairn/tls/ca-cert.pem"
tls_required = ["*"]
admin = ["uid:1000"]
operator = ["gid:0"]
reader = ["cert:backup"]
grant = ["uid:1001 operator a-*"]
nbd_tcp_role = "reader"
adopt_allow = ["/var/lib/libvirt/images"]
policy_quota = 7
policy_grace = "10m"
event_history = "240h"
capacity_interval = "30m"
capacity_history = "720h"
metrics_listen = "127.0.0.1:9470"
`)
	f, err := daemon.LoadConfigFile(good)
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.Config
	want := daemon.Config{DataDir: "/srv/cairn", APISocket: "/run/c/api.sock", NBDSocket: "/run/c/nbd.sock",
		NBDListen: "127.0.0.1:10809", LogLevel: "debug", LogFormat: "json", ShutdownTimeout: daemon.Duration(7 * time.Second),
		SnapshotQuota: 10, StoreReserve: "1G", CopyOutShare: 0.5, FUSEDir: "/run/c/fuse",
		FreezeTimeout: daemon.Duration(3 * time.Second), TaskHistory: daemon.Duration(48 * time.Hour), AgentSocketDirs: "/run/c/agents,/srv/agents", ImageQuota: 5,
		NBDMaxConnections: 100, NBDIdleTimeout: daemon.Duration(time.Hour),
		TLSCert: "/etc/cairn/tls/server-cert.pem", TLSKey: "/etc/cairn/tls/server-key.pem", TLSClientCA: "/etc/cairn/tls/ca-cert.pem",
		TLSRequired: []string{"*"}, Admin: []string{"uid:1000"}, Operator: []string{"gid:0"}, Reader: []string{"cert:backup"},
		Grant: []string{"uid:1001 operator a-*"}, NBDTCPRole: "reader", AdoptAllow: []string{"/var/lib/libvirt/images"},
		PolicyQuota: 7, PolicyGrace: daemon.Duration(10 * time.Minute), EventHistory: daemon.Duration(240 * time.Hour),
		CapacityInterval: daemon.Duration(30 * time.Minute), CapacityHistory: daemon.Duration(720 * time.Hour), MetricsListen: "127.0.0.1:9470"}
	if cfg.FUSE == nil || *cfg.FUSE {
		t.Fatalf("fuse = false loaded as %v", cfg.FUSE)
	}
	cfg.FUSE = nil
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("loaded %+v\nwant   %+v", cfg, want)
	}
	if len(f.Keys) != len(daemon.Settings) || !f.Set("fuse_dir") || f.Set("nbd-listen") || len(f.Warnings) != 0 {
		t.Fatalf("keys %q, warnings %q", f.Keys, f.Warnings)
	}
	for _, tc := range []struct{ name, text, err string }{
		{"unknown key", "data_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n", "unknown key(s) listen (see docs/config.md)"},
		{"unknown keys in order", "zz = 1\ndata_dir = \"/x\"\naa = 2\n", "unknown key(s) zz, aa"},
		{"unknown table", "[nbd]\nlisten = \"127.0.0.1:1\"\n", "unknown key(s) nbd "},
		{"removed key with an unknown one", "journal_max = \"1G\"\nlisten = 1\n", "unknown key(s) listen "},
		{"wrong type of a bool", "fuse = \"no\"\n", "fuse"},
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

// The keys of the settings removed with copy-before-write do not stop
// cairnd: each is ignored with a warning that names it.
func TestLoadConfigFileRemovedKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "old.toml")
	text := "data_dir = \"/srv/cairn\"\njournal_max = \"4G\"\nredirect_on_write = false\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := daemon.LoadConfigFile(p)
	if err != nil {
		t.Fatalf("a config file with removed keys: %v", err)
	}
	if f.Config.DataDir != "/srv/cairn" || len(f.Keys) != 1 || len(f.Warnings) != 2 {
		t.Fatalf("loaded %+v", f)
	}
	for i, key := range []string{"journal_max", "redirect_on_write"} {
		if w := f.Warnings[i]; !strings.Contains(w, p+": "+key+" was removed and is ignored: ") || !strings.Contains(w, "redirect-on-write is now the only write strategy") {
			t.Errorf("warning %q", w)
		}
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
