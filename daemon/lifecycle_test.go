package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func TestDataDirLock(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	in := daemontest.Start(t, &cfg)

	second := cfg
	second.APISocket = filepath.Join(filepath.Dir(cfg.DataDir), "other.sock")
	second.NBDSocket = filepath.Join(filepath.Dir(cfg.DataDir), "other-nbd.sock")
	_, err := daemon.New(second)
	want := fmt.Sprintf("data directory %s is in use by another cairnd (pid %d)", cfg.DataDir, os.Getpid())
	if err == nil || err.Error() != want {
		t.Fatalf("second daemon on the same data directory: %v, want %q", err, want)
	}
	// The failed start left nothing behind and disturbed nothing.
	for _, p := range []string{second.APISocket, second.NBDSocket} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed start left %s: %v", p, err)
		}
	}
	if _, err := in.Client.Info(context.Background()); err != nil {
		t.Fatalf("first daemon after the second's attempt: %v", err)
	}
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	// Released on shutdown.
	daemontest.Start(t, &cfg)
}

func TestSocketInUse(t *testing.T) {
	dir := daemontest.DataDir(t)
	cfg := daemontest.Config(t, dir)
	in := daemontest.Start(t, &cfg)
	other := daemontest.Config(t, filepath.Join(filepath.Dir(dir), "other"))
	other.APISocket = in.Info().APISocket
	if _, err := daemon.New(other); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second daemon on a live API socket: %v", err)
	}
	if _, err := in.Client.Info(context.Background()); err != nil {
		t.Fatalf("first daemon after the second's attempt: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := daemontest.DataDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A socket file nobody listens on, as a killed cairnd leaves it.
	l, err := net.Listen("unix", filepath.Join(dir, "cairn.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	cfg := daemontest.Config(t, dir)
	in := daemontest.Start(t, &cfg)
	if _, err := in.Client.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(in.Info().APISocket)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("API socket mode: %v, %v", fi.Mode(), err)
	}
}

func TestRestartKeepsDisks(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	a, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "a", Size: "1M", BlockSize: "128K", Description: "disk a"})
	if err != nil {
		t.Fatal(err)
	}
	b := createDisk(t, in, "b", "1M")
	if _, err := in.Client.GrowDisk(ctx, "a", "3M"); err != nil {
		t.Fatal(err)
	}
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(b.Path); err != nil {
		t.Fatal(err)
	}

	in = daemontest.Start(t, &cfg)
	disks, err := in.Client.Disks(ctx)
	if err != nil || len(disks) != 2 {
		t.Fatalf("after restart: %+v, %v", disks, err)
	}
	got := disks[0]
	if got.ID != a.ID || got.Size != 3<<20 || got.BlockSize != 128<<10 || got.Description != "disk a" ||
		got.Path != a.Path || !got.Created.Equal(a.Created.Time) || got.State != api.DiskReady {
		t.Errorf("disk a after restart: %+v, was %+v", got, a)
	}
	if gb := disks[1]; gb.State != api.DiskError || !strings.Contains(gb.Error, "no such file") {
		t.Errorf("disk b without its live image: %+v", gb)
	}
	_, err = in.Client.GrowDisk(ctx, "b", "2M")
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, "unavailable")
	if exports, _ := in.Client.Exports(ctx); len(exports) != 1 || exports[0].Name != "a" {
		t.Errorf("a disk in error is exported: %+v", exports)
	}
	if err := in.Client.DeleteDisk(ctx, "b", api.DeleteDiskOptions{}); err != nil {
		t.Fatalf("deleting a disk in error: %v", err)
	}
	c := createDisk(t, in, "c", "1M")
	if c.ID <= b.ID {
		t.Errorf("new disk id %d reuses or precedes %d", c.ID, b.ID)
	}
}

