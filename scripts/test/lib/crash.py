"""The crash test (scripts/test/test-crash.sh runs it).

CRASH_ROUNDS times (default 10): run one scenario against a 256 MiB disk
(64 KiB blocks) and kill cairnd with SIGKILL at a random moment of it:

  writes    random writes, zero-writes, trims and FLUSHes, a snapshot now
            and then (a kill can land inside the snapshot request)
  copyout   most of the disk rewritten, a snapshot, killed while it copies
            out (at a random progress)
  cow       the same, but the writer overwrites blocks still pending for
            the copying snapshot (copy-on-write) until the kill
  delete    a first, middle or last snapshot (sometimes one still copying)
            deleted, killed during the delete
  rollback  the live disk made to differ from a snapshot, rolled back,
            killed during the rollback
  clone     a clone of a ready snapshot (made when there is none) written
            with random operations and snapshots, killed during them
  flatten   the clone flattened (sometimes hydrating) while it is written,
            killed during the flatten

then restart cairnd and check:
  - every snapshot is there (unless its create or delete was interrupted:
    then it may be gone), a copying one finishes (copy-out resumes), and
    each reads back (nbdcopy, cmp) equal to the oracle at its point in time
  - the live disk holds every write acknowledged before an acknowledged
    FLUSH (invariant 2), and in fact every acknowledged write (a SIGKILL of
    the daemon leaves the page cache: STRICT_UNFLUSHED=0 turns this into a
    note); the one operation in flight may be old or new bytes, nothing else
  - after an interrupted rollback, rolling back again gives the snapshot
  - verify finds no fault
  - a snapshot taken right after the restart equals the live disk
    (qemu-img compare of the two exports): change tracking survived.
  - the clone likewise: its snapshots, its live disk against its own
    oracle (the parent's writes never reach it), a new snapshot of it;
    after an interrupted flatten, flattening again succeeds, the parent's
    snapshot can then be deleted and the clone still reads as its oracle
    (then the clone is deleted and a later round makes a new one).

Environment: T, CAIRND, SEED, CRASH_ROUNDS, CRASH_SIZE (MiB),
STRICT_UNFLUSHED, SCENARIOS (comma-separated subset).
"""

import http.client
import os
import shutil
import threading
import time

import nbd

from cairntest import (Daemon, Fatal, Writer, compare_export, export_to_file, main, qemu_compare, rng_from_env,
                       verify_clean)

MiB = 1024 * 1024
DISK = "crash"
# What a call to a killed daemon raises.
DEAD = (nbd.Error, OSError, http.client.HTTPException)
SCENARIOS = ["writes", "copyout", "cow", "delete", "rollback", "clone", "flatten"]
CLONE = "crashc"
MAX_SNAPS = 4  # snapshots kept between rounds (each is an expected file of the disk's size)


class Killer:
    """Kills cairnd from a thread: after `delay` seconds, or as soon as
    `when()` is true (polled every 5 ms), whichever comes first."""

    def __init__(self, d, delay, when=None):
        self.d = d
        self.delay = delay
        self.when = when
        self.note = ""
        self.fired = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:
            if self.when is not None:
                try:
                    got = self.when()
                except DEAD:
                    got = None
                if got:
                    self.note = str(got)
                    break
            time.sleep(0.005)
        self.d.proc.kill()
        self.fired.set()

    def wait(self):
        self.t.join()
        self.d.proc.wait()


class Clone:
    """The clone under test: a disk made from one of the crash disk's
    snapshots, with its own oracle and snapshots."""

    def __init__(self, crash, origin):
        self.disk = CLONE
        self.origin = origin  # the crash disk's snapshot it reads through
        self.oracle = os.path.join(crash.T, "clone.raw")
        self.exp_dir = crash.exp_dir
        self.snaps = []
        self.maybe = set()
        self.flatten_task = None  # a flatten the kill may have interrupted

    def exp(self, name):
        return os.path.join(self.exp_dir, f"{CLONE}@{name}.raw")

    def forget(self, name):
        self.snaps.remove(name)
        self.maybe.discard(name)
        os.unlink(self.exp(name))


