"""The real guest agent in a real guest (test-vm-agent.sh, docs/machines.md).

A TCG VM (scripts/test/vm) boots with two virtio disks that a real cairnd
on this host serves over NBD (root: a root-like ext4; data: an ext4 with a
database-like file), and the real qemu-ga inside it on
org.qemu.guest_agent.0, which qemu binds to a Unix socket in cairnd's
agent_socket_dirs: the machine's agent_socket. In the guest
(vmagent-guest.sh) one writer per filesystem never stops writing and
fsyncing. The host talks to the guest over the harness's control channel.
qemu-ga's freeze only ever runs inside the VM.

What it checks:
1. The machine of the two disks; both writers make progress.
2. `cairn machine snapshot create vm NAME --consistency filesystem --wait`
   reaches filesystem and reports frozen_us. A write the guest issues
   while frozen completes only after the thaw: for that snapshot the
   machine's agent_socket is a relay (below) that passes every byte
   between cairnd and qemu-ga and holds cairnd's guest-fsfreeze-thaw for
   HOLD seconds. When qemu-ga's answer to the freeze passes (the guest is
   frozen), the host asks the guest to create a file on each filesystem;
   each dd must wait most of HOLD (guest clock) and answer only after the
   relay passed the thaw on (host clock), and frozen_us must count HOLD.
   It cannot pass by accident: a write the freeze did not stop returns in
   milliseconds, long before the held thaw; and without a freeze there is
   no freeze answer to start it.
3. Each member of each frozen snapshot, copied with qemu-img convert from
   its DISK@NAME export: needs_recovery is off, the journal is empty
   (dumpe2fs: "Journal start: 0"), `e2fsck -fn` is clean, and the writers'
   rounds in it lie between those counted before and after the request.
   The writes issued while frozen (part 2) are not in that snapshot.
   Each member of each crash-consistent snapshot taken under the same load
   (after the writers did two more rounds since the last freeze emptied
   the journal): needs_recovery is on and the journal holds transactions
   to replay (debugfs logdump); `e2fsck -fy` on a copy replays them and
   then `e2fsck -fn` is clean. ROUNDS (default 2) crash-consistent
   snapshots, and ROUNDS-1 more filesystem-consistent ones between them.
   (vmagent-guest.sh says why this load makes every crash-consistent
   member need recovery.) KEEP=1 keeps the members' images.
4. The failure paths, with `auto` (crash-consistent, saying why) and
   `filesystem` (fails with the reason), the guest's filesystems written
   to from the guest afterwards (and the agent asked, where it lives):
   qemu-ga stopped (SIGSTOP: never answers); qemu-ga killed before; qemu-ga
   killed inside guest-fsfreeze-freeze (its freeze hook); qemu-ga
   answering the freeze later than freeze_timeout (the hook sleeps, then
   it freezes for real: cairnd must thaw what froze after it gave up);
   garbage instead of the freeze's answer (the relay; the guest is frozen);
   qemu-ga killed while the guest is frozen (cairnd retries the thaw until
   a new qemu-ga answers); a missing socket; and cairnd killed (SIGKILL)
   while the guest is frozen: the next start thaws it (the durable freeze
   record), shown by a guest write that was blocked until then.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from cairntest import Daemon, Fatal, main, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vm"))
import vmctl  # noqa: E402  (the harness's guest agent client)

HOLD = 2.5            # seconds the relay holds cairnd's thaw (< cairnd's 5 s thaw timeout)
FREEZE_TIMEOUT = 3    # cairnd --freeze-timeout, seconds
MACHINE = "vm"


# ---------------------------------------------------------------- control channel

class Ctl:
    """The host's end of the harness's control channel (run.sh --ctl): one
    connection for the whole test; every line the guest sends is kept with
    the host's monotonic time of its arrival."""

    def __init__(self, path, timeout=60):
        self.sock = vmctl.connect(path, time.monotonic() + timeout)
        self.lines = []  # (arrival, line)
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                with self.cond:
                    self.lines.append((time.monotonic(), line.decode(errors="replace").strip()))
                    self.cond.notify_all()

    def send(self, line):
        self.sock.sendall(line.encode() + b"\n")

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait(self, match, since, timeout):
        """The first line from index since on for which match(words) holds,
        as (arrival, words); None after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = since
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if match(line.split()):
                        return t, line.split()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def ask(self, line, answer, timeout=30):
        """Sends line and waits for the guest's answer starting with answer."""
        since = self.mark()
        self.send(line)
        got = self.wait(lambda w: w[:len(answer.split())] == answer.split(), since, timeout)
        if got is None:
            raise Fatal(f"the guest did not answer '{line}' in {timeout}s")
        return got[1]


