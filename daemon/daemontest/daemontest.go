// Package daemontest starts an in-process cairnd for tests, on a temporary
// data directory, and gives a client for its API socket.
package daemontest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"golang.org/x/sys/unix"
)

// Instance is one running daemon.
type Instance struct {
	*daemon.Daemon
	Config daemon.Config
	Client *api.Client
	cancel context.CancelFunc
	done   chan error
}

// DataDir returns a new short temporary directory (Unix socket paths are
// limited to 107 bytes, and t.TempDir() paths carry the test's name),
// removed when the test ends.
func DataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cairn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "data")
}

// SmallFS returns a data directory on a tmpfs of the given size (mount's
// size=, such as "256m") of its own, unmounted when the test ends: a
// filesystem a test may fill without filling the host's. Needs root
// (skips otherwise).
func SmallFS(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := DataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// Fill allocates a file in dir so that its filesystem has exactly leave
// bytes free (rounded down to its block size), as a guest's image
// growing would, and returns the file's path.
func Fill(t testing.TB, dir string, leave uint64) string {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < leave {
		t.Fatalf("%s has %d bytes free, fewer than the %d to leave", dir, free, leave)
	}
	path := filepath.Join(dir, fmt.Sprintf("filler.%d", time.Now().UnixNano()))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := int64((free - leave) / uint64(st.Bsize) * uint64(st.Bsize)); n > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
	return path
}

// Config is a config for a daemon on dir with sockets inside it, logging
// to the test's log.
func Config(t testing.TB, dir string) daemon.Config {
	return daemon.Config{
		DataDir: dir,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		// The smallest store reserve: tests run many daemons at once, and
		// each allocates its reserve.
		StoreReserve: "96M",
	}
}

// Start runs a daemon with cfg (Config(t, DataDir(t)) when cfg is nil) and
// stops it when the test ends, failing the test if the shutdown fails.
func Start(t testing.TB, cfg *daemon.Config) *Instance {
	t.Helper()
	if cfg == nil {
		c := Config(t, DataDir(t))
		cfg = &c
	}
	d, err := daemon.New(*cfg)
	if err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &Instance{Daemon: d, Config: *cfg, cancel: cancel, done: make(chan error, 1)}
	in.Client = &api.Client{Socket: in.Info().APISocket}
	go func() { in.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		if err := in.Stop(); err != nil {
			t.Errorf("daemon shutdown: %v", err)
		}
	})
	return in
}

// Stop shuts the daemon down as SIGTERM would (Run's context ends) and
// returns what Run returned. Safe to call more than once.
func (in *Instance) Stop() error {
	in.cancel()
	err, ok := <-in.done
	if ok {
		close(in.done)
	}
	return err
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

var _ io.Writer = testWriter{}
