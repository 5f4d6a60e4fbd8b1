package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// fixture is a server with the exports most tests use:
//
//	disk   file-backed, writable, multi-conn
//	ro     file-backed, read-only
//	mem    in-memory, writable, with context qemu:dirty-bitmap:x
type fixture struct {
	sock     string
	srv      *nbd.Server
	exports  *nbdtest.Exports
	diskPath string
	disk     *blocktest.File
	mem      *blocktest.Memory
	dirty    *blocktest.Ranges
}

const fixtureSize = 16 << 20

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{diskPath: filepath.Join(dir, "disk.img")}
	var err error
	if f.disk, err = blocktest.CreateFile(f.diskPath, fixtureSize); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.disk.Close() })
	ro, err := blocktest.CreateFile(filepath.Join(dir, "ro.img"), fixtureSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ro.Close() })
	if err := ro.WriteAt(context.Background(), bytes.Repeat([]byte{0xab}, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	f.mem = blocktest.NewMemory(fixtureSize)
	f.dirty = &blocktest.Ranges{Size: fixtureSize, Flags: block.StateDirty, Ranges: [][2]int64{{64 << 10, 64 << 10}, {1 << 20, 128 << 10}}}
	f.exports = nbdtest.NewExports(
		&nbd.Export{Name: "disk", Description: "test disk", Device: f.disk, MultiConn: true},
		&nbd.Export{Name: "ro", Description: "read-only disk", Device: ro, ReadOnly: true},
		&nbd.Export{Name: "mem", Device: f.mem, MinBlock: 512, Contexts: func() map[string]block.ExtentMap {
			return map[string]block.ExtentMap{"qemu:dirty-bitmap:x": f.dirty}
		}},
	)
	f.sock, f.srv = nbdtest.Serve(t, f.exports, nbd.Options{})
	return f
}

func (f *fixture) uri(name string) string { return nbdtest.URI(f.sock, name) }

// need skips the test when a tool is not installed.
func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it): %v", tool, err)
		}
	}
}

// run runs a command and returns its standard output; failure fails the
// test with everything the command said.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// runErr runs a command and returns its standard output, and on failure an
// error that includes its standard error.
func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}
