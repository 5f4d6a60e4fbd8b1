package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/store"
)

// twoDiskMachine starts a daemon with disks root and data (4 MiB each) in
// machine vm; agentDir is where agent sockets may be.
func twoDiskMachine(t *testing.T, freeze time.Duration) (*daemontest.Instance, string) {
	t.Helper()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	agentDir := filepath.Join(filepath.Dir(cfg.DataDir), "agents")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg.AgentSocketDirs = agentDir
	cfg.FreezeTimeout = daemon.Duration(freeze)
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	for _, name := range []string{"root", "data"} {
		if _, err := in.Client.CreateDisk(ctx, api.CreateDiskRequest{Name: name, Size: "4M"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := in.Client.CreateMachine(ctx, api.CreateMachineRequest{Name: "vm", Disks: []string{"root", "data"},
		Config: &api.Config{MediaType: "application/xml", Data: "<domain><name>vm</name></domain>"}}); err != nil {
		t.Fatal(err)
	}
	return in, agentDir
}

func machineSnapshot(t *testing.T, in *daemontest.Instance, req api.CreateMachineSnapshotRequest) (api.Task, api.MachineSnapshot) {
	t.Helper()
	task, err := in.Client.CreateMachineSnapshot(context.Background(), "vm", req)
	if err != nil {
		t.Fatal(err)
	}
	task = waitTask(t, in.Client, task.ID)
	if task.State != api.TaskSucceeded {
		return task, api.MachineSnapshot{}
	}
	ms, err := in.Client.MachineSnapshot(context.Background(), "vm", req.Name)
	if err != nil {
		t.Fatal(err)
	}
	return task, ms
}

func TestMachines(t *testing.T) {
	need(t, "qemu-io")
	in, _ := twoDiskMachine(t, 2*time.Second)
	ctx := context.Background()
	c := in.Client

	// Rules of the disk list.
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "spare", Size: "1M"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  api.CreateMachineRequest
		code string
		want string
	}{
		{api.CreateMachineRequest{Name: "vm", Disks: []string{"spare"}}, api.CodeAlreadyExists, `machine "vm" already exists`},
		{api.CreateMachineRequest{Name: "m2", Disks: []string{"root"}}, api.CodeInUse, `belongs to machine "vm"`},
		{api.CreateMachineRequest{Name: "m2", Disks: []string{"nope"}}, api.CodeNotFound, `"nope" not found`},
		{api.CreateMachineRequest{Name: "m2", Disks: []string{"spare", "spare"}}, api.CodeInvalidArgument, "twice"},
		{api.CreateMachineRequest{Name: "m2"}, api.CodeInvalidArgument, "at least one disk"},
		{api.CreateMachineRequest{Name: "m2", Disks: []string{"spare"}, AgentSocket: "/etc/shadow"}, api.CodeInvalidArgument, "agent_socket_dirs"},
		{api.CreateMachineRequest{Name: "m2", Disks: []string{"spare"}, Config: &api.Config{MediaType: "xml", Data: "x"}}, api.CodeInvalidArgument, "media type"},
	} {
		_, err := c.CreateMachine(ctx, tc.req)
		status := map[string]int{api.CodeAlreadyExists: 409, api.CodeInUse: 409, api.CodeNotFound: 404, api.CodeInvalidArgument: 400}[tc.code]
		wantAPIError(t, err, status, tc.code, tc.want)
	}
	m, err := c.Machine(ctx, "vm")
	if err != nil || strings.Join(m.Disks, ",") != "root,data" || m.Config == nil || !strings.Contains(m.Config.Data, "<domain>") {
		t.Fatalf("machine vm: %+v, %v", m, err)
	}

	// A crash-consistent machine snapshot (auto, no agent: says why).
	qemuIO(t, nbdURI(in, "root"), "write -P 0x11 0 64k")
	qemuIO(t, nbdURI(in, "data"), "write -P 0x22 0 64k")
	task, ms := machineSnapshot(t, in, api.CreateMachineSnapshotRequest{Name: "s1"})
	if task.State != api.TaskSucceeded || ms.State != api.SnapshotReady || ms.Consistency != api.ConsistencyCrash ||
		ms.Requested != api.ConsistencyAuto || !strings.Contains(ms.Reason, "no guest agent socket") || len(ms.Members) != 2 {
		t.Fatalf("machine snapshot: task %+v, snapshot %+v", task, ms)
	}
	if ms.Config == nil || !strings.Contains(ms.Config.Data, "<name>vm</name>") {
		t.Fatalf("machine snapshot lost the configuration: %+v", ms.Config)
	}
	// Members are ordinary snapshots, readable as DISK@NAME.
	qemuIO(t, nbdURI(in, "root@s1"), "read -P 0x11 0 64k")
	qemuIO(t, nbdURI(in, "data@s1"), "read -P 0x22 0 64k")
	// Filesystem consistency without an agent fails and leaves nothing.
	task, _ = machineSnapshot(t, in, api.CreateMachineSnapshotRequest{Name: "s2", Consistency: "filesystem"})
	if task.State != api.TaskFailed || !strings.Contains(task.Error, "no guest agent socket") {
		t.Fatalf("filesystem snapshot without an agent: %+v", task)
	}
	if _, err := c.Snapshot(ctx, "root", "s2"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("a failed machine snapshot left a member: %v", err)
	}
	_, err = c.CreateMachineSnapshot(ctx, "vm", api.CreateMachineSnapshotRequest{Name: "s3", Consistency: "sometimes"})
	wantAPIError(t, err, 400, api.CodeInvalidArgument, "consistency")

	// Members cannot be deleted alone, nor member disks.
	_, err = c.DeleteSnapshot(ctx, "root", "s1", false)
	wantAPIError(t, err, 409, api.CodeInUse, "machine snapshot vm@s1")
	err = c.DeleteDisk(ctx, "data", api.DeleteDiskOptions{})
	wantAPIError(t, err, 409, api.CodeInUse, `belongs to machine "vm"`)

	// Rollback of the whole machine.
	qemuIO(t, nbdURI(in, "root"), "write -P 0x33 0 64k")
	qemuIO(t, nbdURI(in, "data"), "write -P 0x44 0 64k")
	rb, err := c.RollbackMachine(ctx, "vm", "s1", false)
	if err != nil {
		t.Fatal(err)
	}
	if rb = waitTask(t, c, rb.ID); rb.State != api.TaskSucceeded {
		t.Fatalf("machine rollback: %+v", rb)
	}
	qemuIO(t, nbdURI(in, "root"), "read -P 0x11 0 64k")
	qemuIO(t, nbdURI(in, "data"), "read -P 0x22 0 64k")

	// A restart keeps machines and machine snapshots.
	cfg := in.Config
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	in2 := daemontest.Start(t, &cfg)
	list, err := in2.Client.MachineSnapshots(ctx, "vm")
	if err != nil || len(list) != 1 || list[0].Name != "s1" || list[0].State != api.SnapshotReady {
		t.Fatalf("after a restart: %+v, %v", list, err)
	}

	// Deletes: a machine with snapshots only with with_snapshots; its
	// disks stay.
	err = in2.Client.DeleteMachine(ctx, "vm", api.DeleteMachineOptions{})
	wantAPIError(t, err, 409, api.CodeInUse, "with-snapshots")
	if _, err := in2.Client.DeleteMachineSnapshot(ctx, "vm", "s1", false); err != nil {
		t.Fatal(err)
	}
	if _, err := in2.Client.Snapshot(ctx, "root", "s1"); !isCode(err, api.CodeNotFound) {
		t.Fatalf("deleting a machine snapshot left its member: %v", err)
	}
	if err := in2.Client.DeleteMachine(ctx, "vm", api.DeleteMachineOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := in2.Client.Disk(ctx, "root"); err != nil {
		t.Fatalf("deleting the machine deleted its disk: %v", err)
	}
}

// fakeAgent is a scripted guest agent on a Unix socket: the real qemu-ga
// can only freeze inside a VM (scripts/test/vm; TestMachineSnapshotInVM),
// and cannot be made to hang, die or answer garbage; this one can. It
// records the commands it got. freeze is its answer to
// guest-fsfreeze-freeze ("" never answers, "close" hangs up).
type fakeAgent struct {
	mu   sync.Mutex
	cmds []string
}

func (a *fakeAgent) got() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.cmds...)
}

func startFakeAgent(t *testing.T, sock string, freeze string) *fakeAgent {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	a := &fakeAgent{}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go a.serve(conn, freeze)
		}
	}()
	return a
}

