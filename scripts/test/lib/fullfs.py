"""The full-filesystem test (scripts/test/test-full-fs.sh runs it with the
whole data directory, live images and store, on a small loop-mounted ext4:
a host where guests' sparse images share the store's filesystem).

Three disks: "keep" (32 MiB) and two fillers (DISK_MIB each), together
larger than the filesystem.

Part 1, SIGTERM. The disks are written through NBD (random data, 4 KiB
aligned extents) with snapshots now and then, until the filesystem is
full: guest writes that need new blocks get ENOSPC (and leave each page
old or new), writes over written blocks go on, snapshot create is refused
with 507 below the reserve, snapshots that cannot be stored end `failed`
with a reason. Then:
  - SIGTERM: cairnd exits 0, no SIGBUS or Go fatal error in its log;
  - a filler file takes the filesystem's last bytes, and cairnd starts
    with 0 bytes free: the API answers, info says the store runs on its
    reserve and what to delete, health is ok with that warning, every disk
    reads back as acknowledged, no snapshot is `deleting`, every ready
    snapshot reads back as its oracle, verify is clean;
  - the way out: deleting the failed snapshots and the filler disks
    succeeds on the full filesystem, space comes back, a new snapshot of
    keep is ready and reads back as keep, verify is clean.

Part 2, kill -9 (FULL_ROUNDS rounds, default 20): from the state left
(the fillers made again), delete a snapshot or two and trim a range now
and then, then write and snapshot until the filesystem is full again, and
SIGKILL cairnd at a random moment of it. Restart (no SIGBUS), then: every
acknowledged write is on the disks (the one in flight: each page old or
new), no snapshot is `deleting`, every ready snapshot reads back as its
oracle, verify is clean; once a guest has taken a tenth of the reserve and
then frees space, the reserve is whole again. At the end, the way out
again and a clean SIGTERM.

Environment: T, CAIRND, DATA (the data directory, a mounted filesystem),
SEED, FULL_ROUNDS, DISK_MIB (each filler disk, default 192), RESERVE
(default 96M).
"""

import errno
import os
import re
import shutil
import threading
import time

import nbd

from cairntest import APIError, Daemon, Fatal, compare_export, main, rng_from_env, verify_clean

MiB = 1024 * 1024
PAGE = 4096
KEEP = "keep"  # a small disk that stays; the way out snapshots it
FILLERS = ("a", "b")  # large disks that fill the filesystem; the way out deletes them
DISKS = (KEEP,) + FILLERS
MAX_SNAPS = 3  # kept per disk between rounds (each is an oracle file)
FATAL_LOG = re.compile(rb"SIGBUS|fatal error|panic:|unexpected fault address")


