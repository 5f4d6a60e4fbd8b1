package systemd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// notifySocket stands in for systemd's notification socket: it binds a
// unixgram socket at addr, points NOTIFY_SOCKET at it, and returns it so the
// test can read the datagrams cairnd would send to systemd.
func notifySocket(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatalf("bind notify socket %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	return conn
}

// nextDatagram returns the next datagram, failing the test if none arrives.
func nextDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification arrived: %v", err)
	}
	return string(buf[:n])
}

// noDatagram fails the test if a datagram is queued. Sends on a unix
// socket are queued before the sender's write returns, so callers first
// make sure the sender has finished.
func noDatagram(t *testing.T, conn *net.UnixConn) {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now())
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("unexpected notification %q", buf[:n])
	}
}

func TestNotifierSends(t *testing.T) {
	tests := []struct {
		name string
		send func(n *Notifier) error
		want string
	}{
		{"ready", func(n *Notifier) error { return n.Ready("") }, "READY=1"},
		{"ready with status", func(n *Notifier) error { return n.Ready("serving 0 disks") }, "READY=1\nSTATUS=serving 0 disks"},
		{"status", func(n *Notifier) error { return n.Status("serving 3 disks, 2 snapshots copying") }, "STATUS=serving 3 disks, 2 snapshots copying"},
		{"status cannot inject assignments", func(n *Notifier) error { return n.Status("disk x\nREADY=1") }, "STATUS=disk x READY=1"},
		{"stopping", func(n *Notifier) error { return n.Stopping() }, "STOPPING=1"},
		{"extend timeout", func(n *Notifier) error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
		{"watchdog", func(n *Notifier) error { return n.Watchdog() }, "WATCHDOG=1"},
	}
	addrs := map[string]string{
		"path":     filepath.Join(t.TempDir(), "notify"),
		"abstract": "@cairn-notify-test-" + strconv.Itoa(os.Getpid()),
	}
	for kind, addr := range addrs {
		t.Run(kind, func(t *testing.T) {
			conn := notifySocket(t, addr)
			n, err := NewNotifier()
			if err != nil {
				t.Fatal(err)
			}
			if !n.Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			if v, ok := os.LookupEnv("NOTIFY_SOCKET"); ok {
				t.Errorf("NOTIFY_SOCKET=%q left in the environment for child processes", v)
			}
			for _, tt := range tests {
				if err := tt.send(n); err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				if got := nextDatagram(t, conn); got != tt.want {
					t.Errorf("%s: sent %q, want %q", tt.name, got, tt.want)
				}
			}
		})
	}
}

func TestNotifierWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	if n.Enabled() {
		t.Error("Enabled() = true without NOTIFY_SOCKET")
	}
	for name, send := range map[string]func() error{
		"ready": func() error { return n.Ready("x") }, "status": func() error { return n.Status("x") },
		"stopping": n.Stopping, "watchdog": n.Watchdog,
	} {
		if err := send(); err != nil {
			t.Errorf("%s without systemd: %v, want nil", name, err)
		}
	}
}

func TestNotifierGoneSocketIsAnError(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	conn := notifySocket(t, addr)
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	os.Remove(addr)
	if err := n.Ready(""); err == nil {
		t.Fatal("Ready succeeded with the notify socket gone")
	}
}

func TestWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name    string
		usec    string
		pid     string
		want    time.Duration
		wantErr bool
	}{
		{"off", "", "", 0, false},
		{"on", "30000000", "", 30 * time.Second, false},
		{"on for this pid", "2000000", pid, 2 * time.Second, false},
		{"meant for another process", "2000000", "1", 0, false},
		{"garbage", "soon", "", 0, true},
		{"negative", "-5", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			n, err := NewNotifier()
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewNotifier error = %v, want error: %v", err, tt.wantErr)
			}
			if got := n.WatchdogInterval(); got != tt.want {
				t.Errorf("WatchdogInterval() = %v, want %v", got, tt.want)
			}
			for _, v := range []string{"WATCHDOG_USEC", "WATCHDOG_PID"} {
				if _, ok := os.LookupEnv(v); ok {
					t.Errorf("%s left in the environment", v)
				}
			}
		})
	}
}

var errWedged = errors.New("store read timed out")
