package nbd_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Edge cases driven by libnbd (nbdsh, and python3-libnbd under
// /usr/bin/python3). Strict mode is turned off where libnbd would
// otherwise refuse a bad request itself instead of sending it.

// debianPython is the interpreter python3-libnbd is installed for (the
// python3 first on PATH may be another one, which would break nbdsh too).
const debianPython = "/usr/bin/python3"

// needLibnbdPython skips unless debianPython can import nbd.
func needLibnbdPython(t *testing.T) {
	t.Helper()
	if err := exec.Command(debianPython, "-c", "import nbd").Run(); err != nil {
		t.Skipf("python3-libnbd is not importable by %s (scripts/deps.sh installs it): %v", debianPython, err)
	}
}

// nbdsh runs a python script in nbdsh (python3 -m nbd, which is what the
// nbdsh wrapper runs, with the interpreter pinned), with the fixture's
// URIs in the environment (DISK, RO, MEM, SOCK) and SIZE set.
func nbdsh(t *testing.T, f *fixture, script string) {
	t.Helper()
	needLibnbdPython(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, debianPython, "-m", "nbd", "-c", "import os, errno\n"+script)
	cmd.Env = append(os.Environ(), "DISK="+f.uri("disk"), "RO="+f.uri("ro"), "MEM="+f.uri("mem"), "SOCK="+f.sock, "SIZE=16777216")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
}

func TestNbdshEdgeCases(t *testing.T) {
	tests := []struct {
		name, script string
	}{
		{"out-of-range read", `
h.set_strict_mode(0)
h.connect_uri(os.environ["DISK"])
for off, n in [(int(os.environ["SIZE"]), 512), (int(os.environ["SIZE"]) - 512, 1024), (1 << 60, 512)]:
    try:
        h.pread(n, off)
        raise SystemExit("read of %d bytes at %d succeeded" % (n, off))
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, e
assert h.pread(512, 0) == bytes(512)
`},
		{"oversized request", `
h.set_strict_mode(0)
h.connect_uri(os.environ["DISK"])
try:
    h.pread(33 << 20, 0)
    raise SystemExit("33 MiB read succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
try:
    h.pwrite(bytes(33 << 20), 0)
    raise SystemExit("33 MiB write succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
h.pwrite(b"after" * 100, 0)
assert h.pread(500, 0) == b"after" * 100
`},
		{"misaligned request", `
h.set_strict_mode(0)
h.connect_uri(os.environ["MEM"])
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
for n, off in [(100, 0), (512, 100)]:
    try:
        h.pread(n, off)
        raise SystemExit("misaligned read succeeded")
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, e
h.pread(512, 512)
`},
		{"read-only export refuses writes", `
h.set_strict_mode(0)
h.connect_uri(os.environ["RO"])
assert h.is_read_only()
for op in (lambda: h.pwrite(b"x" * 4096, 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        op()
        raise SystemExit("write to a read-only export succeeded")
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, e
assert h.pread(4096, 0) == b"\xab" * 4096
`},
		{"NBD_OPT_INFO and friends", `
h.set_opt_mode(True)
h.connect_uri(os.environ["MEM"])
h.opt_info()
assert h.get_size() == int(os.environ["SIZE"]), h.get_size()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
assert not h.is_read_only() and h.can_flush() and h.can_trim() and h.can_zero() and h.can_fast_zero()
assert not h.can_multi_conn()
ctxs = []
h.opt_list_meta_context(lambda name: ctxs.append(name))
assert sorted(ctxs) == ["base:allocation", "qemu:dirty-bitmap:x"], ctxs
exports = []
h.opt_list(lambda name, desc: exports.append((name, desc)))
assert exports == [("disk", "test disk"), ("mem", ""), ("ro", "read-only disk")], exports
h.set_export_name("ro")
h.opt_info()
assert h.is_read_only()
h.set_export_name("nope")
try:
    h.opt_info()
    raise SystemExit("NBD_OPT_INFO of an unknown export succeeded")
except nbd.Error:
    pass
h.set_export_name("disk")
h.add_meta_context("base:allocation")
h.opt_go()
assert h.can_multi_conn() and h.can_meta_context("base:allocation")
seen = []
h.block_status(65536, 8 << 20, lambda ctx, off, entries, err: seen.append((ctx, entries)))
assert seen == [("base:allocation", [65536, 3])], seen
`},
		{"structured read reports holes", `
h.connect_uri(os.environ["MEM"])
h.pwrite(b"\x01" * 4096, 65536)
chunks = []
buf = h.pread_structured(256 << 10, 0, lambda sub, off, status, err: chunks.append((off, len(sub), status)))
assert buf[65536:69632] == b"\x01" * 4096 and buf.count(0) == (256 << 10) - 4096
assert chunks == [(0, 65536, nbd.READ_HOLE), (65536, 4096, nbd.READ_DATA), (69632, (256 << 10) - 69632, nbd.READ_HOLE)], chunks
`},
	}
	f := newFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { nbdsh(t, f, tt.script) })
	}
}

// TestClientVanishesMidRequest: a python3-libnbd client queues writes and
// exits without waiting for the replies; the server answers into the
// void, drops the connection, releases the export and serves others.
func TestClientVanishesMidRequest(t *testing.T) {
	needLibnbdPython(t)
	f := newFixture(t)
	script := `
import nbd, os
h = nbd.NBD()
h.connect_uri(os.environ["DISK"])
buf = nbd.Buffer.from_bytearray(bytearray(b"\x07" * (1 << 20)))
for i in range(16):
    h.aio_pwrite(buf, i << 20)
h.aio_pread(nbd.Buffer(1 << 20), 0)
os._exit(0)
`
	cmd := exec.Command(debianPython, "-c", script)
	cmd.Env = append(os.Environ(), "DISK="+f.uri("disk"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	waitFor(t, "the server to drop the vanished client", func() bool {
		return len(f.srv.Connections()) == 0 && f.exports.OpenCount("disk") == 0
	})
	nbdsh(t, f, `
h.connect_uri(os.environ["DISK"])
h.pwrite(b"ok" * 2048, 0)
assert h.pread(4096, 0) == b"ok" * 2048
`)
	if out := run(t, "nbdinfo", f.uri("disk")); !strings.Contains(out, "export-size: 16777216") {
		t.Fatalf("nbdinfo after the vanished client:\n%s", out)
	}
}
