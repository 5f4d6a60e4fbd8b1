"""Helpers for Cairn's end-to-end tests: start and kill cairnd, call its
control API over the Unix socket, write through NBD while keeping an
oracle of the expected content, and compare exports with independent
clients (nbdcopy, qemu-img, cmp, nbdinfo).

Runs under /usr/bin/python3 (Debian's python3-libnbd: `import nbd`).
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import nbd

BLOCK = 64 * 1024


# ---------------------------------------------------------------- reporting

class Report:
    """Counts checks and prints one PASS or FAIL line per check."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.t0 = time.monotonic()

    def ok(self, msg):
        self.passed += 1
        print(f"PASS {msg}", flush=True)

    def bad(self, msg):
        self.failed += 1
        print(f"FAIL {msg}", flush=True)

    def check(self, cond, msg, detail=""):
        if cond:
            self.ok(msg)
        else:
            self.bad(f"{msg}: {detail}" if detail else msg)
        return cond

    def info(self, msg):
        print(f"     {msg}", flush=True)

    def done(self):
        secs = time.monotonic() - self.t0
        print(f"{self.name}: {self.passed} passed, {self.failed} failed ({secs:.0f}s)", flush=True)
        return 0 if self.failed == 0 and self.passed > 0 else 1


class Fatal(Exception):
    """A failure after which the test cannot go on."""


# ---------------------------------------------------------------- daemon

