// Package vmtest boots the test VM of scripts/test/vm from Go tests: Debian's
// kernel under qemu-system-x86_64 (TCG: this machine has no KVM), a busybox
// initramfs with e2fsprogs and qemu-ga, no network, disks served over NBD,
// the guest agent and a control channel on host Unix sockets. The guest runs
// a test script and reports a verdict; scripts/test/vm/README.md describes
// the guest side (the script's helpers, where disks and ports appear).
//
// A VM is scripts/test/vm/run.sh running in the background: this package
// adds only what Go tests need around it (typed options, waiting for the
// guest's events, the control channel, skipping where no VM can be had), so
// shell and Go tests boot the very same guest.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Config says what one boot holds.
type Config struct {
	// Script is the guest test script's text (busybox sh), sourced after
	// the harness's lib.sh; its exit status is the verdict.
	Script string
	// Files are copied into the guest (a dynamically linked file brings its
	// libraries).
	Files []File
	// Modules are kernel modules put into the guest's /lib/modules tree
	// (with their dependencies), not loaded.
	Modules []string
	// Env is the script's extra environment.
	Env map[string]string
	// NBDSocket is the NBD server's Unix socket for Disks.
	NBDSocket string
	// NBDReconnect is qemu's reconnect-delay for the NBD disks (whole
	// seconds): how long the guest's requests wait for the server to come
	// back after it went away. Zero: they fail at once.
	NBDReconnect time.Duration
	// Disks are the guest's virtio disks, in order (vda, vdb, ...).
	Disks []Disk
	// Agent wires qemu-ga's virtio-serial port to VM.AgentSocket; the guest
	// starts qemu-ga on it unless Env["CAIRN_VM_AGENT"] is "manual".
	Agent bool
	// Control wires the control channel (VM.Send, VM.Recv).
	Control bool
	// Timeout bounds the whole boot (default 5 minutes).
	Timeout time.Duration
	// MemoryMiB is the guest's memory (default 512).
	MemoryMiB int
}

// File is a host file to copy into the guest.
type File struct {
	Src string
	// Dst is the absolute path in the guest; empty means
	// /cairn/bin/BASENAME (on the script's PATH).
	Dst string
}

// Disk is one virtio disk: an NBD export (served from Config.NBDSocket),
// or a raw file on the host. The guest finds it as /dev/disk/cairn/EXPORT
// or /dev/disk/cairn/BASENAME.
type Disk struct {
	Export   string
	File     string
	ReadOnly bool
}

// Result is how a boot ended.
type Result struct {
	// Pass is true when the guest printed CAIRN-VM-RESULT: PASS.
	Pass bool
	// Verdict is run.sh's verdict line: the guest's PASS or FAIL <reason>,
	// or NONE (timeout, crash) from the harness.
	Verdict string
	// Output is all run.sh printed: on a failure, the console log's tail.
	Output string
	// Err is set when run.sh could not run at all.
	Err error
}

// VM is one boot in progress.
type VM struct {
	// Dir holds the boot's sockets and scratch files (the console log is
	// Log, Dir/console.log); kept when the test fails.
	Dir           string
	Log           string
	AgentSocket   string
	ControlSocket string

	cmd    *exec.Cmd
	output bytes.Buffer
	done   chan struct{} // closed when run.sh has exited; result is set then
	result Result

	ctl    net.Conn // the control channel, connected on first use
	ctlBuf *bufio.Reader
}

// exit codes of run.sh and setup.sh
const (
	exitFail        = 1
	exitNoVerdict   = 2
	exitUnavailable = 77
)

