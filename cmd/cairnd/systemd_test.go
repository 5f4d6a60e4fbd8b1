package main

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/internal/testcerts"
)

// fakeSystemd binds the notification socket systemd would, sets
// NOTIFY_SOCKET and WATCHDOG_USEC (0: watchdog off), and returns it.
func fakeSystemd(t *testing.T, watchdog time.Duration) *net.UnixConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "cairn-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
	return conn
}

// awaitDatagram reads notifications until one equals want, skipping
// watchdog pets (which arrive at their own pace), and fails after 10s.
func awaitDatagram(t *testing.T, conn *net.UnixConn, want string) {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []string
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no %q among the notifications %q: %v", want, seen, err)
		}
		got := string(buf[:n])
		if got == want {
			return
		}
		if got != "WATCHDOG=1" {
			seen = append(seen, got)
		}
	}
}

// TestServiceLifecycle runs cairnd's service glue around a real daemon, as
// main does, with a fake systemd listening: READY with a status line, a
// watchdog pet after a health check that includes the NBD self-check,
// then STOPPING and a stop-timeout extension on shutdown.
func TestServiceLifecycle(t *testing.T) {
	conn := fakeSystemd(t, 200*time.Millisecond)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	svc, err := setupService(&cfg, cfg.Logger)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Notify == nil {
		t.Fatal("setupService did not route the daemon's notifications to systemd")
	}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopService := svc.start(d)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()

	awaitDatagram(t, conn, "READY=1\nSTATUS=serving 0 disks, 0 NBD clients")
	awaitDatagram(t, conn, "WATCHDOG=1")
	if _, err := d.CreateDisk(context.Background(), api.CreateDiskRequest{Name: "vm1", Size: "1M"}); err != nil {
		t.Fatal(err)
	}
	if got, want := svc.statusText(), "serving 1 disk, 0 NBD clients"; got != want {
		t.Errorf("status %q, want %q", got, want)
	}

	cancel()
	awaitDatagram(t, conn, "STOPPING=1\nSTATUS=stopping: draining NBD requests and flushing disks")
	awaitDatagram(t, conn, "EXTEND_TIMEOUT_USEC=15000000")
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	stopService()
}

// TestServiceWithoutSystemd: no NOTIFY_SOCKET, no sockets passed; cairnd
// binds its own and nothing is routed to systemd.
func TestServiceWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("LISTEN_FDS", "")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	svc, err := setupService(&cfg, cfg.Logger)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Notify != nil || cfg.APIListener != nil || cfg.NBDListener != nil {
		t.Fatalf("without systemd, setupService changed the config: notify %v, listeners %v %v", cfg.Notify != nil, cfg.APIListener, cfg.NBDListener)
	}
	in := daemontest.Start(t, &cfg)
	stop := svc.start(in.Daemon)
	if err := probeNBD(context.Background(), in.Info().NBDSocket); err != nil {
		t.Errorf("NBD self-check on cairnd's own socket: %v", err)
	}
	stop()
}

func TestProbeNBD(t *testing.T) {
	dir := daemontest.DataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// fake serves each connection with answer, or holds it silent.
	fake := func(name string, answer []byte) string {
		path := filepath.Join(dir, name)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				if answer != nil {
					c.Write(answer)
					c.Close()
					continue
				}
				go func() { // silent: reads until the prober gives up
					io.Copy(io.Discard, c)
					c.Close()
				}()
			}
		}()
		return path
	}
	cairnd := daemontest.Start(t, nil)
	tests := []struct {
		name    string
		path    string
		wantErr string // "" for success
	}{
		{"cairnd", cairnd.Info().NBDSocket, ""},
		{"not an NBD server", fake("http.sock", []byte("HTTP/1.1 400 Bad Request\r\n\r\n")), "is not NBD fixed newstyle"},
		{"closes at once", fake("close.sock", []byte{}), "no greeting"},
		{"never answers", fake("silent.sock", nil), "no greeting"},
		{"nothing listening", filepath.Join(dir, "none.sock"), "no such file"},
	}
	if nbdkit, err := exec.LookPath("nbdkit"); err == nil {
		// And one that requires TLS: the probe's NBD_OPT_ABORT is
		// answered before STARTTLS (FORCEDTLS allows it), as by a cairnd
		// whose listener requires TLS.
		ca := testcerts.NewCA(t, "probe CA")
		certs := testcerts.ServerDir(t, filepath.Join(dir, "tls"), ca, ca.Issue(t, "localhost", testcerts.Options{}))
		tests = append(tests, []struct {
			name    string
			path    string
			wantErr string
		}{
			{"nbdkit", startNbdkit(t, nbdkit, filepath.Join(dir, "plain")), ""},
			{"nbdkit requiring TLS", startNbdkit(t, nbdkit, filepath.Join(dir, "tls"), "--tls=require", "--tls-certificates="+certs), ""},
		}...)
	} else {
		t.Log("nbdkit not installed: probing cairnd only")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // a loaded machine is slow
			defer cancel()
			err := probeNBD(ctx, tt.path)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("probe of %s: %v", tt.name, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("probe of %s: error %v, want one containing %q", tt.name, err, tt.wantErr)
			}
		})
	}
}

// startNbdkit serves a memory disk on a Unix socket in dir. Without -f,
// nbdkit returns once the socket listens, then runs in the background.
func startNbdkit(t *testing.T, nbdkit, dir string, flags ...string) string {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	sock, pidFile := filepath.Join(dir, "nbdkit.sock"), filepath.Join(dir, "nbdkit.pid")
	args := append(append([]string{"-U", sock, "-P", pidFile}, flags...), "memory", "1M")
	if out, err := exec.Command(nbdkit, args...).CombinedOutput(); err != nil {
		t.Fatalf("nbdkit: %v: %s", err, out)
	}
	t.Cleanup(func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Errorf("nbdkit left no pid file; kill it by hand: %v", err)
			return
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	})
	return sock
}