class Daemon:
    """One cairnd on a data directory, started and killed by the test."""

    def __init__(self, binary, data, log, args=(), pidfile=None):
        self.binary = binary
        self.data = data
        self.log = log
        self.args = list(args)
        self.pidfile = pidfile
        self.proc = None
        self.api = API(os.path.join(data, "cairn.sock"))
        self.nbd_sock = os.path.join(data, "nbd.sock")

    def uri(self, export):
        return f"nbd+unix:///{urllib.parse.quote(export, safe='@')}?socket={self.nbd_sock}"

    def start(self, timeout=60):
        """Starts cairnd and waits for its "cairnd ready" log line."""
        os.makedirs(self.data, exist_ok=True)
        with open(self.log, "ab") as f:
            start = f.tell()
            self.proc = subprocess.Popen([self.binary, "--data-dir", self.data] + self.args,
                                         stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        if self.pidfile:
            with open(self.pidfile, "w") as f:
                f.write(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(start)
                if b"cairnd ready" in f.read():
                    return time.monotonic() - (deadline - timeout)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise Fatal(f"cairnd did not become ready (exit {self.proc.poll()}): {self.log_tail(start)}")

    def log_tail(self, start=0, n=15):
        with open(self.log, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
        if self.proc:
            self.proc.wait()

    def stop(self):
        """SIGTERM; cairnd must exit 0."""
        if not self.proc:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------- API

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("cairn", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class APIError(Exception):
    def __init__(self, method, path, status, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body}")
        self.status = status
        self.body = body


class API:
    def __init__(self, sock):
        self.sock = sock

    def call(self, method, path, body=None, timeout=60):
        """Returns (status, decoded JSON or None). Raises OSError when
        cairnd cannot be reached."""
        c = UnixHTTPConnection(self.sock, timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
            try:
                out = json.loads(raw) if raw else None
            except ValueError:
                out = raw.decode(errors="replace")
            return r.status, out
        finally:
            c.close()

    def req(self, method, path, body=None, timeout=60):
        status, out = self.call(method, path, body, timeout)
        if status >= 300:
            raise APIError(method, path, status, out)
        return out

    @staticmethod
    def q(s):
        return urllib.parse.quote(s, safe="")

    def create_disk(self, name, size, block_size=None):
        body = {"name": name, "size": size}
        if block_size:
            body["block_size"] = block_size
        return self.req("POST", "/v1/disks", body)

    def snapshot(self, disk, name):
        return self.req("POST", f"/v1/disks/{self.q(disk)}/snapshots", {"name": name})

    def snapshots(self, disk):
        return self.req("GET", f"/v1/disks/{self.q(disk)}/snapshots")

    def get_snapshot(self, disk, name):
        """The snapshot, or None when it does not exist."""
        status, out = self.call("GET", f"/v1/disks/{self.q(disk)}/snapshots/{self.q(name)}")
        if status == 404:
            return None
        if status >= 300:
            raise APIError("GET", f"snapshot {disk}@{name}", status, out)
        return out

    def delete_snapshot(self, disk, name, force=False):
        path = f"/v1/disks/{self.q(disk)}/snapshots/{self.q(name)}" + ("?force=true" if force else "")
        return self.req("DELETE", path)

    def rollback(self, disk, name, force=False):
        path = f"/v1/disks/{self.q(disk)}/snapshots/{self.q(name)}/rollback" + ("?force=true" if force else "")
        return self.req("POST", path)

    def rollback_idle(self, disk, name, timeout=5):
        """Starts a rollback once cairnd no longer counts the live export's
        clients: one that has just disconnected is counted until its
        connection's goroutine ends, so a 409 in_use is retried briefly."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.rollback(disk, name)
            except APIError as e:
                if e.status != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def changes(self, disk, frm, to=""):
        return self.req("GET", f"/v1/disks/{self.q(disk)}/changes?from={self.q(frm)}&to={self.q(to)}")

    def store(self):
        return self.req("GET", "/v1/store")

    def wait_task(self, task, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            t = self.req("GET", f"/v1/tasks/{self.q(task['id'])}")
            if t["state"] not in ("running", "queued"):
                return t
            if time.monotonic() > deadline:
                raise Fatal(f"task {task['id']} ({t['kind']}) still running after {timeout}s: {t}")
            time.sleep(0.05)

    def verify(self, disk="", timeout=300):
        """Runs a verify task to its end; returns the task."""
        return self.wait_task(self.req("POST", "/v1/verify", {"disk": disk}), timeout)

    def wait_snapshot(self, disk, name, timeout=300):
        """Waits until the snapshot leaves `copying`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.get_snapshot(disk, name)
            if s is None:
                raise Fatal(f"snapshot {disk}@{name} is gone")
            if s["state"] != "copying":
                return s
            if time.monotonic() > deadline:
                raise Fatal(f"snapshot {disk}@{name} still copying after {timeout}s: {s}")
            time.sleep(0.05)


def verify_clean(rep, api, what, disk=""):
    """Runs verify and reports whether it found no faults."""
    t = api.verify(disk)
    res = t.get("result") or {}
    faults = res.get("faults")
    good = t["state"] == "succeeded" and faults == []
    rep.check(good, f"verify {what}: {res.get('chunks_checked')} chunks, {res.get('entries_checked')} entries, no faults",
              f"task {t['state']} error={t.get('error')!r} faults={(faults or [])[:10]}")
    return good


# ---------------------------------------------------------------- tools

def run(cmd, timeout=600):
    """Runs a command; returns (exit code, combined output)."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace").strip()


def export_to_file(uri, path):
    """Copies an NBD export into a local file with nbdcopy."""
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb"):
        pass
    rc, out = run(["nbdcopy", "--", uri, path])
    if rc != 0:
        raise Fatal(f"nbdcopy {uri} {path}: exit {rc}: {out}")


def first_diffs(a, b, limit=5, step=BLOCK):
    """Offsets of the first blocks where two files differ (for messages)."""
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while len(out) < limit:
            x, y = fa.read(step), fb.read(step)
            if not x and not y:
                break
            if x != y:
                out.append(off)
            off += step
    return out


def same_files(a, b):
    """cmp a b: (equal, message)."""
    rc, out = run(["cmp", a, b])
    if rc == 0:
        return True, ""
    return False, f"{out} (differing 64 KiB blocks at {first_diffs(a, b)})"


def compare_export(uri, expected, scratch):
    """Reads an export with nbdcopy and compares it with cmp."""
    export_to_file(uri, scratch)
    try:
        return same_files(scratch, expected)
    finally:
        os.unlink(scratch)


def qemu_compare(a, b, fmt_a="raw", fmt_b="raw"):
    """qemu-img compare (content only: a hole equals zeros): (equal, output)."""
    rc, out = run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, a, b])
    return rc == 0, out


def dirty_blocks_nbdinfo(uri, bitmap, size, block=BLOCK):
    """The blocks nbdinfo --map=qemu:dirty-bitmap:BITMAP reports dirty."""
    rc, out = run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{bitmap}", uri])
    if rc != 0:
        raise Fatal(f"nbdinfo --map=qemu:dirty-bitmap:{bitmap} {uri}: exit {rc}: {out}")
    return _blocks_from_map(json.loads(out), "offset", lambda e: e["type"] & 1, size, block)


def dirty_blocks_qemu_img(sock, export, bitmap, size, block=BLOCK):
    """The blocks qemu-img map --image-opts x-dirty-bitmap= reports dirty
    (qemu presents a dirty block as "data": false)."""
    opts = (f"driver=nbd,server.type=unix,server.path={sock},export={export},"
            f"x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}")
    rc, out = run(["qemu-img", "map", "--output=json", "--image-opts", opts])
    if rc != 0:
        raise Fatal(f"qemu-img map x-dirty-bitmap={bitmap} {export}: exit {rc}: {out}")
    return _blocks_from_map(json.loads(out), "start", lambda e: not e["data"], size, block)


def _blocks_from_map(extents, start, dirty, size, block):
    out = set()
    for e in extents:
        if not dirty(e):
            continue
        off, n = e[start], e["length"]
        if off % block or (n % block and off + n != size):
            raise Fatal(f"dirty extent {off}+{n} is not block-aligned")
        out.update(range(off // block, (off + n + block - 1) // block))
    return out


def blocks_from_changes(ch, block=BLOCK):
    out = set()
    for e in ch["extents"]:
        out.update(range(e["offset"] // block, (e["offset"] + e["length"] + block - 1) // block))
    return out


def describe_set_diff(got, want, limit=8):
    extra = sorted(got - want)
    missing = sorted(want - got)
    return f"{len(got)} blocks reported, {len(want)} expected; extra {extra[:limit]}, missing {missing[:limit]}"


# ---------------------------------------------------------------- writer

def blocks_of(off, n, block=BLOCK):
    if n <= 0:
        return range(0)
    return range(off // block, (off + n - 1) // block + 1)


class Writer:
    """Writes, trims and zeroes through one NBD connection and applies each
    acknowledged operation to a local oracle file, which therefore holds
    what the disk must read as. `touched` collects the blocks written since
    the last mark(); `unflushed` the byte ranges acknowledged after the last
    acknowledged FLUSH; `pending` is the operation sent and not (yet)
    acknowledged."""

    def __init__(self, uri, oracle, size, rng, block=BLOCK):
        self.uri = uri
        self.size = size
        self.rng = rng
        self.block = block
        # Unbuffered: every acknowledged operation is in the file at once,
        # for other readers of the path (checks, copies) too.
        self.oracle = open(oracle, "r+b", buffering=0)
        self.touched = set()
        self.unflushed = []
        self.pending = None
        self.ops = {"write": 0, "zero": 0, "trim": 0, "flush": 0}
        # A few block-sized buffers written again and again at aligned
        # offsets, so chunks are shared (dedup) across blocks and snapshots.
        self.library = [rng.randbytes(block) for _ in range(4)] + [bytes([7]) * block]
        self.h = None
        self.connect()

    def connect(self):
        self.h = nbd.NBD()
        self.h.connect_uri(self.uri)
        if self.h.get_size() != self.size:
            raise Fatal(f"{self.uri}: size {self.h.get_size()}, want {self.size}")

    def close(self):
        self.oracle.close()
        if self.h is not None:
            try:
                self.h.shutdown()
            except nbd.Error:
                pass
            self.h = None  # the handle closes when the last reference goes

    def mark(self):
        t, self.touched = self.touched, set()
        return t

    def _apply(self, off, data):
        self.oracle.seek(off)
        self.oracle.write(data)
        self.touched.update(blocks_of(off, len(data), self.block))
        self.unflushed.append((off, len(data)))

    def _extent(self):
        """A random extent: mostly small and unaligned, some large."""
        r = self.rng.random()
        if r < 0.45:
            n = self.rng.randint(1, 16 * 1024)
        elif r < 0.8:
            n = self.rng.randint(16 * 1024, 256 * 1024)
        else:
            n = self.rng.randint(256 * 1024, 2 * 1024 * 1024)
        if self.rng.random() < 0.3:  # aligned to 4 KiB
            n = max(4096, n // 4096 * 4096)
        n = min(n, self.size)
        off = self.rng.randrange(0, self.size - n + 1)
        if self.rng.random() < 0.3:
            off = off // 4096 * 4096
        return off, n

    def _data(self, n):
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randbytes(n)
        if r < 0.85:  # compressible
            pat = self.rng.randbytes(self.rng.randint(1, 64))
            return (pat * (n // len(pat) + 1))[:n]
        return bytes([self.rng.randrange(1, 256)]) * n

    def _op(self, kind, off, data, send):
        """Sends one operation; once acknowledged, the oracle gets data."""
        self.pending = (kind, off, data)
        send()
        self.pending = None
        self.ops[kind] += 1
        if kind == "flush":
            self.unflushed = []
        else:
            self._apply(off, data)

    def write(self, off, data):
        self._op("write", off, data, lambda: self.h.pwrite(data, off))

    def zero(self, off, n):
        self._op("zero", off, bytes(n), lambda: self.h.zero(n, off))

    def trim(self, off, n):
        self._op("trim", off, bytes(n), lambda: self.h.trim(n, off))

    def flush(self):
        self._op("flush", 0, b"", self.h.flush)

    def dedup_write(self):
        """A library block at a block-aligned offset."""
        b = self.rng.randrange(self.size // self.block)
        self.write(b * self.block, self.rng.choice(self.library))

    def random_op(self):
        r = self.rng.random()
        if r < 0.6:
            off, n = self._extent()
            self.write(off, self._data(n))
        elif r < 0.7:
            self.dedup_write()
        elif r < 0.8:
            off, n = self._extent()
            self.zero(off, n)
        elif r < 0.9:
            off, n = self._extent()
            self.trim(off, n)
        else:
            self.flush()

    def fill(self, fraction, chunk=1024 * 1024):
        """Writes random data over about `fraction` of the disk in large
        writes (to give copy-out, copy-on-write and rollback work)."""
        n = self.size // chunk
        for i in self.rng.sample(range(n), max(1, int(n * fraction))):
            data = self.rng.randbytes(chunk) if self.rng.random() < 0.8 else self._data(chunk)
            self.write(i * chunk, data)

    def sync_oracle(self):
        self.oracle.flush()

    def snapshot_copy(self, dest):
        """Copies the oracle (what the disk holds now) to dest."""
        self.oracle.flush()
        shutil.copyfile(self.oracle.name, dest)


def rng_from_env(rep, var="SEED"):
    seed = int(os.environ.get(var) or random.SystemRandom().randrange(1 << 31))
    rep.info(f"seed {seed} (rerun with {var}={seed})")
    return random.Random(seed)


def main(fn, name):
    """Runs fn(rep) and exits with the report's status."""
    rep = Report(name)
    try:
        fn(rep)
    except Fatal as e:
        rep.bad(f"fatal: {e}")
    except Exception as e:  # a bug in the test or an unexpected answer: fail, with the trace
        import traceback
        traceback.print_exc()
        rep.bad(f"unexpected {type(e).__name__}: {e}")
    sys.exit(rep.done())
