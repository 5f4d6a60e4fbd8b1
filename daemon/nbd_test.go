package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

func need(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
	}
}

func nbdURI(in *daemontest.Instance, export string) string {
	return "nbd+unix:///" + export + "?socket=" + in.Info().NBDSocket
}

// holder is an NBD client (nbdsh) that stays connected until released.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// holdExport connects nbdsh to export and returns once it has completed a
// read, so the server has the connection in its transmission phase.
func holdExport(t *testing.T, in *daemontest.Instance, export string) *holder {
	t.Helper()
	// nbdsh runs the first python3 on PATH, which may not be the one
	// Debian's python3-libnbd is for; use that one directly.
	if err := exec.Command("/usr/bin/python3", "-c", "import nbd").Run(); err != nil {
		t.Skip("/usr/bin/python3 cannot import nbd: install python3-libnbd (scripts/deps.sh)")
	}
	const script = `
import sys
h.pread(512, 0)
print("connected", flush=True)
for _ in sys.stdin:
    try:
        h.pread(512, 0)
        print("still connected", flush=True)
    except Exception:
        print("disconnected", flush=True)
`
	cmd := exec.Command("/usr/bin/python3", "-m", "nbd", "-u", nbdURI(in, export), "-c", script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() { h.stdin.Close(); h.cmd.Wait() })
	if line := h.line(); line != "connected" {
		t.Fatalf("nbdsh did not connect (%q): %s", line, stderr.String())
	}
	return h
}

func (h *holder) line() string {
	if h.out.Scan() {
		return h.out.Text()
	}
	return ""
}

// probe asks the client to read again and returns what it saw.
func (h *holder) probe() string {
	io.WriteString(h.stdin, "\n")
	return h.line()
}

