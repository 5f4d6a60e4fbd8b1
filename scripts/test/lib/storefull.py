"""The store-full test (scripts/test/test-store-full.sh runs it with
DATA/store on a small loop-mounted ext4 filesystem).

A small disk gets a snapshot that must stay intact. A disk far larger than
the store's filesystem is filled with fio; then, while fio (ioengine=nbd,
iodepth=32, verify=crc32c) rewrites it at random, a snapshot of the whole
disk is taken. It cannot fit: it must turn `failed` with a reason saying
the store is full, fio must finish with its verify pass clean, cairnd must
stay up, the small disk's snapshot must still read back right and verify
must be clean. After the failed snapshot is deleted the space must come
back (value-log GC) and a new snapshot must succeed.

Environment: T, CAIRND, DATA (the data dir, DATA/store mounted), SEED,
BIG_SIZE (MiB, default 1024), RESERVE (default 96M), SPACE_WAIT (seconds
to wait for the space to come back, default 45), CAIRND_ARGS (more flags).
"""

import os
import subprocess
import time

from cairntest import Daemon, Fatal, Writer, compare_export, main, rng_from_env, verify_clean

MiB = 1024 * 1024


def free_mib(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // MiB


def mib(size):
    """MiB in a size such as 64M or 1G."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024}
    if size[-1:].upper() in units:
        return int(float(size[:-1]) * units[size[-1].upper()])
    return int(size) // MiB


def fio(d, disk, size, extra, log):
    cmd = ["fio", "--name=" + disk, "--ioengine=nbd", f"--uri={d.uri(disk)}", f"--size={size}",
           "--verify=crc32c", "--verify_fatal=1"] + extra
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def fio_result(p, log):
    rc = p.wait()
    with open(log, "rb") as f:
        out = f.read().decode(errors="replace")
    return rc, out


def test(rep):
    T = os.environ["T"]
    data = os.environ["DATA"]
    store = os.path.join(data, "store")
    reserve = os.environ.get("RESERVE") or "96M"
    big = int(os.environ.get("BIG_SIZE") or 1024) * MiB
    rng = rng_from_env(rep)
    d = Daemon(os.environ["CAIRND"], data, os.path.join(T, "cairnd.log"), args=["--store-reserve", reserve] + os.environ.get("CAIRND_ARGS", "").split(),
               pidfile=os.path.join(T, "cairnd.pid"))
    d.start()
    api = d.api
    fs_free = free_mib(store)
    rep.ok(f"cairnd started with its store on a {fs_free} MiB free filesystem, --store-reserve {reserve}")
    room = fs_free - mib(reserve)
    if big // MiB < 2 * room:
        raise Fatal(f"BIG_SIZE {big // MiB} MiB must be at least twice the {room} MiB the store may fill")

    # A small disk with a snapshot that must survive the big one's failure.
    small = 32 * MiB
    api.create_disk("small", small)
    oracle = os.path.join(T, "small.raw")
    with open(oracle, "wb") as f:
        f.truncate(small)
    w = Writer(d.uri("small"), oracle, small, rng)
    for _ in range(300):
        w.random_op()
    api.snapshot("small", "keep")
    w.snapshot_copy(os.path.join(T, "keep.raw"))
    w.close()
    s = api.wait_snapshot("small", "keep")
    rep.check(s["state"] == "ready", "small@keep ready", str(s))

    # Fill the big disk with incompressible, unique data (verify headers).
    api.create_disk("big", big)
    p = fio(d, "big", big, ["--rw=write", "--bs=1M", "--iodepth=8", "--do_verify=0"], os.path.join(T, "fill.log"))
    rc, out = fio_result(p, os.path.join(T, "fill.log"))
    rep.check(rc == 0, f"fio filled the {big // MiB} MiB disk", out[-1000:])

    # The load, and a snapshot that cannot fit taken under it.
    log = os.path.join(T, "load.log")
    p = fio(d, "big", big, ["--rw=randwrite", "--bsrange=4k-64k", "--iodepth=32", "--do_verify=1",
                            f"--randseed={rng.randrange(1 << 30)}"], log)
    time.sleep(0.3)
    s = api.snapshot("big", "huge")
    rep.check(s["state"] == "copying", "snapshot big@huge taken under fio load (copying)", str(s))
    rc, out = fio_result(p, log)
    bad = [ln for ln in out.splitlines() if "verify" in ln.lower() and ("fail" in ln.lower() or "bad" in ln.lower())]
    rep.check(rc == 0 and not bad, "fio randwrite iodepth=32 verify=crc32c finished, verify passed while the store filled",
              f"exit {rc}: {out[-1500:]}")
    s = api.wait_snapshot("big", "huge", timeout=300)
    reason = s.get("reason") or ""
    rep.check(s["state"] == "failed" and "full" in reason.lower(),
              f"big@huge failed with a store-full reason: {reason!r}", f"state {s['state']}")
    rep.check(d.alive(), "cairnd still running", d.log_tail())
    rep.info(f"store filesystem: {free_mib(store)} MiB free after the failure; store {api.store()}")

    same, msg = compare_export(d.uri("small@keep"), os.path.join(T, "keep.raw"), os.path.join(T, "scratch.raw"))
    rep.check(same, "small@keep still reads back equal to its oracle", msg)
    verify_clean(rep, api, "after the store filled")

    # Delete the failed snapshot: its space comes back and can be used.
    api.delete_snapshot("big", "huge")
    rep.check(api.get_snapshot("big", "huge") is None, "failed snapshot big@huge deleted")
    wait = float(os.environ.get("SPACE_WAIT") or 45)
    t0 = time.monotonic()
    want = mib(reserve) + 64  # the reserve, and room for the next snapshot (29 MiB)
    while free_mib(store) < want and time.monotonic() < t0 + wait:
        time.sleep(0.5)
    rep.check(free_mib(store) >= want, f"space given back within {time.monotonic() - t0:.0f}s: {free_mib(store)} MiB "
              f"free on the store's filesystem (want {want}; {fs_free} at the start)",
              f"store {api.store()} (value-log GC did not give the deleted chunks' space back)")
    w = Writer(d.uri("small"), oracle, small, rng)
    w.fill(0.9)
    api.snapshot("small", "after")
    w.snapshot_copy(os.path.join(T, "after.raw"))
    w.close()
    s = api.wait_snapshot("small", "after")
    if rep.check(s["state"] == "ready", "a new snapshot after the delete is ready", str(s)):
        same, msg = compare_export(d.uri("small@after"), os.path.join(T, "after.raw"), os.path.join(T, "scratch.raw"))
        rep.check(same, "small@after reads back equal to its oracle", msg)
    verify_clean(rep, api, "at the end")
    rc = d.stop()
    rep.check(rc == 0, "cairnd stopped with SIGTERM", f"exit {rc}")


if __name__ == "__main__":
    main(test, "test-store-full")
