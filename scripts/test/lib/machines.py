"""Machine snapshots against the real cairnd and real clients (test-machines.sh).

Part 1, one instant: machines of 2 and of 8 disks. A writer writes the same
sequence number to every disk of a machine in order (disk 0, then disk 1,
..., each write answered before the next) through NBD while fio writes
random blocks to every disk (nbd engine, iodepth 8, verify) and machine
snapshots are taken with the CLI. In every machine snapshot the numbers
must fall along the disks by at most one: no later disk's write without
the earlier disk's (nothing answered after the instant), and disk 0 at
most one ahead of the last disk (nothing answered before it missing).
(What a missing hold would break lasts microseconds, the time between two
disks' seals, far shorter than an NBD round trip, so this run checks the
property under real load but would rarely catch such a bug: the unit test
that does is cow/group_test.go TestGroupSnapshotOneInstant, which pauses
between the members' seals.)

Part 2, crashes: cairnd killed with SIGKILL while the writer runs and
machine snapshots are taken; after each restart every machine snapshot
has all its members and satisfies the same rule once copied out.

Part 3, the CLI: show, list, consistency without an agent, rollback of the
whole machine, the refusals (a member snapshot, a member disk, a machine
with snapshots), delete.
"""

import os
import random
import signal
import struct
import subprocess
import threading
import time

import nbd

from cairntest import Daemon, Fatal, main, rng_from_env

MiB = 1 << 20
SEQ_OFF = 0  # the writer's sector of every disk; fio writes from 1 MiB on


class SeqWriter(threading.Thread):
    """Writes n to every disk in order, each answered before the next."""

    def __init__(self, d, disks):
        super().__init__(daemon=True)
        self.uris = [d.uri(x) for x in disks]
        self.stop = threading.Event()
        self.n = 0
        self.err = None

    def run(self):
        hs = []
        try:
            for u in self.uris:
                h = nbd.NBD()
                h.connect_uri(u)
                hs.append(h)
            while not self.stop.is_set():
                self.n += 1
                buf = struct.pack("<Q", self.n) + bytes(4088)
                for h in hs:
                    h.pwrite(buf, SEQ_OFF)
        except Exception as e:  # cairnd killed: the writer ends
            self.err = e
        finally:
            for h in hs:
                try:
                    h.shutdown()
                except Exception:
                    pass


def seq_of(d, export):
    h = nbd.NBD()
    h.connect_uri(d.uri(export))
    try:
        return struct.unpack("<Q", h.pread(8, SEQ_OFF))[0]
    finally:
        h.shutdown()