def free_mib(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // MiB


class Guest:
    """One disk written through one NBD connection, with an oracle file of
    what it must read as. A write refused with ENOSPC is read back at once:
    every page it covers must be old or new, and the oracle takes what the
    disk holds."""

    def __init__(self, rep, d, name, oracle, size):
        self.rep = rep
        self.name = name
        self.size = size
        self.oracle = open(oracle, "r+b", buffering=0)
        self.pending = None  # (off, data) sent, not answered
        self.h = nbd.NBD()
        self.h.connect_uri(d.uri(name))
        self.written = 0
        self.refused = 0
        self.settled = 0  # unacknowledged writes found old or new page by page

    def close(self):
        self.oracle.close()
        try:
            self.h.shutdown()
        except nbd.Error:
            pass

    def old(self, off, n):
        self.oracle.seek(off)
        return self.oracle.read(n)

    def settle(self, off, new, got, what):
        """got is what the disk holds where new was written and not
        acknowledged: each page must be old or new; the oracle takes it."""
        old = self.old(off, len(new))
        bad = [off + p for p in range(0, len(new), PAGE)
               if got[p:p + PAGE] not in (old[p:p + PAGE], new[p:p + PAGE])]
        if bad:
            self.rep.bad(f"{self.name}: {what} left pages that are neither old nor new at {bad[:5]}")
        self.settled += 1
        self.oracle.seek(off)
        self.oracle.write(got)

    def write(self, off, data):
        """True when acknowledged, False when refused with ENOSPC."""
        self.pending = (off, data)
        try:
            self.h.pwrite(data, off)
        except nbd.Error as e:
            if e.errnum != errno.ENOSPC:
                raise
            self.refused += 1
            # Still pending until read back: a kill during the read leaves
            # its pages old or new, for settle_pending after the restart.
            self.settle(off, data, self.h.pread(len(data), off), f"a write refused for space ({len(data)} bytes at {off})")
            self.pending = None
            return False
        self.pending = None
        self.oracle.seek(off)
        self.oracle.write(data)
        self.written += 1
        return True

    def trim(self, off, n):
        self.pending = (off, bytes(n))
        self.h.trim(n, off)
        self.pending = None
        self.oracle.seek(off)
        self.oracle.write(bytes(n))


class FullFS:
    def __init__(self, rep):
        self.rep = rep
        self.T = os.environ["T"]
        self.data = os.environ["DATA"]
        self.rng = rng_from_env(rep)
        self.sizes = {KEEP: 32 * MiB}
        for disk in FILLERS:
            self.sizes[disk] = int(os.environ.get("DISK_MIB") or 192) * MiB
        reserve = os.environ.get("RESERVE") or "96M"
        self.d = Daemon(os.environ["CAIRND"], self.data, os.path.join(self.T, "cairnd.log"),
                        args=["--store-reserve", reserve, "--fuse=false"], pidfile=os.path.join(self.T, "cairnd.pid"))
        self.api = self.d.api
        self.guests = {}
        self.snaps = {disk: [] for disk in DISKS}  # names believed to exist, oldest first
        self.maybe = set()  # (disk, name) whose create or delete was interrupted
        self.checked = set()  # (disk, name) ready and read back already
        self.n = 0
        self.log_pos = 0
        self.filler = os.path.join(self.data, "filler")
        self.deleted = set()  # filler disks deleted by the way out

    # ------------------------------------------------------------ helpers

    def oracle(self, disk):
        return os.path.join(self.T, f"{disk}.oracle")

    def exp(self, disk, name):
        return os.path.join(self.T, f"{disk}@{name}.raw")

    def connect(self):
        for disk in self.live_disks():
            self.guests[disk] = Guest(self.rep, self.d, disk, self.oracle(disk), self.sizes[disk])

    def disconnect(self):
        for g in self.guests.values():
            g.close()
        self.guests = {}

    def live_disks(self):
        return [disk for disk in DISKS if disk not in self.deleted]

    def create_disks(self):
        for disk in DISKS:
            if disk in self.deleted or not os.path.exists(self.oracle(disk)):
                self.api.create_disk(disk, self.sizes[disk])
                with open(self.oracle(disk), "wb") as f:
                    f.truncate(self.sizes[disk])
                self.deleted.discard(disk)

    def check_log(self, what):
        with open(self.d.log, "rb") as f:
            f.seek(self.log_pos)
            new = f.read()
        self.log_pos += len(new)
        bad = [ln for ln in new.splitlines() if FATAL_LOG.search(ln)]
        self.rep.check(not bad, f"no SIGBUS, fault or panic in cairnd's log {what}",
                       b"\n".join(bad[:10]).decode(errors="replace"))

    def snapshot(self, disk):
        """Takes a snapshot; returns its name, or None when refused for
        space (507 with a message saying what to do)."""
        self.n += 1
        name = f"s{self.n}"
        shutil.copyfile(self.oracle(disk), self.exp(disk, name))
        self.snaps[disk].append(name)
        self.maybe.add((disk, name))
        try:
            self.api.snapshot(disk, name)
        except APIError as e:
            msg = str(e.body)
            self.rep.check(e.status == 507 and "free space" in msg and "delete snapshots" in msg,
                           "a snapshot refused for space says so and what to do", f"HTTP {e.status}: {msg}")
            self.forget(disk, name)
            return None
        self.maybe.discard((disk, name))
        return name

    def forget(self, disk, name):
        self.snaps[disk].remove(name)
        self.maybe.discard((disk, name))
        self.checked.discard((disk, name))
        if os.path.exists(self.exp(disk, name)):
            os.unlink(self.exp(disk, name))

    def delete(self, disk, name):
        self.maybe.add((disk, name))
        self.api.delete_snapshot(disk, name)
        self.forget(disk, name)

    def fill(self):
        """Writes and snapshots until the filesystem has refused 20 writes
        (writes over written blocks go on succeeding), or the disks have
        been written over twice."""
        refused = 0
        budget = 2 * sum(self.sizes[d] for d in self.live_disks())
        i = 0
        while refused < 20 and budget > 0:
            i += 1
            disk = KEEP if self.rng.random() < 0.1 else self.rng.choice(FILLERS)
            g = self.guests[disk]
            n = self.rng.choice([64, 256, 1024]) * 1024
            off = self.rng.randrange(0, (g.size - n) // PAGE + 1) * PAGE
            budget -= n
            if not g.write(off, self.rng.randbytes(n)):
                refused += 1
            if self.rng.random() < 0.02:
                self.snapshot(disk)
        return i

    def settle_pending(self):
        """After a kill: the write in flight may have reached the disk or
        not, page by page."""
        for disk, g in self.guests.items():
            if g.pending is not None:
                off, data = g.pending
                h = nbd.NBD()
                h.connect_uri(self.d.uri(disk))
                got = h.pread(len(data), off)
                h.shutdown()
                g.settle(off, data, got, "the write in flight at the kill")

    def check(self, what):
        """Disks as acknowledged, snapshots as their oracles, nothing
        deleting, verify clean."""
        scratch = os.path.join(self.T, "scratch.raw")
        for disk in self.live_disks():
            same, msg = compare_export(self.d.uri(disk), self.oracle(disk), scratch)
            self.rep.check(same, f"{what}: disk {disk} holds every acknowledged write", msg)
        for disk in self.live_disks():
            listed = {s["name"]: s for s in self.api.snapshots(disk)}
            deadline = time.monotonic() + 60
            while any(s["state"] in ("copying", "deleting") for s in listed.values()) and time.monotonic() < deadline:
                time.sleep(0.1)
                listed = {s["name"]: s for s in self.api.snapshots(disk)}
            for name in list(self.snaps[disk]):
                s = listed.pop(name, None)
                if s is None:
                    if (disk, name) in self.maybe:
                        self.forget(disk, name)
                    else:
                        self.rep.bad(f"{what}: snapshot {disk}@{name} is gone")
                        self.forget(disk, name)
                    continue
                self.maybe.discard((disk, name))
                if s["state"] == "deleting" or s["state"] == "copying":
                    self.rep.bad(f"{what}: snapshot {disk}@{name} still {s['state']} after 60s")
                elif s["state"] == "failed":
                    self.rep.check("full" in (s.get("reason") or ""), f"{what}: failed snapshot {disk}@{name} says the store is full",
                                   f"reason {s.get('reason')!r}")
                elif (disk, name) not in self.checked:
                    same, msg = compare_export(self.d.uri(f"{disk}@{name}"), self.exp(disk, name), scratch)
                    self.rep.check(same, f"{what}: ready snapshot {disk}@{name} reads back as its oracle", msg)
                    self.checked.add((disk, name))
            for name, s in listed.items():
                self.rep.bad(f"{what}: unexpected snapshot {disk}@{name}: {s}")
        verify_clean(self.rep, self.api, what)

    def trim_chains(self):
        """Keeps at most MAX_SNAPS snapshots per disk, deleting failed ones
        first: deletes on a full filesystem must succeed."""
        for disk in self.live_disks():
            while len(self.snaps[disk]) > MAX_SNAPS:
                states = {s["name"]: s["state"] for s in self.api.snapshots(disk)}
                failed = [n for n in self.snaps[disk] if states.get(n) == "failed"]
                self.delete(disk, failed[0] if failed else self.snaps[disk][0])

    def restore_reserve(self, r):
        """A guest that keeps writing into a full filesystem takes every
        byte the store frees, the reserve's cushion too. When the reserve
        has given away more than a tenth, a guest frees space (trims) and
        the reserve must be whole again soon."""
        st = self.api.req("GET", "/v1/info")["store"]
        if st["reserve_held_bytes"] * 10 >= st["reserve_bytes"] * 9:
            return
        g = self.guests[self.rng.choice(FILLERS)]
        n = st["reserve_bytes"] - st["reserve_held_bytes"] + 8 * MiB
        off = self.rng.randrange(0, (g.size - n) // PAGE + 1) * PAGE
        g.trim(off, n)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = self.api.req("GET", "/v1/info")["store"]
            if st["reserve_held_bytes"] == st["reserve_bytes"]:
                break
            time.sleep(0.2)
        self.rep.check(st["reserve_held_bytes"] == st["reserve_bytes"],
                       f"round {r}: the reserve is whole again once a guest freed {n // MiB} MiB", str(st))

    def way_out(self, what):
        """What an operator does: delete the failed snapshots, then the
        filler disks, until the store has room again; a new snapshot of
        keep must then be ready and read as keep."""
        rep = self.rep
        self.disconnect()
        for disk in self.live_disks():
            for s in self.api.snapshots(disk):
                if s["state"] == "failed":
                    self.delete(disk, s["name"])
        rep.ok(f"{what}: failed snapshots deleted")
        for disk in FILLERS:
            self.api.req("DELETE", f"/v1/disks/{disk}?with_snapshots=true")
            self.deleted.add(disk)
            for name in list(self.snaps[disk]):
                self.forget(disk, name)
            os.unlink(self.oracle(disk))
        rep.ok(f"{what}: disks {', '.join(FILLERS)} deleted")
        if os.path.exists(self.filler):
            os.unlink(self.filler)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = self.api.req("GET", "/v1/info")["store"]
            if st["state"] in ("ok", "low"):
                break
            time.sleep(0.5)
        rep.check(st["state"] in ("ok", "low"), f"{what}: space came back: store {st['state']}, "
                  f"{st['free_bytes'] // MiB} MiB free, reserve {st['reserve_held_bytes'] // MiB}/{st['reserve_bytes'] // MiB} MiB", str(st))
        name = self.snapshot(KEEP)
        if rep.check(name is not None, f"{what}: a new snapshot of {KEEP} is taken"):
            s = self.api.wait_snapshot(KEEP, name)
            if rep.check(s["state"] == "ready", f"{what}: {KEEP}@{name} ready", str(s)):
                same, msg = compare_export(self.d.uri(f"{KEEP}@{name}"), self.exp(KEEP, name), os.path.join(self.T, "scratch.raw"))
                rep.check(same, f"{what}: {KEEP}@{name} reads back as the disk", msg)
                self.checked.add((KEEP, name))
        verify_clean(rep, self.api, f"{what}: after the way out")

    # ------------------------------------------------------------ parts

    def part1(self):
        rep = self.rep
        self.d.start()
        fs = free_mib(self.data)
        rep.ok(f"cairnd started on a {fs} MiB free filesystem (data directory and store)")
        open(self.filler, "wb").close()
        self.create_disks()
        self.connect()
        writes = self.fill()
        st = self.api.req("GET", "/v1/info")["store"]
        refused = sum(g.refused for g in self.guests.values())
        settled = sum(g.settled for g in self.guests.values())
        rep.check(refused >= 20 and settled == refused and st["state"] in ("full", "reserve"),
                  f"filled: {writes} writes, {refused} refused with ENOSPC (each page of those old or new), store {st['state']} "
                  f"({st['free_bytes'] // MiB} MiB free): {st.get('warning', '')[:100]}...", str(st))
        # Writes over written blocks still go on.
        g = self.guests["a"]
        a = open(self.oracle("a"), "rb").read()
        off = next((o for o in range(0, g.size, PAGE) if a[o:o + PAGE] != bytes(PAGE)), None)
        ok = off is not None and g.write(off, self.rng.randbytes(PAGE))
        rep.check(ok, "a write over a written block succeeds on the full filesystem")
        name = self.snapshot("a")
        rep.check(name is None, "snapshot create on the full filesystem is refused (507)")
        self.disconnect()
        rc = self.d.stop()
        rep.check(rc == 0, "SIGTERM on the full filesystem: cairnd exits 0", f"exit {rc}: {self.d.log_tail()}")
        self.check_log("at the stop")

        # Start with 0 bytes free (the file was made while there was room).
        fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND)
        buf = bytes(MiB)
        n = MiB
        while n >= PAGE:
            try:
                os.write(fd, buf[:n])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                n //= 2
        os.close(fd)
        st = os.statvfs(self.data)
        rep.check(st.f_bavail * st.f_frsize < 64 * 1024,
                  f"a filler file took the filesystem's last bytes: {st.f_bavail * st.f_frsize} bytes free")
        t = self.d.start()
        self.check_log("at the start with 0 bytes free")
        info = self.api.req("GET", "/v1/info")
        st = info["store"]
        rep.check(st["state"] == "reserve" and "delete" in st.get("warning", ""),
                  f"started in {t:.1f}s with 0 bytes free; info: store {st['state']}: {st.get('warning', '')[:120]}...", str(st))
        health = self.api.req("GET", "/v1/health")
        rep.check(health["status"] == "ok" and health.get("warnings"), "health ok, with the space warning", str(health))
        self.check("after the start with 0 bytes free")
        self.way_out("part 1")

    def part2(self):
        rep = self.rep
        rounds = int(os.environ.get("FULL_ROUNDS") or 20)
        for r in range(1, rounds + 1):
            t0 = time.monotonic()
            failed_before = rep.failed
            if not self.d.alive():
                self.d.start()
            self.create_disks()
            self.connect()
            self.trim_chains()
            if self.rng.random() < 0.3:
                g = self.guests[self.rng.choice(FILLERS)]
                n = self.rng.randrange(1, 32) * MiB
                g.trim(self.rng.randrange(0, (g.size - n) // PAGE + 1) * PAGE, n)
            self.restore_reserve(r)
            killer = threading.Timer(self.rng.uniform(0.05, 2.5), self.d.proc.kill)
            killer.start()
            note = "filled"
            try:
                self.fill()
                if self.rng.random() < 0.5 and any(self.snaps.values()):
                    disk = self.rng.choice([d for d in self.live_disks() if self.snaps[d]])
                    self.delete(disk, self.snaps[disk][0])
                time.sleep(3)  # the kill lands on a full filesystem
            except (nbd.Error, OSError, APIError) as e:
                note = f"killed ({type(e).__name__})"
            killer.join()
            self.d.kill()
            self.check_log(f"round {r} before the restart")
            start = self.d.start()
            self.check_log(f"round {r} at the restart")
            self.settle_pending()
            self.disconnect()
            self.check(f"round {r}")
            st = self.api.req("GET", "/v1/info")["store"]
            rep.check(rep.failed == failed_before, f"round {r}/{rounds}: {note}, restart {start:.1f}s, store {st['state']} "
                      f"({st['free_bytes'] // MiB} MiB free, reserve {st['reserve_held_bytes'] // MiB} MiB), "
                      f"checks passed ({time.monotonic() - t0:.1f}s)")
        self.way_out("part 2")
        rc = self.d.stop()
        rep.check(rc == 0, "cairnd stopped with SIGTERM", f"exit {rc}")
        self.check_log("at the end")


def test(rep):
    f = FullFS(rep)
    f.part1()
    f.part2()


if __name__ == "__main__":
    main(test, "test-full-fs")
