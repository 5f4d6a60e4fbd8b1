"""The snapshot oracle test (scripts/test/test-snapshots.sh runs it).

Part 1, oracle: a libnbd writer does random writes, zero-writes and trims
(mixed sizes, unaligned too) on a disk and keeps the expected content in a
local file; at random moments it asks the API for a snapshot and copies the
oracle to expected/SNAP.raw. Every snapshot is then read back through its
NBD export with nbdcopy and compared with cmp; the dirty bitmaps
(nbdinfo --map=qemu:dirty-bitmap:..., qemu-img x-dirty-bitmap and
GET /changes) must list exactly the blocks the writer touched between the
snapshots; a rollback must make the live disk equal its snapshot (qemu-img
compare) and leave later snapshots intact; deleting the first, a middle and
the last snapshot must leave every other one intact and merge the change
sets; verify must find no fault.

Part 2, fio: snapshots taken while fio (ioengine=nbd, iodepth=32,
verify=crc32c) writes; fio's verify pass must succeed, every snapshot taken
under load must hold only whole fio blocks (header and checksum intact), and
a snapshot taken after fio stopped and a FLUSH must equal the live export.

At the end every snapshot is deleted and the store must hold no chunk and
no entry (nothing leaked).

Environment: T (scratch dir), CAIRND (binary), SEED, OPS, SNAPS, FIO_SIZE.
"""

import os
import struct
import subprocess
import time

import nbd

from cairntest import (APIError, Daemon, Writer, blocks_from_changes, compare_export,
                       describe_set_diff, dirty_blocks_nbdinfo, dirty_blocks_qemu_img, export_to_file, main,
                       qemu_compare, rng_from_env, verify_clean)

MiB = 1024 * 1024


class Chain:
    """The snapshots of one disk the test took, oldest first, with the
    blocks written in each one's epoch and its expected content."""

    def __init__(self, rep, d, disk, expected_dir):
        self.rep, self.d, self.api, self.disk = rep, d, d.api, disk
        self.dir = expected_dir
        self.names = []
        self.epoch = {}  # name -> blocks written between the previous snapshot and this one

    def path(self, name):
        return os.path.join(self.dir, f"{self.disk}@{name}.raw")

    def take(self, w, name):
        """Snapshots the disk between two writes of w."""
        self.epoch[name] = w.mark()
        s = self.api.snapshot(self.disk, name)
        w.snapshot_copy(self.path(name))
        self.names.append(name)
        if s["state"] not in ("copying", "ready"):
            self.rep.bad(f"snapshot {name} answered in state {s['state']}: {s}")
        return s

    def wait_ready(self):
        for n in self.names:
            s = self.api.wait_snapshot(self.disk, n)
            self.rep.check(s["state"] == "ready", f"{self.disk}@{n} ready",
                           f"state {s['state']} reason {s.get('reason')!r}")

    def check_all(self, why, scratch):
        bad = []
        for n in self.names:
            same, msg = compare_export(self.d.uri(f"{self.disk}@{n}"), self.path(n), scratch)
            if not same:
                bad.append(f"{n}: {msg}")
        self.rep.check(not bad, f"{why}: all {len(self.names)} snapshots of {self.disk} read back (nbdcopy, cmp) "
                       "equal to the oracle", "; ".join(bad))

    def changed(self, i, j):
        """Blocks written after snapshot i up to snapshot j (indexes)."""
        out = set()
        for n in self.names[i + 1:j + 1]:
            out |= self.epoch[n]
        return out

    def delete(self, name):
        i = self.names.index(name)
        self.api.delete_snapshot(self.disk, name)
        if i + 1 < len(self.names):  # its changes merge into its successor
            self.epoch[self.names[i + 1]] |= self.epoch[name]
        self.names.pop(i)
        del self.epoch[name]
        os.unlink(self.path(name))
        gone = self.api.get_snapshot(self.disk, name) is None
        self.rep.check(gone, f"delete {self.disk}@{name}", "still listed after delete")
        return i


def check_bitmaps(rep, d, chain, pairs, size, live_touched, qemu_pair=None):
    """Dirty bitmaps (nbdinfo, the changes API, once qemu-img) against the
    blocks the writer touched."""
    api = d.api
    for i, j in pairs:
        a, b = chain.names[i], chain.names[j]
        want = chain.changed(i, j)
        got = dirty_blocks_nbdinfo(d.uri(f"{chain.disk}@{b}"), a, size)
        rep.check(got == want, f"nbdinfo --map=qemu:dirty-bitmap:{a} {chain.disk}@{b}: {len(want)} changed blocks",
                  describe_set_diff(got, want))
        got = blocks_from_changes(api.changes(chain.disk, a, b))
        rep.check(got == want, f"GET /changes?from={a}&to={b}", describe_set_diff(got, want))
    if qemu_pair:
        i, j = qemu_pair
        a, b = chain.names[i], chain.names[j]
        want = chain.changed(i, j)
        got = dirty_blocks_qemu_img(d.nbd_sock, f"{chain.disk}@{b}", a, size)
        rep.check(got == want, f"qemu-img map x-dirty-bitmap=qemu:dirty-bitmap:{a} {chain.disk}@{b}",
                  describe_set_diff(got, want))
    if live_touched is not None:
        last = chain.names[-1]
        got = dirty_blocks_nbdinfo(d.uri(chain.disk), last, size)
        rep.check(got == live_touched, f"nbdinfo --map=qemu:dirty-bitmap:{last} on the live export",
                  describe_set_diff(got, live_touched))