def cairn(d, *args, check=True):
    cli = os.environ["CAIRN"]
    r = subprocess.run([cli, "--socket", d.api.sock] + list(args), capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise Fatal(f"cairn {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def make_machine(d, name, n, size):
    disks = [f"{name}-d{i}" for i in range(n)]
    for x in disks:
        d.api.create_disk(x, size)
    cairn(d, "machine", "create", name, "--disk", ",".join(disks))
    return disks


def wait_machine_snapshot(d, machine, name, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        s = d.api.req("GET", f"/v1/machines/{machine}/snapshots/{name}")
        if s["state"] != "copying":
            return s
        if time.monotonic() > deadline:
            raise Fatal(f"machine snapshot {machine}@{name} still copying")
        time.sleep(0.05)


def check_instant(rep, d, machine, disks, names):
    """Every machine snapshot in names: the writer's numbers fall along the
    disks by at most one."""
    bad = []
    for name in names:
        s = wait_machine_snapshot(d, machine, name)
        if s["state"] != "ready" or len(s["members"]) != len(disks):
            bad.append(f"{name}: {s['state']} with {len(s['members'])} members")
            continue
        vals = [seq_of(d, f"{x}@{name}") for x in disks]
        if any(vals[i] > vals[i - 1] for i in range(1, len(vals))) or vals[0] > vals[-1] + 1:
            bad.append(f"{name}: {vals}")
    rep.check(not bad, f"{machine}: {len(names)} machine snapshots each hold one instant across {len(disks)} disks", "; ".join(bad[:5]))


def part_instant(rep, d, rng, n_disks):
    machine = f"m{n_disks}"
    size = 64 * MiB
    disks = make_machine(d, machine, n_disks, size)
    fios = []
    for i, x in enumerate(disks):
        log = open(os.path.join(os.environ["T"], f"fio-{x}.log"), "wb")
        fios.append((subprocess.Popen(["fio", "--name=load", "--ioengine=nbd", f"--uri={d.uri(x)}", "--rw=randwrite",
                                       "--bs=4k", "--iodepth=8", f"--offset={MiB}", f"--size={size - MiB}",
                                       "--time_based", "--runtime=6", "--verify=crc32c", "--do_verify=0",
                                       f"--randseed={rng.randrange(1 << 30)}"], stdout=log, stderr=subprocess.STDOUT), log))
    w = SeqWriter(d, disks)
    w.start()
    names = []
    t_end = time.monotonic() + 5
    while time.monotonic() < t_end:
        name = f"s{len(names)}"
        cairn(d, "machine", "snapshot", "create", machine, name, "--consistency", "crash", "-o", "json")
        names.append(name)
        time.sleep(rng.uniform(0.05, 0.3))
    w.stop.set()
    w.join()
    rcs = []
    for p, log in fios:
        rcs.append(p.wait())
        log.close()
    rep.check(w.err is None and w.n > len(names), f"{machine}: the writer wrote {w.n} rounds across {n_disks} disks under fio", str(w.err))
    rep.check(all(rc == 0 for rc in rcs), f"{machine}: fio on every disk finished", f"exits {rcs}")
    check_instant(rep, d, machine, disks, names)


def part_crash(rep, d, rng, rounds):
    machine = "crash"
    disks = make_machine(d, machine, 3, 16 * MiB)
    checked = 0
    for r in range(rounds):
        w = SeqWriter(d, disks)
        w.start()
        kill_at = time.monotonic() + rng.uniform(0.3, 1.5)
        i = 0
        while time.monotonic() < kill_at:
            d.api.call("POST", f"/v1/machines/{machine}/snapshots", {"name": f"r{r}-{i}", "consistency": "crash"})
            i += 1
            time.sleep(rng.uniform(0.01, 0.1))
        d.kill(signal.SIGKILL)
        w.stop.set()
        w.join()
        d.start()
        snaps = d.api.req("GET", f"/v1/machines/{machine}/snapshots")
        names = [s["name"] for s in snaps]
        for s in snaps:
            for m in s["members"]:
                if d.api.get_snapshot(m["disk"], m["snapshot"]) is None:
                    rep.bad(f"round {r}: machine snapshot {s['name']} lost member {m['disk']}")
        check_instant(rep, d, machine, disks, names)
        checked += len(names)
        for name in names:  # keep the chains short
            d.api.req("DELETE", f"/v1/machines/{machine}/snapshots/{name}")
    rep.check(checked > 0, f"{rounds} kill -9 rounds during machine snapshots: {checked} machine snapshots checked after restarts")


def part_cli(rep, d):
    disks = make_machine(d, "vm", 2, 4 * MiB)
    for x, pat in zip(disks, (0x11, 0x22)):
        h = nbd.NBD()
        h.connect_uri(d.uri(x))
        h.pwrite(bytes([pat]) * 65536, 0)
        h.shutdown()
    out = cairn(d, "machine", "snapshot", "create", "vm", "before", "--wait").stdout
    rep.check("crash (auto requested)" in out and "no guest agent socket" in out,
              "auto without an agent: crash-consistent, and the snapshot says why", out)
    for x in disks:
        h = nbd.NBD()
        h.connect_uri(d.uri(x))
        h.pwrite(b"\x99" * 65536, 0)
        h.shutdown()
    r = cairn(d, "snapshot", "delete", disks[0], "before", check=False)
    rep.check(r.returncode == 1 and "machine snapshot vm@before" in r.stderr, "a member snapshot alone cannot be deleted", r.stderr)
    r = cairn(d, "disk", "delete", disks[1], check=False)
    rep.check(r.returncode == 1 and 'belongs to machine "vm"' in r.stderr, "a member disk cannot be deleted", r.stderr)
    cairn(d, "machine", "snapshot", "rollback", "vm", "before")
    ok = True
    for x, pat in zip(disks, (0x11, 0x22)):
        h = nbd.NBD()
        h.connect_uri(d.uri(x))
        ok = ok and h.pread(65536, 0) == bytes([pat]) * 65536
        h.shutdown()
    rep.check(ok, "machine rollback restored every disk")
    r = cairn(d, "machine", "delete", "vm", check=False)
    rep.check(r.returncode == 1 and "--with-snapshots" in r.stderr, "a machine with snapshots is kept without --with-snapshots", r.stderr)
    cairn(d, "machine", "delete", "vm", "--with-snapshots")
    r = cairn(d, "disk", "list")
    rep.check(all(x in r.stdout for x in disks), "deleting the machine kept its disks", r.stdout)


def test(rep):
    T = os.environ["T"]
    rng = rng_from_env(rep)
    d = Daemon(os.environ["CAIRND"], os.path.join(T, "data"), os.path.join(T, "cairnd.log"),
               pidfile=os.path.join(T, "cairnd.pid"))
    d.start()
    try:
        part_instant(rep, d, rng, 2)
        part_instant(rep, d, rng, 8)
        part_crash(rep, d, rng, int(os.environ.get("ROUNDS") or 5))
        part_cli(rep, d)
    finally:
        if d.alive() and d.stop() != 0:
            rep.bad("cairnd did not stop cleanly")


if __name__ == "__main__":
    main(test, "test-machines")
