package nbdtest

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/nbd"
)

// Serve runs an nbd.Server for exp on a unix socket in t's temporary
// directory and returns the socket's path. The server is shut down (and
// Serve's result checked) when the test ends. opts.Exporter is set to exp;
// a nil opts.Logger logs to t.Log.
func Serve(t testing.TB, exp nbd.Exporter, opts nbd.Options) (sock string, srv *nbd.Server) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = Logger(t)
	}
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen on %s: %v", sock, err)
	}
	opts.Exporter = exp
	srv = nbd.NewServer(opts)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("nbd server shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("nbd server Serve: %v", err)
		}
	})
	return sock, srv
}

// URI is the NBD URI of export name on a unix socket, as qemu, libnbd and
// fio accept it.
func URI(sock, name string) string {
	return "nbd+unix:///" + url.PathEscape(name) + "?socket=" + url.QueryEscape(sock)
}

// Logger returns a logger that writes to t.Log until the test's cleanups
// have run (later lines, from goroutines a forced shutdown left behind,
// are dropped instead of failing the test binary).
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool // guarded by mu
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