def oracle_part(rep, d, T, rng):
    api = d.api
    size = 64 * MiB
    ops = int(os.environ.get("OPS") or 1500)
    nsnaps = int(os.environ.get("SNAPS") or 8)
    disk = "oracle"
    api.create_disk(disk, size)
    oracle = os.path.join(T, "oracle.raw")
    with open(oracle, "wb") as f:
        f.truncate(size)
    scratch = os.path.join(T, "scratch.raw")
    chain = Chain(rep, d, disk, os.path.join(T, "expected"))
    w = Writer(d.uri(disk), oracle, size, rng)
    w.fill(0.3)  # a base the first snapshot copies out while the writer goes on (copy-on-write)
    points = set(rng.sample(range(ops), nsnaps - 1))
    t0 = time.monotonic()
    for i in range(ops):
        if i in points:
            chain.take(w, f"s{len(chain.names) + 1}")
        w.random_op()
    chain.take(w, f"s{len(chain.names) + 1}")
    for _ in range(50):  # some writes after the last snapshot: the live export's bitmap
        w.random_op()
    rep.ok(f"writer: {w.ops} and {len(chain.names)} snapshots in {time.monotonic() - t0:.1f}s")
    chain.wait_ready()
    chain.check_all("after writing", scratch)
    n = len(chain.names)
    pairs = [(i, i + 1) for i in range(n - 1)] + [(0, 2), (2, n // 2 + 1), (0, n - 1)]
    check_bitmaps(rep, d, chain, pairs, size, w.touched, qemu_pair=(0, n - 1))

    # Rollback to a middle snapshot: refused while the writer is connected.
    target = chain.names[n // 2]
    try:
        api.rollback(disk, target)
        rep.bad("rollback with a writable client connected was accepted")
    except APIError as e:
        rep.check(e.status == 409, f"rollback refused while a client is connected (HTTP {e.status})", str(e))
    w.close()
    t = api.wait_task(api.rollback_idle(disk, target))
    rep.check(t["state"] == "succeeded", f"rollback to {target}: task done", str(t))
    same, out = qemu_compare(d.uri(disk), chain.path(target))
    rep.check(same, f"after rollback the live disk equals {target} (qemu-img compare)", out)
    chain.check_all("after rollback", scratch)
    # Writes after the rollback, and a snapshot of them.
    with open(chain.path(target), "rb") as src, open(oracle, "r+b") as dst:
        dst.write(src.read())
    w = Writer(d.uri(disk), oracle, size, rng)
    for _ in range(200):
        w.random_op()
    chain.take(w, "after-rollback")
    chain.wait_ready()
    same, msg = compare_export(d.uri(f"{disk}@after-rollback"), chain.path("after-rollback"), scratch)
    rep.check(same, "snapshot after the rollback equals the oracle", msg)
    w.close()

    # Delete the first, a middle and the last snapshot; check the rest and
    # the merged change sets each time.
    for which in ("first", "middle", "last"):
        names = chain.names
        victim = {"first": names[0], "middle": names[len(names) // 2], "last": names[-1]}[which]
        i = chain.delete(victim)
        chain.check_all(f"after deleting the {which} snapshot {victim}", scratch)
        if 0 < i < len(chain.names):
            check_bitmaps(rep, d, chain, [(i - 1, i)], size, None)
    verify_clean(rep, api, "after the oracle run")
    return chain


FIO_MAGIC = 0xACCA
_CRC32C = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C.append(_c)


def crc32c(data):
    """CRC32C as fio's verify=crc32c computes it (no final inversion)."""
    c = 0xFFFFFFFF
    t = _CRC32C
    for x in data:
        c = t[(c ^ x) & 0xFF] ^ (c >> 8)
    return c


def check_fio_image(path, rng, min_bs=4096, sample=48):
    """Walks an image fio wrote with verify=crc32c and a random map: every
    min_bs unit is either zeros or inside a whole fio block whose header
    (magic, offset, length, header crc) is intact; the data crc of a sample
    of blocks is checked too. Returns (blocks, problems)."""
    problems = []
    blocks = []
    zero = bytes(min_bs)
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data) and len(problems) < 10:
        unit = data[pos:pos + min_bs]
        if unit == zero:
            pos += min_bs
            continue
        if len(unit) < 40:
            problems.append(f"{pos}: short tail")
            break
        magic, vtype, ln, _seed, off, _ts, _tn, _th, _nio, hcrc = struct.unpack_from("<HHIQQIIHHI", data, pos)
        if magic != FIO_MAGIC or off != pos or ln < min_bs or ln % min_bs or pos + ln > len(data):
            problems.append(f"{pos}: no fio block header (magic {magic:#x}, offset {off}, len {ln})")
            pos += min_bs
            continue
        if crc32c(data[pos:pos + 36]) != hcrc:
            problems.append(f"{pos}: fio header crc mismatch")
        blocks.append((pos, ln))
        pos += ln
    for pos, ln in rng.sample(blocks, min(sample, len(blocks))):
        want = struct.unpack_from("<I", data, pos + 40)[0]
        if crc32c(data[pos + 44:pos + ln]) != want:
            problems.append(f"{pos}+{ln}: fio data crc32c mismatch (torn or mixed block)")
    return blocks, problems


def fio_part(rep, d, T, rng):
    api = d.api
    size = int(os.environ.get("FIO_SIZE") or 256 * MiB)
    disk = "fio"
    api.create_disk(disk, size)
    uri = d.uri(disk)
    cmd = ["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bsrange=4k-64k",
           "--iodepth=32", f"--size={size}", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
           f"--randseed={rng.randrange(1 << 30)}", "--output-format=normal"]
    log = open(os.path.join(T, "fio.log"), "wb")
    fio = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    taken = []
    holds = []
    while fio.poll() is None and len(taken) < 12:
        time.sleep(rng.uniform(0.1, 0.4))
        if fio.poll() is not None:
            break
        name = f"load{len(taken) + 1}"
        s = api.snapshot(disk, name)
        taken.append(name)
        holds.append(s["hold_us"])
    rc = fio.wait()
    log.close()
    with open(os.path.join(T, "fio.log"), "rb") as f:
        out = f.read().decode(errors="replace")
    bad_lines = [ln for ln in out.splitlines() if "verify" in ln.lower() and ("fail" in ln.lower() or "bad" in ln.lower())]
    rep.check(rc == 0 and not bad_lines, f"fio randwrite iodepth=32 verify=crc32c with {len(taken)} snapshots taken "
              f"under load (hold max {max(holds, default=0):.0f} us): verify passed", f"exit {rc}: {out[-1500:]}")
    rep.check(len(taken) >= 2, f"{len(taken)} snapshots taken while fio wrote", "fio finished too fast: raise FIO_SIZE")

    # Quiesced: fio stopped; FLUSH; snapshot; it must equal the live disk.
    h = nbd.NBD()
    h.connect_uri(uri)
    h.flush()
    h.shutdown()
    del h
    api.snapshot(disk, "quiesced")
    s = api.wait_snapshot(disk, "quiesced")
    rep.check(s["state"] == "ready", "quiesced snapshot ready", str(s))
    same, out = qemu_compare(d.uri(f"{disk}@quiesced"), uri)
    rep.check(same, "quiesced snapshot equals the live export (qemu-img compare)", out)

    scratch = os.path.join(T, "fio-snap.raw")
    for name in taken:
        s = api.wait_snapshot(disk, name)
        rep.check(s["state"] == "ready", f"{disk}@{name} ready", str(s))
        export_to_file(d.uri(f"{disk}@{name}"), scratch)
        blocks, problems = check_fio_image(scratch, rng)
        rep.check(not problems, f"{disk}@{name}: {len(blocks)} whole fio blocks, headers and sampled crc32c intact",
                  "; ".join(problems))
    os.unlink(scratch)
    verify_clean(rep, api, "after the fio run")
    return taken + ["quiesced"]


def test(rep):
    T = os.environ["T"]
    d = Daemon(os.environ["CAIRND"], os.path.join(T, "data"), os.path.join(T, "cairnd.log"),
               pidfile=os.path.join(T, "cairnd.pid"))
    os.makedirs(os.path.join(T, "expected"), exist_ok=True)
    d.start()
    rep.ok("cairnd started")
    rng = rng_from_env(rep)
    chain = oracle_part(rep, d, T, rng)
    fio_snaps = fio_part(rep, d, T, rng)

    # Nothing leaked: with every snapshot gone the store holds nothing.
    for n in list(chain.names):
        chain.delete(n)
    for n in fio_snaps:
        d.api.delete_snapshot("fio", n)
    st = d.api.store()
    rep.check(st["chunks"] == 0 and st["data_entries"] == 0 and st["zero_entries"] == 0,
              "every snapshot deleted: the store holds no chunk and no entry", str(st))
    verify_clean(rep, d.api, "of the empty store")
    rc = d.stop()
    rep.check(rc == 0, "cairnd stopped with SIGTERM", f"exit {rc}: {d.log_tail()}")


if __name__ == "__main__":
    main(test, "test-snapshots")
