package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBoot boots the real VM once: two file disks in order (one read-only),
// the script's environment, a copied file,
// a dynamically linked binary with its libraries (lsblk, whose libsmartcols
// and libmount the base initramfs lacks), an extra kernel module loaded from
// the tree (brd), an event, and the control channel both ways.
func TestBoot(t *testing.T) {
	Require(t)
	dir := t.TempDir()
	payload := filepath.Join(dir, "payload.txt")
	if err := os.WriteFile(payload, []byte("cairn payload 42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scratch, golden := filepath.Join(dir, "scratch.raw"), filepath.Join(dir, "golden.raw")
	if err := os.WriteFile(scratch, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(golden, append([]byte("GOLDEN"), make([]byte, 1<<20-6)...), 0o644); err != nil {
		t.Fatal(err)
	}
	vm := Start(t, Config{
		Script: `
vm_check "scratch.raw is vda" test "$(vm_disk scratch.raw)" = /dev/vda
vm_check "golden.raw is vdb" test "$(vm_disk golden.raw)" = /dev/vdb
vm_check "golden.raw's bytes" test "$(head -c 6 /dev/vdb)" = GOLDEN
if echo x | dd of=/dev/vdb conv=fsync 2>/dev/null; then vm_fail "the read-only disk took a write"; fi
echo "written by the guest" | dd of=/dev/vda conv=fsync 2>/dev/null || vm_fail "write to scratch.raw"
test "$GREETING" = "it's here" || vm_fail "GREETING is '$GREETING'"
vm_check "the payload's content" grep -qx "cairn payload 42" /etc/payload.txt
vm_check "lsblk runs with its libraries" lsblk --version
vm_check "brd is in the modules tree" modprobe brd rd_nr=1 rd_size=1024
vm_check "/dev/ram0 exists" test -b /dev/ram0
vm_check "the static cairn runs" cairn disk create --help
vm_event ready
line=$(vm_recv 60) || vm_fail "nothing on the control channel"
vm_send "guest got: $line"
vm_recv 60 >/dev/null || vm_fail "no goodbye"
`,
		Files:   []File{{Src: payload, Dst: "/etc/payload.txt"}, {Src: "/usr/bin/lsblk"}, {Src: StaticBinary(t, "./cmd/cairn")}},
		Disks:   []Disk{{File: scratch}, {File: golden, ReadOnly: true}},
		Modules: []string{"brd"},
		Env:     map[string]string{"GREETING": "it's here"},
		Control: true,
		Timeout: 3 * time.Minute,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := vm.WaitEvent(ctx, "ready"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Wait().Output)
	}
	if err := vm.Send(ctx, "ping 1"); err != nil {
		t.Fatal(err)
	}
	got, err := vm.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != "guest got: ping 1" {
		t.Errorf("the guest answered %q, want %q", got, "guest got: ping 1")
	}
	if err := vm.Send(ctx, "bye"); err != nil {
		t.Fatal(err)
	}
	vm.RequirePass(t)
	if r := vm.Wait(); r.Verdict != "PASS" {
		t.Errorf("verdict %q, want PASS", r.Verdict)
	}
	got, err = readPrefix(scratch, len("written by the guest"))
	if err != nil || got != "written by the guest" {
		t.Errorf("scratch.raw starts with %q (%v), want the guest's write", got, err)
	}
	if got, _ := readPrefix(golden, 7); got != "GOLDEN\x00" {
		t.Errorf("golden.raw starts with %q: the read-only disk changed", got)
	}
}

// TestTimeout: a guest that never ends is killed at the timeout and the
// result says so (no verdict from the guest).
func TestTimeout(t *testing.T) {
	vm := Start(t, Config{Script: "sleep 600", Timeout: 2 * time.Second})
	r := vm.Wait()
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if r.Pass || r.Verdict != "NONE (killed after the 2s timeout)" {
		t.Fatalf("result %+v, want a timeout", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := vm.WaitEvent(ctx, "never"); err == nil || !strings.Contains(err.Error(), "ended without") {
		t.Errorf("WaitEvent after the end: %v, want the guest ended", err)
	}
}

func TestVerdictLine(t *testing.T) {
	for _, c := range []struct{ out, want string }{
		{"CAIRN-VM-RESULT: PASS (9s)\n", "PASS"},
		{"CAIRN-VM-RESULT: FAIL mkfs (x) failed (12s)\n--- console log\n", "FAIL mkfs (x) failed"},
		{"CAIRN-VM-RESULT: NONE (killed after the 2s timeout)\n", "NONE (killed after the 2s timeout)"},
		{"CAIRN-VM-RESULT: NONE (qemu exited 1 without a verdict after 5s)\n", "NONE (qemu exited 1 without a verdict after 5s)"},
		{"vm run: --script is required\n", ""},
	} {
		if got := verdictLine(c.out); got != c.want {
			t.Errorf("verdictLine(%q) = %q, want %q", c.out, got, c.want)
		}
	}
}

func readPrefix(path string, n int) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}