func TestNBDReadWriteThroughDaemon(t *testing.T) {
	need(t, "qemu-io")
	need(t, "qemu-img")
	in := daemontest.Start(t, nil)
	d := createDisk(t, in, "data", "64M")
	uri := nbdURI(in, "data")
	out, err := exec.Command("qemu-io", "-f", "raw", uri,
		"-c", "write -P 0xab 1M 1M", "-c", "read -P 0xab 1M 1M", "-c", "read -P 0 0 1M").CombinedOutput()
	if err != nil || strings.Contains(string(out), "fail") || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	img, err := os.ReadFile(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[1<<20:2<<20], bytes.Repeat([]byte{0xab}, 1<<20)) {
		t.Error("the live image does not hold what qemu-io wrote")
	}
	out, err = exec.Command("qemu-img", "info", "--output=json", uri).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"virtual-size": 67108864`) {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
}

func TestNBDListAndUnknownExports(t *testing.T) {
	need(t, "nbdinfo")
	in := daemontest.Start(t, nil)
	createDisk(t, in, "one", "1M")
	if _, err := in.Client.CreateDisk(context.Background(), api.CreateDiskRequest{Name: "two", Size: "2M", Description: "second disk"}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nbdinfo", "--list", "nbd+unix:///?socket="+in.Info().NBDSocket).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	for _, want := range []string{"export=\"one\"", "export=\"two\"", "second disk"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nbdinfo --list does not show %s:\n%s", want, out)
		}
	}
	for _, name := range []string{"three", "one@snap", ".hidden"} {
		if out, err := exec.Command("nbdinfo", nbdURI(in, name)).CombinedOutput(); err == nil {
			t.Errorf("export %q opened:\n%s", name, out)
		}
	}
}

func TestDeleteWhileConnected(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	createDisk(t, in, "busy", "1M")
	createDisk(t, in, "idle", "1M")
	h := holdExport(t, in, "busy")

	d, err := in.Client.Disk(ctx, "busy")
	if err != nil || len(d.Clients) != 1 {
		t.Fatalf("disk with a client: %+v, %v", d, err)
	}
	exports, err := in.Client.Exports(ctx)
	if err != nil || len(exports) != 2 || exports[0].Name != "busy" || len(exports[0].Clients) != 1 || len(exports[1].Clients) != 0 {
		t.Fatalf("exports: %+v, %v", exports, err)
	}
	if c := exports[0].Clients[0]; c.ReadOnly || c.Since.IsZero() || time.Since(c.Since.Time) > time.Minute {
		t.Errorf("client %+v", c)
	}

	err = in.Client.DeleteDisk(ctx, "busy", api.DeleteDiskOptions{})
	wantAPIError(t, err, 409, api.CodeInUse, "busy", "1 connected NBD client", "force")
	if line := h.probe(); line != "still connected" {
		t.Fatalf("a refused delete disturbed the client: %q", line)
	}
	if err := in.Client.DeleteDisk(ctx, "idle", api.DeleteDiskOptions{}); err != nil {
		t.Fatalf("deleting a disk without clients: %v", err)
	}
	if err := in.Client.DeleteDisk(ctx, "busy", api.DeleteDiskOptions{Force: true}); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if line := h.probe(); line != "disconnected" {
		t.Fatalf("after a forced delete the client says %q", line)
	}
	if _, err := in.Client.Disk(ctx, "busy"); err == nil {
		t.Fatal("disk still there after a forced delete")
	}
	if exports, _ := in.Client.Exports(ctx); len(exports) != 0 {
		t.Fatalf("exports after delete: %+v", exports)
	}
}

// TestForceDeleteDiskWithSnapshotReader: a forced delete disconnects the
// clients of every export of the disk, its snapshots' included, and is
// refused without force while only a snapshot is read.
func TestForceDeleteDiskWithSnapshotReader(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	createDisk(t, in, "vm", "1M")
	mustSnapshot(t, in.Client, "vm", "s1")
	h := holdExport(t, in, "vm@s1")

	err := in.Client.DeleteDisk(ctx, "vm", api.DeleteDiskOptions{WithSnapshots: true})
	wantAPIError(t, err, 409, api.CodeInUse, "1 connected NBD client")
	start := time.Now()
	if err := in.Client.DeleteDisk(ctx, "vm", api.DeleteDiskOptions{Force: true, WithSnapshots: true}); err != nil {
		t.Fatalf("forced delete with a snapshot reader: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("forced delete took %v", took)
	}
	if line := h.probe(); line != "disconnected" {
		t.Fatalf("after a forced delete the snapshot's reader says %q", line)
	}
}

// TestExportsAgree: the API's export list and NBD's LIST name the same
// exports, the live disks and their readable snapshots, with the same
// descriptions.
func TestExportsAgree(t *testing.T) {
	need(t, "nbdinfo")
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	if _, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: "b", Size: "1M", Description: "disk b"}); err != nil {
		t.Fatal(err)
	}
	createDisk(t, in, "a", "1M")
	mustSnapshot(t, in.Client, "b", "s1")
	mustSnapshot(t, in.Client, "b", "s2")
	exports, err := in.Client.Exports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fromAPI []string
	for _, e := range exports {
		fromAPI = append(fromAPI, e.Name+"="+e.Description)
	}
	if want := "[a= b=disk b b@s1=snapshot s1 of disk b b@s2=snapshot s2 of disk b]"; fmt.Sprint(fromAPI) != want {
		t.Errorf("API exports %v, want %s", fromAPI, want)
	}
	out, err := exec.Command("nbdinfo", "--list", "--json", "nbd+unix:///?socket="+in.Info().NBDSocket).Output()
	if err != nil {
		t.Fatalf("nbdinfo --list: %v", err)
	}
	var list struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	var fromNBD []string
	for _, e := range list.Exports {
		fromNBD = append(fromNBD, e.Name+"="+e.Description)
	}
	if fmt.Sprint(fromNBD) != fmt.Sprint(fromAPI) {
		t.Errorf("NBD LIST %v, API %v", fromNBD, fromAPI)
	}
}
