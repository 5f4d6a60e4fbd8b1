package daemon_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// logBuffer keeps what a daemon logs (and passes it to the test's log).
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	out io.Writer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	return b.out.Write(p)
}

// lines returns the logged lines that contain every one of words.
func (b *logBuffer) lines(words ...string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range strings.Split(b.buf.String(), "\n") {
		ok := l != ""
		for _, w := range words {
			ok = ok && strings.Contains(l, w)
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

func (b *logBuffer) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

// tWriter writes to a test's log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestOrphanWarnings: a clean restart warns about none of the files
// cairnd writes beside live images (live images, change-tracking files,
// side files, a tracker being created, an old journal), whatever state the
// disk is in; a file no disk owns is reported, saying what it is.
func TestOrphanWarnings(t *testing.T) {
	need(t, "qemu-io")
	logs := &logBuffer{out: tWriter{t}}
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	a := createDisk(t, in, "a", "1M")
	b := createDisk(t, in, "b", "1M")
	qemuIO(t, nbdURI(in, "a"), "write -P 1 0 256k")
	for _, s := range []string{"s1", "s2"} {
		if _, err := in.Client.CreateSnapshot(ctx, "a", api.CreateSnapshotRequest{Name: s}); err != nil {
			t.Fatal(err)
		}
		waitSnapshot(t, in.Client, "a", s)
		qemuIO(t, nbdURI(in, "a"), "write -P 2 0 128k")
	}
	restart := func() {
		t.Helper()
		if err := in.Stop(); err != nil {
			t.Fatal(err)
		}
		logs.reset()
		in = daemontest.Start(t, &cfg)
	}
	restart()
	if w := logs.lines("level=WARN"); len(w) > 0 {
		t.Errorf("a clean restart warned:\n%s", strings.Join(w, "\n"))
	}

	// Disk b unavailable (its live image gone): its other files stay
	// unwarned. Files of a disk id no record names, and a stranger, are
	// reported with what they are.
	disks := filepath.Dir(a.Path)
	bid := strconv.FormatUint(b.ID, 10)
	if err := os.Remove(b.Path); err != nil {
		t.Fatal(err)
	}
	mine := []string{bid + ".track.7", bid + ".track.8.tmp", bid + ".track.row.7", bid + ".track.cbw"}
	orphans := map[string]string{
		"99.raw":          "live image of disk id 99",
		"99.track.3":      "change-tracking file (epoch 3) of disk id 99",
		"99.track.4.tmp":  "change-tracking file being created (epoch 4) of disk id 99",
		"99.track.row.3":  "side file of redirected writes (epoch 3) of disk id 99",
		"99.track.cbw":    "copy-before-write journal of an older cairnd of disk id 99",
		"notes.txt":       "not a file cairnd writes",
		bid + ".raw.orig": "not a file cairnd writes",
		bid + ".track.x":  "not a file cairnd writes",
	}
	for _, name := range mine {
		if err := os.WriteFile(filepath.Join(disks, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name := range orphans {
		if err := os.WriteFile(filepath.Join(disks, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	for name, what := range orphans {
		if l := logs.lines("level=WARN", "path="+filepath.Join(disks, name)+" ", what); len(l) != 1 {
			t.Errorf("orphan %s: %d warnings saying %q; want 1", name, len(l), what)
		}
	}
	for _, name := range mine {
		if l := logs.lines("level=WARN", "path="+filepath.Join(disks, name)); len(l) > 0 {
			t.Errorf("a file of disk b warned about: %s", l)
		}
	}
	if n := len(logs.lines("level=WARN", "path=")); n != len(orphans) {
		t.Errorf("%d warnings naming a path; want %d:\n%s", n, len(orphans), strings.Join(logs.lines("level=WARN"), "\n"))
	}
}