func TestAdopt(t *testing.T) {
	dir := t.TempDir()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{dir}
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	path := filepath.Join(dir, "legacy.raw")
	content := bytes.Repeat([]byte("cairn!!!"), 1<<17) // 1 MiB
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "legacy", Adopt: path})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Adopted || d.Path != path || d.Size != 1<<20 || d.State != api.DiskReady {
		t.Fatalf("adopted %+v", d)
	}
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "again", Adopt: path})
	wantAPIError(t, err, 409, api.CodeInUse, "legacy")
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	_, err = in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "again", Adopt: link})
	wantAPIError(t, err, 409, api.CodeInUse, "legacy")

	if _, err := in.Client.GrowDisk(ctx, "legacy", "2M"); err != nil {
		t.Fatalf("grow an adopted file: %v", err)
	}
	if err := in.Client.DeleteDisk(ctx, "legacy", api.DeleteDiskOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || len(got) != 2<<20 || !bytes.Equal(got[:1<<20], content) {
		t.Fatalf("adopted file after delete: %d bytes, %v", len(got), err)
	}
	if _, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "legacy", Adopt: path}); err != nil {
		t.Fatal(err)
	}
	if err := in.Client.DeleteDisk(ctx, "legacy", api.DeleteDiskOptions{DeleteAdopted: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("delete_adopted left the file: %v", err)
	}
}

func TestAdoptBlockDevice(t *testing.T) {
	dev := loopDevice(t, 8<<20)

	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{dev}
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	d, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "loop", Adopt: dev})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size != 8<<20 || d.Path != dev || !d.Adopted {
		t.Fatalf("adopted device %+v", d)
	}
	_, err = in.Client.GrowDisk(ctx, "loop", "16M")
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, "block device")
	if err := in.Client.DeleteDisk(ctx, "loop", api.DeleteDiskOptions{DeleteAdopted: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dev); err != nil {
		t.Fatalf("delete_adopted removed the device node: %v", err)
	}
}

func TestGracefulShutdown(t *testing.T) {
	need(t, "qemu-io")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	var mu sync.Mutex
	var states []string
	cfg.Notify = func(s string) { mu.Lock(); states = append(states, s); mu.Unlock() }
	in := daemontest.Start(t, &cfg)
	d := createDisk(t, in, "d", "16M")
	h := holdExport(t, in, "d")
	info := in.Info()

	start := time.Now()
	if err := in.Stop(); err != nil {
		t.Fatalf("shutdown with a connected client: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("shutdown took %v", took)
	}
	if line := h.probe(); line != "disconnected" {
		t.Errorf("client after shutdown says %q", line)
	}
	for _, p := range []string{info.APISocket, info.NBDSocket} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left after shutdown: %v", p, err)
		}
	}
	mu.Lock()
	if strings.Join(states, ",") != "READY=1,STOPPING=1" {
		t.Errorf("notify states %q", states)
	}
	mu.Unlock()
	// The data is all there for the next start.
	in = daemontest.Start(t, &cfg)
	out, err := exec.Command("qemu-io", "-f", "raw", nbdURI(in, "d"), "-c", "read -P 0 0 16M").CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") {
		t.Fatalf("read after restart: %v\n%s", err, out)
	}
	if _, err := os.Stat(d.Path); err != nil {
		t.Fatal(err)
	}
}

func TestShutdownWithoutRun(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	d, err = daemon.New(cfg)
	if err != nil {
		t.Fatalf("start after a Shutdown without Run: %v", err)
	}
	d.Shutdown(context.Background())
}

func TestPremadeListeners(t *testing.T) {
	dir := daemontest.DataDir(t)
	cfg := daemontest.Config(t, dir)
	var err error
	base := filepath.Dir(dir)
	if cfg.APIListener, err = net.Listen("unix", filepath.Join(base, "api.sock")); err != nil {
		t.Fatal(err)
	}
	if cfg.NBDListener, err = net.Listen("unix", filepath.Join(base, "n.sock")); err != nil {
		t.Fatal(err)
	}
	if cfg.NBDTCPListener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	in := daemontest.Start(t, &cfg)
	info, err := in.Client.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.APISocket != filepath.Join(base, "api.sock") || info.NBDSocket != filepath.Join(base, "n.sock") || info.NBDListen != cfg.NBDTCPListener.Addr().String() {
		t.Fatalf("info %+v", info)
	}
	for _, p := range []string{"cairn.sock", "nbd.sock"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("daemon listened on its default %s despite a pre-made listener", p)
		}
	}
	if h, err := in.Client.Health(context.Background()); err != nil || h.Status != "ok" {
		t.Fatalf("health %+v %v", h, err)
	}
	need(t, "nbdinfo")
	createDisk(t, in, "tcp", "1M")
	out, err := exec.Command("nbdinfo", "nbd://"+info.NBDListen+"/tcp").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "export-size: 1048576") {
		t.Fatalf("nbdinfo over the TCP listener: %v\n%s", err, out)
	}
}
