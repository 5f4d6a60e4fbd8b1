package daemon_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// Roles with real users: the test makes them with useradd, and each calls
// cairnd through the real sockets as that user (curl for the API, qemu-io
// for NBD), so the kernel's peer credentials are what decide.

// testUser is a user made for one test.
type testUser struct {
	name     string
	uid, gid uint32
}

func addUser(t *testing.T, name string, groups ...string) testUser {
	t.Helper()
	args := []string{"--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"}
	if len(groups) > 0 {
		args = append(args, "--groups", strings.Join(groups, ","))
	}
	exec.Command("userdel", name).Run() // left by an earlier run that died
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return testUser{name, uint32(uid), uint32(gid)}
}

func addGroup(t *testing.T, name string) {
	t.Helper()
	exec.Command("groupdel", name).Run()
	if out, err := exec.Command("groupadd", name).CombinedOutput(); err != nil {
		t.Fatalf("groupadd %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
}

// as runs a command as u, with u's supplementary groups.
func (u testUser) run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var groups []uint32
	if usr, err := user.Lookup(u.name); err == nil {
		ids, _ := usr.GroupIds()
		for _, g := range ids {
			n, _ := strconv.ParseUint(g, 10, 32)
			groups = append(groups, uint32(n))
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: groups}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// call makes one API call as u with curl and returns the status and body.
func (u testUser) call(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	args := []string{"-s", "--unix-socket", sock, "-X", method, "-o", "-", "-w", "\n%{http_code}", "http://cairn" + path}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data", body)
	}
	out, err := u.run("curl", args...)
	if err != nil {
		t.Fatalf("curl as %s: %v %s", u.name, err, out)
	}
	i := strings.LastIndex(out, "\n")
	status, _ := strconv.Atoi(out[i+1:])
	return status, out[:i]
}

// sharedDir is a directory every user can reach, for the sockets.
func sharedDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "cairn-roles-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return dir
}

func TestRolesWithRealUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to add users")
	}
	for _, tool := range []string{"useradd", "groupadd", "curl", "qemu-io"} {
		need(t, tool)
	}
	sfx := strconv.Itoa(os.Getpid() % 100000)
	tenants := "ct-tenants" + sfx
	addGroup(t, tenants)
	admin := addUser(t, "ct-admin"+sfx)
	operator := addUser(t, "ct-op"+sfx)
	reader := addUser(t, "ct-read"+sfx)
	nobody := addUser(t, "ct-none"+sfx)
	tenant := addUser(t, "ct-tenant"+sfx, tenants)

	socks := sharedDir(t)
	allowed := sharedDir(t)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.APISocket, cfg.NBDSocket = filepath.Join(socks, "api.sock"), filepath.Join(socks, "nbd.sock")
	cfg.Admin = []string{"user:" + admin.name}
	cfg.Operator = []string{"uid:" + strconv.Itoa(int(operator.uid))}
	cfg.Reader = []string{"user:" + reader.name}
	cfg.Grant = []string{"group:" + tenants + " operator t-*"}
	cfg.AdoptAllow = []string{allowed}
	var logs lockedBuffer
	cfg.Logger = bufferLogger(t, &logs)
	in := daemontest.Start(t, &cfg)
	for _, s := range []string{cfg.APISocket, cfg.NBDSocket} {
		os.Chmod(s, 0o666) // let every test user connect: roles decide, not the socket's mode
	}
	createDisk(t, in, "vm", "1M")
	createDisk(t, in, "t-web", "1M")
	img := filepath.Join(allowed, "img.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	sock := cfg.APISocket
	for _, tc := range []struct {
		who                testUser
		method, path, body string
		status             int
		contains           string
	}{
		{nobody, "GET", "/v1/disks", "", 403, "needs the reader role"},
		{nobody, "GET", "/v1/disks/vm", "", 403, "reader"},
		{nobody, "GET", "/v1/health", "", 200, ""},
		{reader, "GET", "/v1/disks", "", 200, `"t-web"`},
		{reader, "GET", "/v1/disks/vm/snapshots", "", 200, ""},
		{reader, "GET", "/v1/exports", "", 200, `"vm"`},
		{reader, "POST", "/v1/disks/vm/snapshots", `{"name":"r1"}`, 403, `snapshot.create needs the operator role on disk \"vm\"`},
		{reader, "POST", "/v1/disks", `{"name":"r","size":"1M"}`, 403, "operator"},
		{operator, "POST", "/v1/disks/vm/snapshots", `{"name":"op1"}`, 202, ""},
		{operator, "GET", "/v1/disks/vm/changes?from=op1", "", 200, ""},
		{operator, "POST", "/v1/disks", `{"name":"made-by-op","size":"1M"}`, 201, ""},
		{operator, "POST", "/v1/disks", `{"name":"adopted","adopt":"` + img + `"}`, 403, "needs the admin role"},
		{operator, "DELETE", "/v1/disks/made-by-op", "", 403, "disk.delete needs the admin role"},
		{operator, "DELETE", "/v1/disks/vm/snapshots/op1", "", 200, ""},
		{admin, "POST", "/v1/disks", `{"name":"adopted","adopt":"` + img + `"}`, 201, ""},
		{admin, "DELETE", "/v1/disks/made-by-op", "", 204, ""},
		{tenant, "GET", "/v1/disks", "", 200, `"t-web"`},
		{tenant, "POST", "/v1/disks/t-web/snapshots", `{"name":"tn1"}`, 202, ""},
		{tenant, "POST", "/v1/disks/vm/snapshots", `{"name":"tn1"}`, 403, `operator role on disk \"vm\"`},
		{tenant, "GET", "/v1/disks/vm", "", 403, "reader"},
		{tenant, "POST", "/v1/disks", `{"name":"t-db","size":"1M"}`, 201, ""},
		{tenant, "POST", "/v1/disks", `{"name":"other","size":"1M"}`, 403, `operator role on disk \"other\"`},
		{tenant, "DELETE", "/v1/disks/t-db", "", 403, "admin"},
		{tenant, "GET", "/v1/capacity", "", 403, "reader"},
	} {
		t.Run(fmt.Sprintf("%s %s %s", tc.who.name, tc.method, tc.path), func(t *testing.T) {
			status, body := tc.who.call(t, sock, tc.method, tc.path, tc.body)
			if status != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("status %d %s; want %d containing %q", status, body, tc.status, tc.contains)
			}
			if status == 403 && !strings.Contains(body, `"permission_denied"`) {
				t.Errorf("403 without code permission_denied: %s", body)
			}
		})
	}
	// A tenant's list holds its disks only.
	_, body := tenant.call(t, sock, "GET", "/v1/disks", "")
	var disks []api.Disk
	json.Unmarshal([]byte(body), &disks)
	for _, d := range disks {
		if !strings.HasPrefix(d.Name, "t-") {
			t.Errorf("tenant sees disk %q", d.Name)
		}
	}

	// NBD: the reader reads the live disk but cannot write it; the
	// operator writes; a user without a role cannot open or list it.
	uri := "nbd+unix:///vm?socket=" + cfg.NBDSocket
	if out, err := operator.run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", uri); err != nil || !strings.Contains(out, "wrote 65536/65536") {
		t.Fatalf("operator write over NBD: %v %s", err, out)
	}
	if out, err := reader.run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 0 64k", uri); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("reader read over NBD: %v %s", err, out)
	}
	if out, err := reader.run("qemu-io", "-f", "raw", "-c", "write 0 4k", uri); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("reader write over NBD: %v %s", err, out)
	}
	if out, err := nobody.run("qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", uri); err == nil || !strings.Contains(out, "no role") {
		t.Fatalf("no-role read over NBD: %v %s", err, out)
	}
	if out, err := tenant.run("nbdinfo", "--list", "nbd+unix:///?socket="+cfg.NBDSocket); err != nil || strings.Contains(out, "export=\"vm\"") || !strings.Contains(out, "t-web") {
		t.Fatalf("tenant's NBD list: %v %s", err, out)
	}

	// Every call is in the audit log, with who, what, on what, and how.
	for _, want := range []string{
		fmt.Sprintf("caller_uid=%d action=disk.delete target=made-by-op result=permission_denied", operator.uid),
		fmt.Sprintf("caller_uid=%d action=disk.delete target=made-by-op result=ok", admin.uid),
		fmt.Sprintf("caller_uid=%d action=disk.create target=other result=permission_denied", tenant.uid),
		fmt.Sprintf("caller_uid=%d action=disk.list target=\"\" result=permission_denied", nobody.uid),
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("audit log lacks %q", want)
		}
	}
}

// lockedBuffer collects log lines written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// bufferLogger logs to buf, and to the test's log if it fails.
func bufferLogger(t *testing.T, buf *lockedBuffer) *slog.Logger {
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, nil))
}
