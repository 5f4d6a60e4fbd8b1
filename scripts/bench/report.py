#!/usr/bin/env python3
"""Markdown tables from a benchmark's raw.tsv (see nbd.sh): medians over the
runs, cairnd's ratio to each peer, server CPU per GiB and per operation.

Usage: report.py RAW_TSV CLK_TCK
"""
import csv
import statistics
import sys

GIB = 1 << 30


def load(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def ordered(rows, key):
    seen = []
    for r in rows:
        if r[key] not in seen:
            seen.append(r[key])
    return seen


def fmt(v, unit=""):
    if v is None:
        return "–"
    if unit == "IOPS" and v >= 1000:
        return f"{v / 1000:.1f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main():
    rows = load(sys.argv[1])
    ticks = float(sys.argv[2])
    workloads = ordered(rows, "workload")
    servers = ordered(rows, "server")
    if "cairnd" in servers:  # cairnd first, then the peers as they came
        servers.remove("cairnd")
        servers.insert(0, "cairnd")
    peers = [s for s in servers if s != "cairnd"]
    runs = len(ordered(rows, "run"))

    by = {}
    for r in rows:
        by.setdefault((r["workload"], r["server"]), []).append(r)

    def med(w, s, f):
        rs = by.get((w, s))
        if not rs:
            return None
        vals = [f(r) for r in rs]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def spread(w, s, f):
        vals = [f(r) for r in by.get((w, s), [])]
        return (min(vals), max(vals)) if vals else None

    value = lambda r: float(r["value"])
    cpu_s = lambda r: int(r["cpu_ticks"]) / ticks
    cpu_per_gib = lambda r: cpu_s(r) / (int(r["bytes"]) / GIB) if int(r["bytes"]) else None
    us_per_op = lambda r: cpu_s(r) * 1e6 / int(r["ops"]) if int(r["ops"]) else None
    p99 = lambda r: float(r["p99_us"]) or None

    unit = {w: next(r["unit"] for r in rows if r["workload"] == w) for w in workloads}
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "–"

    foreign = [float(r["foreign_cores"]) for r in rows]
    loads = [float(r["load1"]) for r in rows]
    print(f"Other work on the machine during the jobs (cores used by anything but the server, the client and kernel threads): "
          f"median {statistics.median(foreign):.2f}, max {max(foreign):.2f}; 1-minute load average {min(loads):.1f}–{max(loads):.1f}. "
          "A job during which other work used more than MAX_FOREIGN cores was repeated (up to RETRIES times).")
    print()
    print(f"Throughput, median of {runs} run(s) (IOPS for 4 KiB workloads, MB/s = 10^6 bytes/s otherwise; min–max in brackets):")
    print()
    print("| workload | " + " | ".join(servers) + " | " + " | ".join(f"cairnd/{p}" for p in peers) + " |")
    print("|---" * (1 + len(servers) + len(peers)) + "|")
    for w in workloads:
        cells = []
        for s in servers:
            m, sp = med(w, s, value), spread(w, s, value)
            cells.append(f"{fmt(m, unit[w])} ({fmt(sp[0], unit[w])}–{fmt(sp[1], unit[w])})" if m else "–")
        ratios = [ratio(med(w, "cairnd", value), med(w, p, value)) for p in peers]
        print(f"| {w} ({unit[w]}) | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print()

    table("Server CPU (utime+stime of the server process, medians): seconds per GiB moved, and µs per operation for 4 KiB workloads:",
          [f"{s} s/GiB" for s in servers] + [f"{s} µs/op" for s in servers],
          [(w, [fmt(med(w, s, cpu_per_gib)) for s in servers]
               + [fmt(med(w, s, us_per_op)) if unit[w] == "IOPS" else "–" for s in servers]) for w in workloads])

    client = lambda r: float(r["client_cores"])
    table("fio p99 completion latency in µs (medians; the slower of read and write), and the client's CPU use in cores (fio's own report):",
          [f"{s} p99" for s in servers] + [f"client cores vs {s}" for s in servers],
          [(w, [fmt(med(w, s, p99)) for s in servers] + [fmt(med(w, s, client)) for s in servers])
           for w in workloads if any(float(r["p99_us"]) for r in rows if r["workload"] == w)])


def table(title, headers, rows):
    """Prints a markdown table of (workload, cells) rows under a title."""
    if not rows:
        return
    print(title)
    print()
    print("| workload | " + " | ".join(headers) + " |")
    print("|---" * (1 + len(headers)) + "|")
    for w, cells in rows:
        print(f"| {w} | " + " | ".join(cells) + " |")
    print()

if __name__ == "__main__":
    main()