func (a *fakeAgent) serve(conn net.Conn, freeze string) {
	defer conn.Close()
	dec := json.NewDecoder(bufio.NewReader(&skipFF{conn}))
	for {
		var cmd struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID json.Number `json:"id"`
			} `json:"arguments"`
		}
		if err := dec.Decode(&cmd); err != nil {
			return
		}
		a.mu.Lock()
		a.cmds = append(a.cmds, cmd.Execute)
		a.mu.Unlock()
		switch cmd.Execute {
		case "guest-sync-delimited":
			conn.Write([]byte("\xff{\"return\": " + cmd.Arguments.ID.String() + "}"))
		case "guest-fsfreeze-freeze":
			switch freeze {
			case "":
			case "close":
				return
			default:
				conn.Write([]byte(freeze))
			}
		case "guest-fsfreeze-thaw":
			conn.Write([]byte(`{"return": 1}`))
		default:
			conn.Write([]byte(`{"return": {}}`))
		}
	}
}

// skipFF drops the 0xFF bytes a client sends to flush the agent's parser.
type skipFF struct{ c net.Conn }

func (s *skipFF) Read(p []byte) (int, error) {
	n, err := s.c.Read(p)
	j := 0
	for _, b := range p[:n] {
		if b != 0xff {
			p[j] = b
			j++
		}
	}
	return j, err
}