// Require skips t when no VM can be had here (qemu-system-x86_64 or
// Debian's kernel package missing: setup.sh says which), and prepares the
// cached kernel and initramfs otherwise. Start calls it; a test that builds
// something for the guest first calls it before.
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no test VM here: qemu-system-x86_64 is missing (scripts/deps.sh installs qemu-system-x86)")
	}
	setup := filepath.Join(repoRoot(t), "scripts", "test", "vm", "setup.sh")
	var stderr bytes.Buffer
	cmd := exec.Command(setup)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if exitCode(err) == exitUnavailable {
			t.Skipf("no test VM here: %s", strings.TrimSpace(stderr.String()))
		}
		t.Fatalf("scripts/test/vm/setup.sh: %v: %s", err, stderr.String())
	}
}

// Start boots a VM for t and returns at once; the boot is ended when t
// ends, and its directory removed unless t failed. It skips t when the
// VM cannot be had here (qemu-system-x86_64 or Debian's kernel package
// missing: setup.sh says which).
func Start(t testing.TB, cfg Config) *VM {
	t.Helper()
	Require(t)
	vmDir := filepath.Join(repoRoot(t), "scripts", "test", "vm")
	// Not t.TempDir: a Unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "cairn-vmtest.")
	if err != nil {
		t.Fatal(err)
	}
	vm := &VM{Dir: dir, Log: filepath.Join(dir, "console.log"), done: make(chan struct{})}
	script := filepath.Join(dir, "guest.sh")
	if err := os.WriteFile(script, []byte(cfg.Script), 0o644); err != nil {
		t.Fatal(err)
	}
	args := vm.args(cfg, script)
	vm.cmd = exec.Command(filepath.Join(vmDir, "run.sh"), args...)
	vm.cmd.Stdout = &vm.output
	vm.cmd.Stderr = &vm.output
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start scripts/test/vm/run.sh: %v", err)
	}
	go vm.wait()
	t.Cleanup(func() {
		vm.stop()
		if vm.ctl != nil {
			vm.ctl.Close()
		}
		if t.Failed() {
			t.Logf("test VM files kept in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return vm
}

func (vm *VM) args(cfg Config, script string) []string {
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	args := []string{"--script", script, "--log", vm.Log, "--work", filepath.Join(vm.Dir, "work"),
		"--timeout", fmt.Sprint(int(timeout.Seconds()))}
	if cfg.MemoryMiB > 0 {
		args = append(args, "--mem", fmt.Sprint(cfg.MemoryMiB))
	}
	for _, f := range cfg.Files {
		spec := f.Src
		if f.Dst != "" {
			spec += ":" + f.Dst
		}
		args = append(args, "--file", spec)
	}
	for _, m := range cfg.Modules {
		args = append(args, "--module", m)
	}
	for k, v := range cfg.Env {
		args = append(args, "--env", k+"="+v)
	}
	if cfg.NBDSocket != "" {
		args = append(args, "--nbd", cfg.NBDSocket)
	}
	if cfg.NBDReconnect > 0 {
		args = append(args, "--nbd-reconnect", fmt.Sprint(int(cfg.NBDReconnect.Seconds())))
	}
	for _, d := range cfg.Disks {
		flag, target := "--disk", d.Export
		if d.File != "" {
			flag, target = "--disk-file", d.File
		}
		if d.ReadOnly {
			flag += "-ro"
		}
		args = append(args, flag, target)
	}
	if cfg.Agent {
		vm.AgentSocket = filepath.Join(vm.Dir, "qga.sock")
		args = append(args, "--agent", vm.AgentSocket)
	}
	if cfg.Control {
		vm.ControlSocket = filepath.Join(vm.Dir, "ctl.sock")
		args = append(args, "--ctl", vm.ControlSocket)
	}
	return args
}

// wait collects run.sh's end into vm.result.
func (vm *VM) wait() {
	defer close(vm.done)
	err := vm.cmd.Wait()
	out := vm.output.String()
	vm.result = Result{Output: out, Verdict: verdictLine(out)}
	switch code := exitCode(err); {
	case err == nil:
		vm.result.Pass = true
	case code == exitFail || code == exitNoVerdict:
	case code == exitUnavailable:
		vm.result.Err = fmt.Errorf("the test VM cannot be had: %s", strings.TrimSpace(out))
	default:
		vm.result.Err = fmt.Errorf("scripts/test/vm/run.sh: %v: %s", err, out)
	}
}

// duration is the " (9s)" run.sh adds to the guest's verdict.
var duration = regexp.MustCompile(` \([0-9]+s\)$`)

// verdictLine is the CAIRN-VM-RESULT line run.sh printed, without its
// "(Ns)" duration.
func verdictLine(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "CAIRN-VM-RESULT: "); ok {
			return duration.ReplaceAllString(v, "")
		}
	}
	return ""
}

// stop ends a boot still running: SIGTERM lets run.sh stop qemu; the whole
// process group is killed if that takes more than 10 s.
func (vm *VM) stop() {
	select {
	case <-vm.done:
		return
	default:
	}
	_ = vm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-vm.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
		<-vm.done
	}
}