class Probe:
    """A `write TAG` in the guest: a file created with dd conv=fsync on
    each filesystem, answered when dd returns."""

    def __init__(self, ctl, tag):
        self.ctl, self.tag = ctl, tag
        self.since = ctl.mark()
        self.sent = time.monotonic()
        ctl.send(f"write {tag}")

    def wait(self, timeout):
        """{fs: (host arrival, guest seconds dd took, dd exit status)} for
        the filesystems that answered within timeout seconds (from now)."""
        out = {}
        deadline = time.monotonic() + timeout
        while len(out) < 2:
            got = self.ctl.wait(lambda w: len(w) == 6 and w[0] == "wrote" and w[1] == self.tag and w[2] not in out,
                                self.since, max(0, deadline - time.monotonic()))
            if got is None:
                break
            t, w = got
            out[w[2]] = (t, float(w[4]) - float(w[3]), int(w[5]))
        return out


# ---------------------------------------------------------------- relay

class Relay:
    """A relay between cairnd and qemu's agent socket, in
    agent_socket_dirs: every byte passes through unchanged, except as the
    test asks. It parses the two streams (QGA: 0xFF bytes and JSON objects,
    one command in flight) to know when qemu-ga answers the freeze and
    when cairnd sends the thaw, and records both with the host's time.

    on_frozen(): called when qemu-ga's answer to guest-fsfreeze-freeze
    arrives, before it is passed on; returns "pass", "garbage" (send
    cairnd garbage instead) or "drop" (pass nothing more on this
    connection). hold: seconds to hold guest-fsfreeze-thaw."""

    def __init__(self, path, upstream):
        self.path, self.upstream = path, upstream
        self.on_frozen = None
        self.hold = 0.0
        self.events = []  # (time, what): "freeze sent", "frozen", "thaw received", "thaw sent", "thawed"
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.listener.close()

    def reset(self, on_frozen=None, hold=0.0):
        with self.lock:
            self.on_frozen, self.hold, self.events = on_frozen, hold, []

    def event(self, what):
        with self.lock:
            for t, w in self.events:
                if w == what:
                    return t
        return None

    def _note(self, what):
        with self.lock:
            self.events.append((time.monotonic(), what))

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                up.connect(self.upstream)
            except OSError:
                down.close()
                continue
            conn = {"down": down, "up": up, "inflight": None, "dead": False}
            threading.Thread(target=self._pump, args=(conn, down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, up, down, False), daemon=True).start()

    def _pump(self, conn, src, dst, commands):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                while buf:
                    unit, buf = split_unit(buf)
                    if unit is None:
                        break
                    out = self._commands(conn, unit) if commands else self._replies(conn, unit)
                    if conn["dead"]:
                        raise OSError("dropped")
                    if out:
                        dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (conn["down"], conn["up"]):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _commands(self, conn, unit):
        if unit == b"\xff":
            return unit
        try:
            name = json.loads(unit).get("execute")
        except ValueError:
            name = None
        conn["inflight"] = name
        if name == "guest-fsfreeze-freeze":
            self._note("freeze sent")
        if name == "guest-fsfreeze-thaw":
            self._note("thaw received")
            if self.hold:
                time.sleep(self.hold)
            self._note("thaw sent")
        return unit

    def _replies(self, conn, unit):
        if unit == b"\xff":
            return unit
        name = conn["inflight"]
        if name == "guest-fsfreeze-freeze":
            self._note("frozen")
            action = self.on_frozen() if self.on_frozen else "pass"
            if action == "garbage":
                return b"this is not the agent's answer\n"
            if action == "drop":
                conn["dead"] = True
                return None
        if name == "guest-fsfreeze-thaw":
            self._note("thawed")
        return unit