// TestMachineFreezePaths: the guest agent frozen through its protocol,
// the bound, and every failure: auto falls back to crash-consistent and
// says why, filesystem fails, and a thaw is sent whenever a freeze was.
func TestMachineFreezePaths(t *testing.T) {
	for _, tc := range []struct {
		name, freeze, consistency string
		wantCons, wantReason      string // for a snapshot taken
		wantFail                  string // for a task that fails
	}{
		{"frozen", `{"return": 2}`, "filesystem", api.ConsistencyFilesystem, "", ""},
		{"slow agent, auto", "", "auto", api.ConsistencyCrash, "did not freeze the filesystems within freeze_timeout", ""},
		{"slow agent, filesystem", "", "filesystem", "", "", "within freeze_timeout"},
		{"agent error", `{"error": {"class": "GenericError", "desc": "fsfreeze busy"}}`, "auto", api.ConsistencyCrash, "fsfreeze busy", ""},
		{"garbage", `{"return": "lots"}`, "auto", api.ConsistencyCrash, "could not freeze", ""},
		{"agent dies", "close", "filesystem", "", "", "could not freeze"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, dir := twoDiskMachine(t, 500*time.Millisecond)
			sock := filepath.Join(dir, "vm.sock")
			agent := startFakeAgent(t, sock, tc.freeze)
			if _, err := in.Client.UpdateMachine(context.Background(), "vm", api.UpdateMachineRequest{AgentSocket: &sock}); err != nil {
				t.Fatal(err)
			}
			task, ms := machineSnapshot(t, in, api.CreateMachineSnapshotRequest{Name: "s0", Consistency: tc.consistency})
			if tc.wantFail != "" {
				if task.State != api.TaskFailed || !strings.Contains(task.Error, tc.wantFail) {
					t.Fatalf("task %+v: want failed with %q", task, tc.wantFail)
				}
			} else if task.State != api.TaskSucceeded || ms.Consistency != tc.wantCons || !strings.Contains(ms.Reason, tc.wantReason) {
				t.Fatalf("task %+v, snapshot %+v: want consistency %s, reason with %q", task, ms, tc.wantCons, tc.wantReason)
			}
			got := strings.Join(agent.got(), " ")
			if !strings.Contains(got, "guest-fsfreeze-freeze") {
				t.Fatalf("the agent was never asked to freeze: %s", got)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(strings.Join(agent.got(), " "), "guest-fsfreeze-thaw") {
				if time.Now().After(deadline) {
					t.Fatalf("never thawed after a freeze: %v", agent.got())
				}
				time.Sleep(20 * time.Millisecond) // the thaw of a hung-up agent is retried in the background
			}
			if tc.wantCons == api.ConsistencyFilesystem && ms.FrozenMicros <= 0 {
				t.Fatalf("frozen time not recorded: %+v", ms)
			}
		})
	}
}

