"""Clone and image benchmarks (scripts/bench/clone.sh runs this; its
header says what each section measures). Prints a markdown report."""

import json
import os
import random
import statistics
import subprocess
import time

import nbd

from cairntest import Daemon

GiB = 1 << 30
MiB = 1 << 20
BS = 64 * 1024

RUNS = int(os.environ.get("RUNS", "5"))
RUNTIME = int(os.environ.get("RUNTIME", "10"))
WORK = os.environ["WORK"]
SECTIONS = os.environ.get("SECTIONS", "create firstwrite reads flatten provision").split()


def size_of(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


SIZE = size_of(os.environ.get("SIZE", "1G"))


def ms(x):
    return f"{x * 1000:.2f} ms"


def us(x):
    return f"{x * 1e6:.0f} µs"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Bench:
    def __init__(self):
        self.d = Daemon(os.environ["CAIRND"], os.path.join(WORK, "data"), os.path.join(WORK, "cairnd.log"))
        self.api = self.d.api
        self.d.start()
        self.n = 0

    def name(self, tag):
        self.n += 1
        return f"{tag}{self.n}"

    def write_random(self, export, nbytes, off=0):
        h = nbd.NBD()
        h.connect_uri(self.d.uri(export))
        chunk = 4 * MiB
        for o in range(off, off + nbytes, chunk):
            h.pwrite(os.urandom(min(chunk, off + nbytes - o)), o)
        h.flush()
        h.shutdown()

    def disk_with_snapshot(self, size, data):
        disk = self.name("src")
        self.api.create_disk(disk, size)
        if data:
            self.write_random(disk, data)
        self.api.snapshot(disk, "snap")
        self.api.wait_snapshot(disk, "snap")
        return disk

    def timed_api(self, method, path, body):
        t0 = time.perf_counter()
        out = self.api.req(method, path, body)
        return time.perf_counter() - t0, out

    # ------------------------------------------------------------ sections

    def create(self):
        print("### Clone create time\n")
        print("Median (and max) of the API round trip of `POST /v1/disks` with `from` over"
              f" {RUNS} clones of a snapshot of a disk with 64 MiB written; the peer is"
              " `qemu-img create -f qcow2 -b` on a sparse raw file of the same size (process"
              " start included: it is what a user runs).\n")
        print("| disk size | cairn clone (median / max) | qemu-img create -b (median) | ratio |")
        print("| --- | --- | --- | --- |")
        for size in (GiB, 64 * GiB, 1 << 40):
            disk = self.disk_with_snapshot(size, 64 * MiB)
            times = []
            for _ in range(RUNS):
                c = self.name("c")
                t, _ = self.timed_api("POST", "/v1/disks", {"name": c, "from": f"{disk}@snap"})
                times.append(t)
            raw = os.path.join(WORK, "base.raw")
            with open(raw, "wb") as f:
                f.truncate(size)
            qt = []
            for i in range(RUNS):
                ov = os.path.join(WORK, f"ov{i}.qcow2")
                t0 = time.perf_counter()
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", ov], check=True)
                qt.append(time.perf_counter() - t0)
                os.unlink(ov)
            os.unlink(raw)
            m, q = statistics.median(times), statistics.median(qt)
            print(f"| {size // GiB} GiB | {ms(m)} / {ms(max(times))} | {ms(q)} | {q / m:.1f}x faster |")
        print()

    def firstwrite(self):
        print("### First write to a clone\n")
        disk = self.disk_with_snapshot(SIZE, SIZE)
        clone = self.name("c")
        self.api.req("POST", "/v1/disks", {"name": clone, "from": f"{disk}@snap"})
        nblocks = SIZE // BS
        blocks = random.sample(range(nblocks), min(nblocks, 400))
        buf = os.urandom(4096)

        def lat(export, offs):
            h = nbd.NBD()
            h.connect_uri(self.d.uri(export))
            out = []
            for o in offs:
                t0 = time.perf_counter()
                h.pwrite(buf, o)
                out.append(time.perf_counter() - t0)
            h.shutdown()
            return out
        first = lat(clone, [b * BS + 8192 for b in blocks])
        again = lat(clone, [b * BS + 16384 for b in blocks])
        parent = lat(disk, [b * BS + 8192 for b in blocks])
        parent_again = lat(disk, [b * BS + 16384 for b in blocks])
        print(f"{len(blocks)} writes of 4 KiB at 8 KiB into distinct 64 KiB blocks, one at a time"
              " (QD1, libnbd from Python: the client's own cost is in every figure).\n")
        print("| write | median | p99 |")
        print("| --- | --- | --- |")
        for label, xs in (("clone: first write to a block it does not hold (copy-up of 64 KiB + change-tracking bit)", first),
                          ("clone: a block it already holds", again),
                          ("parent disk: first write to a block since its snapshot (change-tracking bit)", parent),
                          ("parent disk: a block already written since", parent_again)):
            print(f"| {label} | {us(statistics.median(xs))} | {us(pct(xs, 99))} |")
        print(f"\nFirst write to a clone block / first write to a parent block since its snapshot, medians:"
              f" {statistics.median(first) / statistics.median(parent):.2f}\n")

    def fio(self, export, rw, bs, iodepth):
        uri = self.d.uri(export)
        out = subprocess.run(["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
                              f"--iodepth={iodepth}", f"--runtime={RUNTIME}", "--time_based", "--ramp_time=1",
                              "--output-format=json", "--readonly"], check=True, capture_output=True, text=True).stdout
        j = json.loads(out[out.index("{"):])
        r = j["jobs"][0]["read"]
        return r["iops"], r["bw_bytes"]

    def reads(self):
        print("### Reads of a fresh clone\n")
        disk = self.disk_with_snapshot(SIZE, SIZE)
        clone = self.name("c")
        self.api.req("POST", "/v1/disks", {"name": clone, "from": f"{disk}@snap"})
        print(f"fio (nbd engine) on {SIZE // MiB} MiB of random data, {RUNTIME} s per run, median of {RUNS} runs;"
              " the clone has written nothing, so every read goes through to the store.\n")
        print("| job | fresh clone | parent's snapshot export | ratio |")
        print("| --- | --- | --- | --- |")
        for rw, bs, qd, unit in (("randread", "4k", 8, "IOPS"), ("read", "1M", 4, "MB/s")):
            c, s = [], []
            for _ in range(RUNS):
                for lst, exp in ((c, clone), (s, f"{disk}@snap")):
                    iops, bw = self.fio(exp, rw, bs, qd)
                    lst.append(iops if unit == "IOPS" else bw / 1e6)
            mc, msn = statistics.median(c), statistics.median(s)
            print(f"| {rw} {bs} QD{qd} | {mc:.0f} {unit} | {msn:.0f} {unit} | {mc / msn:.2f} |")
        print()

    def flatten(self):
        print("### Flatten\n")
        disk = self.disk_with_snapshot(SIZE, SIZE)
        detach, hyd = [], []
        for hydrate in (False, True):
            for _ in range(RUNS if not hydrate else max(1, RUNS // 2)):
                clone = self.name("c")
                self.api.req("POST", "/v1/disks", {"name": clone, "from": f"{disk}@snap"})
                t0 = time.perf_counter()
                t = self.api.req("POST", f"/v1/disks/{clone}/flatten", {"hydrate": hydrate})
                t = self.api.wait_task(t)
                el = time.perf_counter() - t0
                assert t["state"] == "succeeded", t
                (hyd if hydrate else detach).append(el)
                self.api.req("DELETE", f"/v1/disks/{clone}")
        print(f"A clone of {SIZE // MiB} MiB of random data (nothing written by the clone), task wall time:\n")
        print("| flatten | median | throughput |")
        print("| --- | --- | --- |")
        print(f"| detach only (metadata) | {ms(statistics.median(detach))} | {SIZE / statistics.median(detach) / 1e6:.0f} MB/s of disk |")
        print(f"| --hydrate (detach + copy every block into the image) | {statistics.median(hyd):.2f} s |"
              f" {SIZE / statistics.median(hyd) / 1e6:.0f} MB/s |")
        print()

    def provision(self):
        print("### Provisioning a machine from a 4-disk image\n")
        disks = []
        for i in range(4):
            d = self.name("m")
            self.api.create_disk(d, 64 * GiB)
            self.write_random(d, 16 * MiB)
            disks.append(d)
        self.api.req("POST", "/v1/machines", {"name": "golden", "disks": disks})
        t = self.api.wait_task(self.api.req("POST", "/v1/images", {"name": "img", "machine": "golden"}))
        assert t["state"] == "succeeded", t
        prov, seq = [], []
        for _ in range(RUNS):
            m = self.name("vm")
            t, _ = self.timed_api("POST", "/v1/machines", {"name": m, "from_image": "img"})
            prov.append(t)
        self.api.snapshot(disks[0], "snap")
        self.api.wait_snapshot(disks[0], "snap")
        for _ in range(RUNS):
            t0 = time.perf_counter()
            for _ in range(4):
                self.api.req("POST", "/v1/disks", {"name": self.name("k"), "from": f"{disks[0]}@snap"})
            seq.append(time.perf_counter() - t0)
        print(f"Four disks of 64 GiB (16 MiB written each), API round trip, median of {RUNS}:\n")
        print("| operation | median | max |")
        print("| --- | --- | --- |")
        print(f"| machine create --from-image (4 clones + the machine) | {ms(statistics.median(prov))} | {ms(max(prov))} |")
        print(f"| 4 clone creates one after the other | {ms(statistics.median(seq))} | {ms(max(seq))} |")
        print()

    def run(self):
        try:
            for s in SECTIONS:
                getattr(self, s)()
        finally:
            self.d.stop()


if __name__ == "__main__":
    Bench().run()