def split_unit(buf):
    """The first unit of a QGA stream (a 0xFF byte or one JSON object, with
    the whitespace after it) and the rest; (None, buf) while incomplete."""
    i = 0
    while i < len(buf) and buf[i] in b" \t\r\n":
        i += 1
    if i == len(buf):
        return None, buf
    if buf[i] == 0xFF:
        return buf[i:i + 1], buf[i + 1:]
    depth, in_str, esc = 0, False, False
    for j in range(i, len(buf)):
        c = buf[j]
        if esc:
            esc = False
        elif in_str and c == 0x5C:
            esc = True
        elif c == 0x22:
            in_str = not in_str
        elif in_str:
            pass
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
            if depth == 0:
                end = j + 1
                while end < len(buf) and buf[end] in b"\r\n":
                    end += 1
                return buf[i:end], buf[end:]
        elif depth == 0:
            # Not an object: pass the byte on as it is.
            return buf[i:i + 1], buf[i + 1:]
    return None, buf


# ---------------------------------------------------------------- the test

class Test:
    def __init__(self, rep):
        self.rep = rep
        self.T = os.environ["T"]
        self.agents = os.path.join(self.T, "agents")
        self.qga = os.path.join(self.agents, "qga.sock")
        self.relay_sock = os.path.join(self.agents, "relay.sock")
        os.makedirs(self.agents, exist_ok=True)
        self.d = Daemon(os.environ["CAIRND"], os.path.join(self.T, "data"), os.path.join(self.T, "cairnd.log"),
                        args=["--fuse=false", "--freeze-timeout", f"{FREEZE_TIMEOUT}s", "--agent-socket-dirs", self.agents],
                        pidfile=os.path.join(self.T, "cairnd.pid"))
        self.vm = None
        self.ctl = None
        self.relay = None
        self.rounds = int(os.environ.get("ROUNDS") or 2)

    # -------------------------------------------------------- helpers

    def cairn(self, *args, check=True, timeout=120):
        r = subprocess.run([os.environ["CAIRN"], "--socket", self.d.api.sock] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise Fatal(f"cairn {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def set_agent(self, path):
        self.cairn("machine", "set", MACHINE, "--agent-socket", path)

    def snapshot(self, name, consistency):
        """cairn machine snapshot create --wait -o json: (exit status,
        the machine snapshot or None, stderr)."""
        r = self.cairn("machine", "snapshot", "create", MACHINE, name, "--consistency", consistency,
                       "--wait", "-o", "json", check=False)
        ms = None
        if r.returncode == 0:
            ms = json.loads(r.stdout)
        return r.returncode, ms, r.stderr.strip()

    def counts(self):
        w = self.ctl.ask("counts", "counts")
        return int(w[1]), int(w[2])

    def log_mark(self):
        return os.path.getsize(self.d.log)

    def log_since(self, mark):
        with open(self.d.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def wait_log(self, mark, text, timeout):
        deadline = time.monotonic() + timeout
        while text not in self.log_since(mark):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def agent_status(self):
        """guest-fsfreeze-status straight from qemu-ga's socket."""
        a = vmctl.Agent(self.qga, time.monotonic() + 10)
        try:
            a.sync()
            return a.execute("guest-fsfreeze-status").get("return")
        finally:
            a.sock.close()

    def check_thawed(self, what, timeout=30, agent=True):
        """The guest writes to both filesystems (and the agent says thawed)."""
        p = Probe(self.ctl, f"thawed{len(self.ctl.lines)}")
        got = p.wait(timeout)
        good = len(got) == 2 and all(v[2] == 0 for v in got.values())
        self.rep.check(good, f"{what}: the guest then writes to root and data (dd conv=fsync returned in "
                             f"{', '.join(f'{fs} {v[1]:.2f}s' for fs, v in sorted(got.items()))})",
                       f"answers within {timeout}s: {got}")
        if agent:
            try:
                st = self.agent_status()
            except (OSError, TimeoutError, ValueError) as e:
                st = f"no answer: {e}"
            self.rep.check(st == "thawed", f"{what}: qemu-ga says the filesystems are thawed", f"guest-fsfreeze-status: {st}")
        return good

    # -------------------------------------------------------- parts

    def start(self):
        self.d.start()
        for disk in ("root", "data"):
            self.d.api.create_disk(disk, 128 << 20)
        self.cairn("machine", "create", MACHINE, "--disk", "root,data", "--agent-socket", self.qga)
        here = os.path.dirname(os.path.abspath(__file__))
        vm_dir = os.path.join(here, "..", "vm")
        self.vm_out = open(os.path.join(self.T, "vm.out"), "wb")
        self.vm = subprocess.Popen(
            [os.path.join(vm_dir, "run.sh"), "--script", os.path.join(here, "vmagent-guest.sh"),
             "--env", "CAIRN_VM_AGENT=manual", "--nbd", self.d.nbd_sock, "--nbd-reconnect", "30", "--disk", "root", "--disk", "data",
             "--agent", self.qga, "--ctl", os.path.join(self.T, "ctl.sock"),
             "--log", os.path.join(self.T, "console.log"), "--work", os.path.join(self.T, "vm"),
             "--timeout", "900"], stdout=self.vm_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with open(os.path.join(self.T, "vm.pid"), "w") as f:
            f.write(f"{self.vm.pid}\n")
        rc, out = run([sys.executable, os.path.join(vm_dir, "vmctl.py"), "wait-event",
                       os.path.join(self.T, "console.log"), "ready", "--timeout", "240"], timeout=300)
        if rc != 0:
            raise Fatal(f"the guest did not get ready: {out}\n{self.console_tail()}")
        self.rep.ok("the guest booted, made ext4 on root (vda) and data (vdb), started the writers and qemu-ga")
        self.ctl = Ctl(os.path.join(self.T, "ctl.sock"))
        self.relay = Relay(self.relay_sock, self.qga)
        c0 = self.counts()
        time.sleep(2)
        c1 = self.counts()
        self.rep.check(c1[0] > c0[0] and c1[1] > c0[1], f"the guest's writers make progress (rounds {c0} then {c1})")

    def console_tail(self, n=30):
        try:
            with open(os.path.join(self.T, "console.log"), "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def finish(self):
        if self.ctl:
            self.ctl.send("finish")
        try:
            rc = self.vm.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.vm.send_signal(signal.SIGTERM)
            rc = self.vm.wait()
        self.vm = None
        with open(os.path.join(self.T, "vm.out"), "rb") as f:
            out = f.read().decode(errors="replace")
        self.rep.check(rc == 0, f"the guest stopped its writers, unmounted both filesystems and passed: {out.splitlines()[0] if out else ''}", out)

    def stop_vm(self):
        if self.vm and self.vm.poll() is None:
            self.vm.send_signal(signal.SIGTERM)
            try:
                self.vm.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.vm.kill()

    def frozen_snapshot(self, name):
        """A filesystem-consistent snapshot straight through qemu-ga's socket."""
        before = self.counts()
        rc, ms, err = self.snapshot(name, "filesystem")
        after = self.counts()
        if rc != 0:
            self.rep.bad(f"machine snapshot {name} --consistency filesystem: exit {rc}: {err}")
            return None
        self.rep.check(ms["consistency"] == "filesystem" and ms["requested"] == "filesystem" and not ms.get("reason")
                       and ms["frozen_us"] > 0 and ms["state"] == "ready",
                       f"{name}: filesystem-consistent, ready, frozen {ms['frozen_us'] / 1000:.1f} ms (frozen_us), "
                       f"writes held {ms['hold_us']:.0f} us", json.dumps(ms))
        return {"name": name, "kind": "filesystem", "before": before, "after": after}

    def settle(self, rounds=2, timeout=60):
        """Waits until both writers have done rounds more rounds: the
        journal has the load's transactions again after a freeze emptied it."""
        c0 = self.counts()
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts()
            if c[0] >= c0[0] + rounds and c[1] >= c0[1] + rounds:
                return
            if time.monotonic() > deadline:
                raise Fatal(f"the guest's writers did not make {rounds} rounds in {timeout}s: {c0} then {c}")
            time.sleep(0.2)

    def crash_snapshot(self, name):
        self.settle()
        before = self.counts()
        rc, ms, err = self.snapshot(name, "crash")
        after = self.counts()
        if rc != 0:
            self.rep.bad(f"machine snapshot {name} --consistency crash: exit {rc}: {err}")
            return None
        self.rep.check(ms["consistency"] == "crash" and ms["frozen_us"] == 0 and ms["state"] == "ready",
                       f"{name}: crash-consistent, ready, not frozen", json.dumps(ms))
        return {"name": name, "kind": "crash", "before": before, "after": after}

    def held_freeze(self):
        """Part 2: a write issued while the guest is frozen completes only
        after the thaw (the relay holds the thaw HOLD seconds)."""
        self.set_agent(self.relay_sock)
        probe = {}

        def on_frozen():
            probe["p"] = Probe(self.ctl, "frozen")
            return "pass"

        self.relay.reset(on_frozen=on_frozen, hold=HOLD)
        before = self.counts()
        rc, ms, err = self.snapshot("held", "filesystem")
        after = self.counts()
        self.set_agent(self.qga)
        if rc != 0:
            self.rep.bad(f"machine snapshot held --consistency filesystem (through the relay): exit {rc}: {err}")
            return None
        self.rep.check(ms["consistency"] == "filesystem" and ms["frozen_us"] >= HOLD * 1e6,
                       f"held: filesystem-consistent through the relay; frozen_us ({ms['frozen_us'] / 1e6:.2f}s) "
                       f"counts the {HOLD}s the thaw was held", json.dumps(ms))
        ev = {w: self.relay.event(w) for w in ("freeze sent", "frozen", "thaw received", "thaw sent", "thawed")}
        if not self.rep.check(all(ev.values()) and ev["freeze sent"] < ev["frozen"] < ev["thaw received"] < ev["thaw sent"] < ev["thawed"],
                              "held: cairnd sent guest-fsfreeze-freeze, qemu-ga answered, then cairnd sent guest-fsfreeze-thaw (held by the relay)",
                              f"relay events {self.relay.events}") or "p" not in probe:
            return None
        got = probe["p"].wait(HOLD + 30)
        for fs in ("root", "data"):
            if fs not in got:
                self.rep.bad(f"held: the write issued on {fs} while frozen never completed")
                continue
            t, took, rc = got[fs]
            self.rep.check(rc == 0 and t > ev["thaw sent"] and took >= HOLD * 0.6,
                           f"held: a write issued on {fs} while the guest was frozen waited {took:.2f}s in the guest "
                           f"and completed {t - ev['thaw sent']:.2f}s after the thaw was let through "
                           f"({ev['thaw sent'] - ev['frozen']:.2f}s after the freeze's answer)",
                           f"dd exit {rc}, took {took:.2f}s (want >= {HOLD * 0.6:.2f}s), answered at {t - ev['frozen']:.2f}s, "
                           f"thaw sent at {ev['thaw sent'] - ev['frozen']:.2f}s after the freeze's answer")
        # The writes issued while frozen completed after the thaw, after the
        # seal: they must not be in the snapshot.
        return {"name": "held", "kind": "filesystem", "before": before, "after": after, "absent": "/probe.frozen"}

    def check_image(self, snap):
        """Part 3: each member of a snapshot, read through its DISK@NAME export."""
        for i, disk in enumerate(("root", "data")):
            img = os.path.join(self.T, f"{disk}@{snap['name']}.raw")
            rc, out = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", self.d.uri(f"{disk}@{snap['name']}"), img])
            if rc != 0:
                self.rep.bad(f"qemu-img convert {disk}@{snap['name']}: {out}")
                continue
            st = fs_state(img)
            what = f"{disk}@{snap['name']} ({snap['kind']})"
            if snap["kind"] == "filesystem":
                self.rep.check(not st["needs_recovery"] and st["journal_start"] == 0 and st["transactions"] == 0,
                               f"{what}: no needs_recovery, the journal is empty", st)
                rc, out = run(["e2fsck", "-fn", img])
                self.rep.check(rc == 0, f"{what}: e2fsck -fn is clean", out[-800:])
                rounds = last_round(img, disk)
                lo, hi = snap["before"][i], snap["after"][i] + 1
                self.rep.check(rounds is not None and lo <= rounds <= hi,
                               f"{what}: holds the writer's round {rounds} (the guest had done {lo} when asked, {hi - 1} after)")
                if snap.get("absent"):
                    rc, out = run(["debugfs", "-R", f"stat {snap['absent']}", img])
                    self.rep.check("File not found" in out,
                                   f"{what}: {snap['absent']}, written while frozen, is not in it", out[-300:])
            else:
                self.rep.check(st["needs_recovery"] and st["transactions"] > 0,
                               f"{what}: needs_recovery, {st['transactions']} journal transactions to replay "
                               f"(journal start {st['journal_start']})", st)
                fixed = img + ".recovered"
                shutil.copyfile(img, fixed)
                rc, out = run(["e2fsck", "-fy", fixed])
                self.rep.check(rc in (0, 1) and "recovering journal" in out,
                               f"{what}: e2fsck -fy on a copy recovers the journal (exit {rc})", out[-800:])
                rc, out = run(["e2fsck", "-fn", fixed])
                self.rep.check(rc == 0, f"{what}: clean after the recovery", out[-800:])
                os.unlink(fixed)
            if not os.environ.get("KEEP"):
                os.unlink(img)

    # -------------------------------------------------------- failure paths

    def expect_fallback(self, name, what, reason_words):
        """auto: a crash-consistent snapshot whose reason names the cause."""
        rc, ms, err = self.snapshot(name, "auto")
        if rc != 0:
            self.rep.bad(f"{what}: auto: exit {rc}: {err}")
            return
        reason = ms.get("reason") or ""
        self.rep.check(ms["consistency"] == "crash" and ms["requested"] == "auto" and ms["state"] == "ready"
                       and all(w in reason for w in reason_words),
                       f"{what}: auto gives a crash-consistent snapshot that says why: {reason!r}", json.dumps(ms))

    def expect_failure(self, name, what, reason_words):
        """filesystem: the task fails with the reason; no snapshot stays."""
        rc, ms, err = self.snapshot(name, "filesystem")
        last = err.splitlines()[-1] if err else ""  # before it: --wait's progress lines
        self.rep.check(rc != 0 and all(w in last for w in reason_words),
                       f"{what}: filesystem fails: {last!r}", f"exit {rc}, snapshot {ms}, stderr {err!r}")
        names = [s["name"] for s in self.d.api.req("GET", f"/v1/machines/{MACHINE}/snapshots")]
        self.rep.check(name not in names, f"{what}: no machine snapshot {name} is left", names)

    def agent(self, cmd):
        self.ctl.ask(f"agent {cmd}", f"agent {cmd}")

    def fail_stopped(self):
        what = "qemu-ga stopped (SIGSTOP)"
        self.agent("stop")
        self.expect_fallback("stopped-auto", what, ["did not answer"])
        self.expect_failure("stopped-fs", what, ["no filesystem-consistent snapshot", "did not answer"])
        self.check_thawed(what, agent=False)
        self.agent("cont")

    def fail_dead(self):
        what = "qemu-ga killed"
        self.agent("kill")
        self.expect_fallback("dead-auto", what, ["did not answer"])
        self.expect_failure("dead-fs", what, ["did not answer"])
        self.check_thawed(what, agent=False)
        self.agent("start")

    def fail_killed_in_freeze(self):
        what = "qemu-ga killed inside guest-fsfreeze-freeze"
        for name, expect in (("killfreeze-auto", self.expect_fallback), ("killfreeze-fs", self.expect_failure)):
            self.ctl.ask("hook kill", "hook kill")
            # No agent is left to thaw: the reason says cairnd keeps trying.
            expect(name, what, ["did not freeze", "retries"])
            self.check_thawed(what, agent=False)
            # cairnd could not thaw (no agent) and retries every 5 s: the
            # new qemu-ga gets that thaw (harmless: nothing is frozen).
            m = self.log_mark()
            self.agent("start")
            self.rep.check(self.wait_log(m, "guest filesystems thawed", 30),
                           f"{what}: cairnd's retried thaw reaches the restarted qemu-ga", self.log_since(m)[-800:])

    def fail_slow_freeze(self):
        what = f"qemu-ga answering the freeze later than freeze_timeout ({FREEZE_TIMEOUT}s)"
        late = FREEZE_TIMEOUT + 2
        self.ctl.ask(f"hook sleep {late}", "hook")
        m = self.log_mark()
        asked = time.monotonic()
        self.expect_fallback("slow-auto", what, ["did not freeze", "freeze_timeout"])
        # qemu-ga froze after cairnd gave up; cairnd's thaw (now, or its
        # retries every 5 s) must reach it. Write only once the late freeze
        # has surely happened, or the write could pass before it.
        time.sleep(max(0.0, asked + late + 2 - time.monotonic()))
        self.check_thawed(what, timeout=30)
        self.rep.info(f"cairnd's log: {' | '.join(l for l in self.log_since(m).splitlines() if 'thaw' in l)[:600]}")

    def fail_garbage(self):
        what = "garbage instead of the freeze's answer (the guest is frozen)"
        self.set_agent(self.relay_sock)
        self.relay.reset(on_frozen=lambda: "garbage")
        self.expect_fallback("garbage-auto", what, ["could not freeze", "thawed"])
        self.check_thawed(what)
        self.relay.reset(on_frozen=lambda: "garbage")
        self.expect_failure("garbage-fs", what, ["could not freeze"])
        self.check_thawed(what)
        self.set_agent(self.qga)

    def fail_killed_frozen(self):
        """qemu-ga killed while the guest is frozen: the snapshot was sealed
        frozen (filesystem); the thaw cannot reach a dead agent, so cairnd
        retries it until a new qemu-ga answers."""
        what = "qemu-ga killed while the guest is frozen"
        self.set_agent(self.relay_sock)

        def on_frozen():
            self.agent("kill")
            return "pass"

        self.relay.reset(on_frozen=on_frozen)
        rc, ms, err = self.snapshot("killfrozen", "filesystem")
        self.rep.check(rc == 0 and ms["consistency"] == "filesystem",
                       f"{what}: the snapshot, sealed while frozen, is filesystem-consistent", f"exit {rc}: {err} {ms}")
        p = Probe(self.ctl, "killfrozen")
        got = p.wait(3)
        self.rep.check(not got, f"{what}: the guest stays frozen while no agent answers (a write waits)", got)
        self.agent("start")
        started = time.monotonic()
        got = p.wait(30)
        self.rep.check(len(got) == 2 and all(v[0] > started and v[2] == 0 for v in got.values()),
                       f"{what}: once qemu-ga is back, cairnd's retry thaws the guest and the waiting write completes "
                       f"({max((v[0] - started for v in got.values()), default=0):.1f}s later)", got)
        self.set_agent(self.qga)
        self.check_thawed(what)

    def fail_missing(self):
        what = "a missing agent socket"
        self.set_agent(os.path.join(self.agents, "missing.sock"))
        self.expect_fallback("missing-auto", what, ["does not exist"])
        self.expect_failure("missing-fs", what, ["does not exist"])
        self.set_agent(self.qga)
        self.check_thawed(what, agent=False)

    def fail_cairnd_killed(self):
        """cairnd killed (SIGKILL) while the guest is frozen: the relay
        kills it as qemu-ga's answer to the freeze arrives, before cairnd
        sees it; the next start finds the freeze record and thaws."""
        what = "cairnd killed while the guest is frozen"
        self.set_agent(self.relay_sock)

        def on_frozen():
            self.d.kill(signal.SIGKILL)
            return "drop"

        self.relay.reset(on_frozen=on_frozen)
        rc, ms, err = self.snapshot("cairndkilled", "filesystem")
        self.rep.check(rc != 0 and not self.d.alive(), f"{what}: cairnd died inside the freeze", f"exit {rc} {err}")
        p = Probe(self.ctl, "cairndkilled")
        got = p.wait(3)
        self.rep.check(not got, f"{what}: the guest is frozen (a write waits)", got)
        self.relay.reset()
        m = self.log_mark()
        self.d.start()
        started = time.monotonic()
        got = p.wait(30)
        self.rep.check(len(got) == 2 and all(v[0] > started and v[2] == 0 for v in got.values()),
                       f"{what}: the next start thaws the guest and the waiting write completes "
                       f"({max((v[0] - started for v in got.values()), default=0):.1f}s after the start)", got)
        self.rep.check("left frozen" in self.log_since(m), f"{what}: cairnd's log says it thawed a guest it left frozen",
                       self.log_since(m)[-1000:])
        names = [s["name"] for s in self.d.api.req("GET", f"/v1/machines/{MACHINE}/snapshots")]
        self.rep.check("cairndkilled" not in names, f"{what}: no machine snapshot from the interrupted freeze", names)
        self.set_agent(self.qga)
        self.check_thawed(what)

    # -------------------------------------------------------- all

    def run(self):
        self.start()
        snaps = [self.frozen_snapshot("frozen")]
        snaps.append(self.held_freeze())
        for r in range(self.rounds):
            snaps.append(self.crash_snapshot(f"crash{r + 1}"))
            if r > 0:
                snaps.append(self.frozen_snapshot(f"frozen{r + 1}"))
        for s in snaps:
            if s:
                self.check_image(s)
        self.fail_stopped()
        self.fail_dead()
        self.fail_killed_in_freeze()
        self.fail_slow_freeze()
        self.fail_garbage()
        self.fail_killed_frozen()
        self.fail_missing()
        self.fail_cairnd_killed()
        self.finish()


# ---------------------------------------------------------------- ext4 images

def fs_state(img):
    """needs_recovery, the journal's start block and how many transactions
    it holds to replay."""
    rc, out = run(["dumpe2fs", "-h", img])
    if rc != 0:
        raise Fatal(f"dumpe2fs -h {img}: {out}")
    feats = re.search(r"^Filesystem features:\s*(.*)$", out, re.M)
    start = re.search(r"^Journal start:\s*(\d+)", out, re.M)
    rc, log = run(["debugfs", "-R", "logdump", img])
    return {"needs_recovery": bool(feats and "needs_recovery" in feats.group(1).split()),
            "journal_start": int(start.group(1)) if start else -1,
            "transactions": len(re.findall(r"\(commit block\)", log))}


def last_round(img, disk):
    """The writer's last round in the image: app.log's last line on root,
    data/seq on data."""
    path = "/var/log/app.log" if disk == "root" else "/seq"
    rc, out = run(["debugfs", "-R", f"cat {path}", img])
    nums = re.findall(r"(\d+)\s*$", out.strip())
    return int(nums[-1]) if rc == 0 and nums else None


def test(rep):
    t = Test(rep)
    try:
        t.run()
    finally:
        t.stop_vm()
        if t.relay:
            t.relay.close()
        if t.d.alive() and t.d.stop() != 0:
            rep.bad("cairnd did not stop cleanly")


if __name__ == "__main__":
    main(test, "test-vm-agent")