// TestMachineThawAfterKill: a guest frozen when cairnd died is thawed by
// the next start. A graceful stop thaws at once (the task's context ends);
// a kill -9 leaves the durable freeze record behind, which is what this
// test writes before starting cairnd again.
func TestMachineThawAfterKill(t *testing.T) {
	in, dir := twoDiskMachine(t, 30*time.Second)
	sock := filepath.Join(dir, "vm.sock")
	agent := startFakeAgent(t, sock, `{"return": 2}`)
	if _, err := in.Client.UpdateMachine(context.Background(), "vm", api.UpdateMachineRequest{AgentSocket: &sock}); err != nil {
		t.Fatal(err)
	}
	cfg := in.Config
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{Dir: filepath.Join(cfg.DataDir, "store")})
	if err != nil {
		t.Fatal(err)
	}
	// Machine vm is the first machine: id 1.
	rec := map[string]any{"machine": "vm", "agent_socket": sock, "since": time.Now()}
	if err := st.PutRecord(store.FreezeKey(1), rec); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	in2 := daemontest.Start(t, &cfg)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.Join(agent.got(), " "), "guest-fsfreeze-thaw") {
		if time.Now().After(deadline) {
			t.Fatalf("the next start did not thaw the guest: %v", agent.got())
		}
		time.Sleep(20 * time.Millisecond) // the thaw runs in the background
	}
	// The record is gone once thawed: a second restart sends nothing.
	cfg2 := in2.Config
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err := in2.Stop(); err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(store.Options{Dir: filepath.Join(cfg2.DataDir, "store")})
		if err != nil {
			t.Fatal(err)
		}
		var left map[string]any
		gerr := st.GetRecord(store.FreezeKey(1), &left)
		st.Close()
		if gerr != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the freeze record outlived the thaw")
		}
		in2 = daemontest.Start(t, &cfg2)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMachineDeleteWithDisks: deleting a machine with its disks refuses
// before deleting anything when one disk cannot go (its own snapshots
// without with_snapshots, a connected client without force), and with
// with_snapshots takes the disks' own snapshots too.
func TestMachineDeleteWithDisks(t *testing.T) {
	need(t, "nbdsh")
	in, _ := twoDiskMachine(t, time.Second)
	ctx := context.Background()
	c := in.Client
	waitSnapshot(t, c, "data", mustSnapshot(t, c, "data", "own"))
	err := c.DeleteMachine(ctx, "vm", api.DeleteMachineOptions{WithDisks: true})
	wantAPIError(t, err, 409, api.CodeFailedPrecondition, `machine "vm" is kept`, `"data" has 1 snapshot`)
	holdExport(t, in, "root")
	err = c.DeleteMachine(ctx, "vm", api.DeleteMachineOptions{WithDisks: true, WithSnapshots: true})
	wantAPIError(t, err, 409, api.CodeInUse, `machine "vm" is kept`, "NBD client")
	for _, name := range []string{"root", "data"} {
		if _, err := c.Disk(ctx, name); err != nil {
			t.Fatalf("a refused machine delete took disk %s: %v", name, err)
		}
	}
	if _, err := c.Machine(ctx, "vm"); err != nil {
		t.Fatalf("a refused machine delete took the machine: %v", err)
	}
	if err := c.DeleteMachine(ctx, "vm", api.DeleteMachineOptions{WithDisks: true, WithSnapshots: true, Force: true}); err != nil {
		t.Fatal(err)
	}
	if list, err := c.Disks(ctx); err != nil || len(list) != 0 {
		t.Fatalf("disks after deleting the machine with them: %+v, %v", list, err)
	}
}