class Crash:
    def __init__(self, rep, T, rng):
        self.rep = rep
        self.T = T
        self.rng = rng
        self.size = int(os.environ.get("CRASH_SIZE") or 256) * MiB
        self.strict = os.environ.get("STRICT_UNFLUSHED", "1") != "0"
        self.d = Daemon(os.environ["CAIRND"], os.path.join(T, "data"), os.path.join(T, "cairnd.log"),
                        pidfile=os.path.join(T, "cairnd.pid"))
        self.api = self.d.api
        self.oracle = os.path.join(T, "oracle.raw")
        self.scratch = os.path.join(T, "scratch.raw")
        self.exp_dir = os.path.join(T, "expected")
        os.makedirs(self.exp_dir, exist_ok=True)
        self.disk = DISK
        self.clone = None
        self.snaps = []  # names believed to exist, oldest first
        self.maybe = set()  # names whose create or delete was interrupted
        self.n = 0
        self.w = None
        self.last_w = None
        self.rollback_target = None
        self.stats = {"unflushed_present": 0, "unflushed_lost": 0, "inflight_new": 0, "inflight_old": 0,
                      "resumed": 0, "deleting_finished": 0}

    # ---------------------------------------------------------- helpers

    def exp(self, name):
        return os.path.join(self.exp_dir, name + ".raw")

    def writer(self):
        if self.w is None:
            self.w = Writer(self.d.uri(DISK), self.oracle, self.size, self.rng)
        return self.w

    def drop_writer(self):
        """Disconnects the writer; its record of unflushed writes stays
        for the next check."""
        if self.w is not None:
            self.w.close()
            self.last_w, self.w = self.w, None

    def new_name(self, tag):
        self.n += 1
        return f"{tag}{self.n}"

    def snapshot(self, tag):
        """Takes a snapshot between writes; the expected file is copied
        before the request, so an interrupted request leaves a name that
        may or may not exist but whose content is known."""
        name = self.new_name(tag)
        src = self.oracle
        if self.w is not None:
            self.w.sync_oracle()
        shutil.copyfile(src, self.exp(name))
        self.snaps.append(name)
        self.maybe.add(name)
        self.api.snapshot(DISK, name)
        self.maybe.discard(name)
        return name

    def forget(self, name):
        self.snaps.remove(name)
        self.maybe.discard(name)
        os.unlink(self.exp(name))

    def trim_chain(self):
        """Keeps at most MAX_SNAPS snapshots (ordinary deletes, no kill)."""
        while len(self.snaps) > MAX_SNAPS:
            victims = [n for n in self.snaps[:-1] if n != self.pinned()]
            if not victims:
                break
            victim = self.rng.choice(victims)
            self.api.delete_snapshot(DISK, victim)
            self.forget(victim)

    def pinned(self):
        """The snapshot the clone reads through (cannot be deleted)."""
        return self.clone.origin if self.clone is not None else None

    # ---------------------------------------------------------- scenarios

    def sc_writes(self):
        w = self.writer()
        k = Killer(self.d, self.rng.uniform(0.05, 1.5))
        try:
            while True:
                if self.rng.random() < 0.01:
                    self.snapshot("w")
                w.random_op()
        except DEAD:
            pass
        k.wait()
        return f"{w.ops}"

    def _big_snapshot(self):
        w = self.writer()
        w.fill(self.rng.uniform(0.5, 0.9))
        return self.snapshot("big")

    def _progress_at_least(self, name, target):
        def when():
            s = self.api.get_snapshot(DISK, name)
            if s is None or s["state"] != "copying" or s["progress"] >= target:
                return f"{name} {s['state'] if s else 'gone'} {s['progress'] if s else 0:.0f}%"
            return None
        return when

    def sc_copyout(self):
        name = self._big_snapshot()
        k = Killer(self.d, 20, self._progress_at_least(name, self.rng.uniform(0, 95)))
        k.wait()
        return f"killed at {k.note or 'timeout'}"

    def sc_cow(self):
        name = self._big_snapshot()
        w = self.writer()
        k = Killer(self.d, self.rng.uniform(0.05, 1.0))
        ops = 0
        try:
            while True:
                w.random_op()
                ops += 1
        except DEAD:
            pass
        k.wait()
        return f"{ops} ops during the copy-out of {name}"

    def sc_delete(self):
        free = [n for n in self.snaps if n != self.pinned()]
        if len(free) < 2 or self.rng.random() < 0.3:
            victim = self._big_snapshot()  # deleted while still copying
            which = "copying"
        else:
            which = self.rng.choice(["first", "middle", "last"])
            victim = {"first": free[0], "middle": free[len(free) // 2], "last": free[-1]}[which]
        self.drop_writer()
        k = Killer(self.d, self.rng.uniform(0, 0.03))
        self.maybe.add(victim)
        try:
            self.api.delete_snapshot(DISK, victim)
            outcome = "answered"
        except DEAD:
            outcome = "interrupted"
        k.wait()
        return f"{which} {victim} {outcome}"

    def sc_rollback(self):
        ready = [n for n in self.snaps if n not in self.maybe]
        if not ready:
            self.snapshot("r")
            ready = [self.snaps[-1]]
        target = self.rng.choice(ready)
        self.writer().fill(self.rng.uniform(0.3, 0.8))
        self.drop_writer()
        task = self.api.rollback_idle(DISK, target)
        self.rollback_target = target

        def when():
            t = self.api.req("GET", f"/v1/tasks/{task['id']}")
            if t["state"] != "running" or t["progress"] >= target_pct:
                return f"task {t['state']} {t['progress']:.0f}%"
            return None
        target_pct = self.rng.uniform(0, 95)
        k = Killer(self.d, 20, when)
        k.wait()
        return f"to {target}, killed at {k.note or 'timeout'}"

    def _ensure_clone(self):
        """Makes the clone of a ready snapshot when there is none."""
        if self.clone is not None:
            return "", self.clone
        ready = [n for n in self.snaps if n not in self.maybe]
        if not ready:
            self.snapshot("o")
            ready = [self.snaps[-1]]
        origin = self.rng.choice(ready)
        self.api.wait_snapshot(DISK, origin)
        c = Clone(self, origin)
        shutil.copyfile(self.exp(origin), c.oracle)
        self.api.req("POST", "/v1/disks", {"name": CLONE, "from": f"{DISK}@{origin}"})
        self.clone = c
        return f"new clone of {origin}; ", c

    def _clone_writer(self, c):
        return Writer(self.d.uri(CLONE), c.oracle, self.size, self.rng)

    def _clone_snapshot(self, c, w):
        self.n += 1
        name = f"k{self.n}"
        if w is not None:
            w.sync_oracle()
        shutil.copyfile(c.oracle, c.exp(name))
        c.snaps.append(name)
        c.maybe.add(name)
        self.api.snapshot(CLONE, name)
        c.maybe.discard(name)

    def sc_clone(self):
        made, c = self._ensure_clone()
        while len(c.snaps) > 2:
            victim = c.snaps[0]
            self.api.delete_snapshot(CLONE, victim)
            c.forget(victim)
        self.drop_writer()
        w = self._clone_writer(c)
        self.clone_w = w
        k = Killer(self.d, self.rng.uniform(0.05, 1.0))
        try:
            while True:
                if self.rng.random() < 0.01:
                    self._clone_snapshot(c, w)
                w.random_op()
        except DEAD:
            pass
        k.wait()
        return f"{made}{w.ops} on the clone"

    def sc_flatten(self):
        made, c = self._ensure_clone()
        self.drop_writer()
        w = self._clone_writer(c)
        self.clone_w = w
        hydrate = self.rng.random() < 0.5
        # Hydrating at a bounded rate lasts seconds, so the kill lands in
        # it; without it the flatten is metadata only and a short delay
        # lands in it.
        t = self.api.req("POST", f"/v1/disks/{CLONE}/flatten", {"hydrate": hydrate, "rate": "64M"})
        c.flatten_task = t["id"]
        target_pct = self.rng.uniform(0, 100)

        def when():
            t = self.api.req("GET", f"/v1/tasks/{c.flatten_task}")
            if t["state"] != "running" or t["progress"] >= target_pct:
                return f"flatten {t['state']} {t['progress']:.0f}%"
            return None
        k = Killer(self.d, 20 if hydrate else self.rng.uniform(0.001, 0.05), when)
        try:
            while not k.fired.is_set():
                w.random_op()
        except DEAD:
            pass
        k.wait()
        return f"{made}{'hydrating, ' if hydrate else ''}killed at {k.note or 'timeout'}"

    def check_clone(self, r, w):
        """The clone after a restart: snapshots, live disk, a finished
        flatten, a new snapshot."""
        c = self.clone
        self.check_snapshots(r, c)
        if not self.check_live(r, w, CLONE, c.oracle):
            return
        if c.flatten_task is not None:
            t = self.api.req("GET", f"/v1/tasks/{c.flatten_task}")
            d = self.api.req("GET", f"/v1/disks/{CLONE}")
            if d.get("parent"):  # not done before the kill: again
                t = self.api.wait_task(self.api.req("POST", f"/v1/disks/{CLONE}/flatten", {"hydrate": True}))
                if t["state"] != "succeeded":
                    self.rep.bad(f"round {r}: flatten again after the kill: {t['state']} {t.get('error', '')}")
                    return
            origin = c.origin
            self.api.delete_snapshot(DISK, origin)
            self.forget(origin)
            c.origin = None
            same, out = qemu_compare(self.d.uri(CLONE), c.oracle)
            if not same:
                self.rep.bad(f"round {r}: the flattened clone differs from its oracle once {origin} is deleted: {out}")
            for name in list(c.snaps):
                same, msg = compare_export(self.d.uri(f"{CLONE}@{name}"), c.exp(name), self.scratch)
                if not same:
                    self.rep.bad(f"round {r}: clone snapshot {name} differs once {origin} is deleted: {msg}")
            self.api.req("DELETE", f"/v1/disks/{CLONE}?with_snapshots=true")
            for name in list(c.snaps):
                c.forget(name)
            os.unlink(c.oracle)
            self.clone = None
            return
        self._clone_snapshot(c, None)
        name = c.snaps[-1]
        s = self.api.wait_snapshot(CLONE, name)
        same, out = qemu_compare(self.d.uri(f"{CLONE}@{name}"), self.d.uri(CLONE))
        if s["state"] != "ready" or not same:
            self.rep.bad(f"round {r}: clone snapshot {name} taken after the restart is {s['state']} "
                         f"and does not equal the live clone: {out}")

    # ---------------------------------------------------------- checks

    def check_snapshots(self, r, ch=None):
        """Every snapshot of ch (self: the crash disk; or the clone)."""
        ch = ch or self
        DISK = ch.disk
        listed = {s["name"]: s for s in self.api.snapshots(DISK)}
        for name in list(ch.snaps):
            s = listed.pop(name, None)
            deadline = time.monotonic() + 60
            while s is not None and s["state"] in ("copying", "deleting") and time.monotonic() < deadline:
                was = s["state"]
                time.sleep(0.05)
                s = self.api.get_snapshot(DISK, name)
                if s is None and was == "deleting":
                    self.stats["deleting_finished"] += 1
                if s is not None and s["state"] == "ready" and was == "copying":
                    self.stats["resumed"] += 1
            if s is None:
                if name in ch.maybe:
                    ch.forget(name)
                else:
                    self.rep.bad(f"round {r}: snapshot {name} is gone after the restart")
                    ch.forget(name)
                continue
            if s["state"] != "ready":
                self.rep.bad(f"round {r}: snapshot {name} is {s['state']} after the restart: {s.get('reason')}")
                continue
            ch.maybe.discard(name)
            same, msg = compare_export(self.d.uri(f"{DISK}@{name}"), ch.exp(name), self.scratch)
            if not same:
                self.rep.bad(f"round {r}: snapshot {name} differs from its oracle after the restart: {msg}")
            else:
                self.checked += 1
        for name in listed:
            self.rep.bad(f"round {r}: unexpected snapshot {name} after the restart: {listed[name]}")

    def check_live(self, r, w, disk=DISK, oracle=None):
        """The live disk against the oracle of the writer that was killed."""
        oracle = oracle or self.oracle
        export_to_file(self.d.uri(disk), self.scratch)
        pending = None
        if w is not None and w.pending and w.pending[0] != "flush":
            _, off, data = w.pending
            pending = (off, off + len(data), data)
        unflushed = sorted((o, o + n) for o, n in (w.unflushed if w else []))
        lost_flushed = []
        lost_unflushed = []
        torn = []
        for a, b in diff_ranges(self.scratch, oracle):
            if pending and a >= pending[0] and b <= pending[1]:
                with open(self.scratch, "rb") as f:
                    f.seek(a)
                    got = f.read(b - a)
                if got != pending[2][a - pending[0]:b - pending[0]]:
                    torn.append((a, b))
                continue
            if pending and a < pending[1] and b > pending[0]:
                torn.append((a, b))  # reaches outside the in-flight op
                continue
            if covered(unflushed, a, b):
                lost_unflushed.append((a, b))
            else:
                lost_flushed.append((a, b))
        if pending:
            with open(self.scratch, "rb") as f:
                f.seek(pending[0])
                now = f.read(pending[1] - pending[0])
            self.stats["inflight_new" if now == pending[2] else "inflight_old"] += 1
        if unflushed:
            self.stats["unflushed_lost" if lost_unflushed else "unflushed_present"] += 1
        if lost_flushed:
            self.rep.bad(f"round {r}: {disk}: flushed writes lost after the kill: {lost_flushed[:5]}")
        if torn:
            self.rep.bad(f"round {r}: {disk}: bytes neither old nor new around the in-flight write {pending[:2]}: {torn[:5]}")
        if lost_unflushed:
            msg = f"round {r}: {disk}: acknowledged (unflushed) writes lost after a SIGKILL of cairnd: {lost_unflushed[:5]}"
            if self.strict:
                self.rep.bad(msg)
            else:
                self.rep.info(msg)
        shutil.copyfile(self.scratch, oracle)  # the in-flight op's outcome is now known
        os.unlink(self.scratch)
        return not (lost_flushed or torn or (lost_unflushed and self.strict))

    def after_restart(self, r, w, cw=None):
        self.checked = 0
        self.check_snapshots(r)
        if self.clone is not None:
            self.check_clone(r, cw)
        if self.rollback_target is not None:
            target, self.rollback_target = self.rollback_target, None
            if target in self.snaps:
                t = self.api.wait_task(self.api.rollback_idle(DISK, target))
                same, out = qemu_compare(self.d.uri(DISK), self.exp(target))
                if t["state"] != "succeeded" or not same:
                    self.rep.bad(f"round {r}: rollback to {target} again after the kill: task {t['state']} "
                                 f"{t.get('error', '')}; compare: {out}")
                shutil.copyfile(self.exp(target), self.oracle)
            else:
                export_to_file(self.d.uri(DISK), self.oracle)
        else:
            self.check_live(r, w)
        # A new snapshot right away: it must equal the live disk.
        name = self.snapshot("after")
        s = self.api.wait_snapshot(DISK, name)
        same, out = qemu_compare(self.d.uri(f"{DISK}@{name}"), self.d.uri(DISK))
        if s["state"] != "ready" or not same:
            self.rep.bad(f"round {r}: snapshot {name} taken after the restart is {s['state']} "
                         f"and does not equal the live disk: {out}")
        same, msg = compare_export(self.d.uri(f"{DISK}@{name}"), self.exp(name), self.scratch)
        if not same:
            self.rep.bad(f"round {r}: snapshot {name} taken after the restart differs from the oracle: {msg}")
        t = self.api.verify()
        res = t.get("result") or {}
        if t["state"] != "succeeded" or res.get("faults") != []:
            self.rep.bad(f"round {r}: verify after the restart: {t['state']} {t.get('error', '')} "
                         f"faults {(res.get('faults') or [])[:5]}")
        return res

    # ---------------------------------------------------------- run

    def run(self):
        rep = self.rep
        rounds = int(os.environ.get("CRASH_ROUNDS") or 10)
        scen = [s for s in (os.environ.get("SCENARIOS") or ",".join(SCENARIOS)).split(",") if s]
        for s in scen:
            if s not in SCENARIOS:
                raise Fatal(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
        self.d.start()
        self.api.create_disk(DISK, self.size)
        with open(self.oracle, "wb") as f:
            f.truncate(self.size)
        w = self.writer()
        w.fill(0.5)
        for _ in range(200):
            w.random_op()
        self.snapshot("base")
        self.api.wait_snapshot(DISK, self.snaps[-1])
        rep.ok(f"cairnd started, {self.size // MiB} MiB disk written, first snapshot ready")
        order = []
        failed_before = rep.failed
        for r in range(1, rounds + 1):
            if not order:
                order = scen[:]
                self.rng.shuffle(order)
            sc = order.pop()
            self.trim_chain()
            t0 = time.monotonic()
            self.clone_w = None
            what = getattr(self, "sc_" + sc)()
            killed = self.w or self.last_w
            self.w = self.last_w = None
            start = self.d.start()
            res = self.after_restart(r, killed, self.clone_w)
            for w in (killed, self.clone_w):
                if w is not None:
                    w.close()
            ok = rep.failed == failed_before
            rep.check(ok, f"round {r}/{rounds} {sc}: {what}; restart {start:.2f}s; {self.checked} snapshots intact, "
                      f"live disk as acknowledged, verify {res.get('chunks_checked')} chunks clean, "
                      f"new snapshot = live disk ({time.monotonic() - t0:.1f}s)")
            failed_before = rep.failed
        s = self.stats
        rep.info(f"after {rounds} kills: unflushed writes present in {s['unflushed_present']} rounds, lost in "
                 f"{s['unflushed_lost']}; the in-flight op was new {s['inflight_new']} times, old {s['inflight_old']}; "
                 f"copy-outs resumed {s['resumed']}, deletes finished at start {s['deleting_finished']}")
        self.drop_writer()
        verify_clean(rep, self.api, "at the end")
        rc = self.d.stop()
        rep.check(rc == 0, "cairnd stopped with SIGTERM", f"exit {rc}")


def diff_ranges(a, b, chunk=MiB, sub=4096):
    """Byte ranges [start, end) where two equal-sized files differ."""
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        base = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if not x and not y:
                break
            if x != y:
                for s in range(0, max(len(x), len(y)), sub):
                    if x[s:s + sub] == y[s:s + sub]:
                        continue
                    for i in range(s, min(s + sub, max(len(x), len(y)))):
                        if x[i:i + 1] != y[i:i + 1]:
                            p = base + i
                            if out and out[-1][1] == p:
                                out[-1][1] = p + 1
                            else:
                                out.append([p, p + 1])
            base += chunk
    return [tuple(r) for r in out]


def covered(ranges, a, b):
    """Whether [a, b) lies inside the union of sorted ranges."""
    pos = a
    for s, e in ranges:
        if s > pos:
            break
        pos = max(pos, e)
        if pos >= b:
            return True
    return pos >= b


def test(rep):
    rng = rng_from_env(rep)
    Crash(rep, os.environ["T"], rng).run()


if __name__ == "__main__":
    main(test, "test-crash")