// Wait waits until the guest has powered off (or the timeout ended it).
func (vm *VM) Wait() Result {
	<-vm.done
	return vm.result
}

// RequirePass waits for the guest and fails t unless it passed, with the
// verdict and the console log's tail.
func (vm *VM) RequirePass(t testing.TB) {
	t.Helper()
	r := vm.Wait()
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if !r.Pass {
		t.Fatalf("the test VM did not pass: %s\n%s", r.Verdict, r.Output)
	}
}

// WaitEvent waits until the guest announces name (lib.sh's vm_event name).
// It fails when the guest ends first or ctx ends.
func (vm *VM) WaitEvent(ctx context.Context, name string) error {
	want := "CAIRN-VM-EVENT: " + name
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		finished := false
		select {
		case <-vm.done:
			finished = true // one last look: the event may be in the log
		default:
		}
		log, err := os.ReadFile(vm.Log)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		for _, line := range strings.Split(string(log), "\n") {
			if strings.TrimRight(line, "\r") == want {
				return nil
			}
		}
		if finished {
			return fmt.Errorf("the guest ended without event %q: %s", name, vm.result.Verdict)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the guest's event %q: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}

// Send writes line to the guest on the control channel (the script reads
// it with vm_recv).
func (vm *VM) Send(ctx context.Context, line string) error {
	if err := vm.connectControl(ctx); err != nil {
		return err
	}
	_, err := vm.ctl.Write([]byte(line + "\n"))
	return err
}

// Recv reads the next line the guest wrote with vm_send.
func (vm *VM) Recv(ctx context.Context) (string, error) {
	if err := vm.connectControl(ctx); err != nil {
		return "", err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = vm.ctl.SetReadDeadline(d)
		defer vm.ctl.SetReadDeadline(time.Time{})
	}
	line, err := vm.ctlBuf.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read the control channel: %w", err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// connectControl connects to the control socket, once qemu listens on it.
func (vm *VM) connectControl(ctx context.Context) error {
	if vm.ctl != nil {
		return nil
	}
	if vm.ControlSocket == "" {
		return errors.New("the VM has no control channel (Config.Control)")
	}
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", vm.ControlSocket)
		if err == nil {
			vm.ctl, vm.ctlBuf = c, bufio.NewReader(c)
			return nil
		}
		select {
		case <-vm.done:
			return fmt.Errorf("the guest ended before the control channel connected: %s", vm.result.Verdict)
		case <-ctx.Done():
			return fmt.Errorf("connect the control channel: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StaticBinary builds the main package pkg (such as "./cmd/cairnd",
// relative to the repository's root) with CGO_ENABLED=0, statically linked
// as the busybox guest needs, into a directory t removes.
func StaticBinary(t testing.TB, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", out, pkg)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
	return out
}

// repoRoot is the directory holding the module's go.mod, found from the
// test's working directory (its package directory).
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "scripts", "test", "vm", "run.sh")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("vmtest: no scripts/test/vm/run.sh above the working directory")
		}
		dir = parent
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
