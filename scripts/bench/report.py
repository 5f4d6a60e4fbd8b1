#!/usr/bin/env python3
"""Markdown tables from a benchmark's raw.tsv (see nbd.sh): medians over the
runs, cairnd's ratio to each peer, server CPU per GiB and per operation.
When some jobs ran while other work used more than MAX_FOREIGN cores (env,
default 0.25), the throughput and CPU tables are printed again for the
quiet jobs alone, with the number of jobs behind each cell.

Usage: report.py RAW_TSV CLK_TCK
"""
import csv
import os
import statistics
import sys

GIB = 1 << 30


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


class Report:
    def __init__(self, rows, ticks):
        self.rows = rows
        self.ticks = ticks
        self.workloads = ordered(rows, "workload")
        servers = ordered(rows, "server")
        if "cairnd" in servers:  # cairnd first, then the peers as they came
            servers.remove("cairnd")
            servers.insert(0, "cairnd")
        self.servers = servers
        self.peers = [s for s in servers if s != "cairnd"]
        self.unit = {w: next(r["unit"] for r in rows if r["workload"] == w) for w in self.workloads}

    def values(self, rows, w, s, f):
        vals = [f(r) for r in rows if r["workload"] == w and r["server"] == s]
        return [v for v in vals if v is not None]

    def med(self, rows, w, s, f):
        vals = self.values(rows, w, s, f)
        return statistics.median(vals) if vals else None

    @staticmethod
    def value(r):
        return float(r["value"])

    def cpu_per_gib(self, r):
        b = int(r["bytes"])
        return int(r["cpu_ticks"]) / self.ticks / (b / GIB) if b else None

    def us_per_op(self, r):
        ops = int(r["ops"])
        return int(r["cpu_ticks"]) / self.ticks * 1e6 / ops if ops else None

    def throughput(self, rows, title, counts):
        """Medians with min–max (or, with counts, the number of jobs) and ratios."""
        cells = []
        for w in self.workloads:
            u = self.unit[w]
            row = []
            for s in self.servers:
                vals = self.values(rows, w, s, self.value)
                if not vals:
                    row.append("–")
                elif counts:
                    row.append(f"{fmt(statistics.median(vals), u)} (n={len(vals)})")
                else:
                    row.append(f"{fmt(statistics.median(vals), u)} ({fmt(min(vals), u)}–{fmt(max(vals), u)})")
            for p in self.peers:
                a, b = self.med(rows, w, "cairnd", self.value), self.med(rows, w, p, self.value)
                row.append(f"{a / b:.2f}" if a and b else "–")
            cells.append((f"{w} ({self.unit[w]})", row))
        table(title, self.servers + [f"cairnd/{p}" for p in self.peers], cells)

    def cpu(self, rows, title):
        table(title, [f"{s} s/GiB" for s in self.servers] + [f"{s} µs/op" for s in self.servers],
              [(w, [fmt(self.med(rows, w, s, self.cpu_per_gib)) for s in self.servers]
                + [fmt(self.med(rows, w, s, self.us_per_op)) if self.unit[w] == "IOPS" else "–" for s in self.servers])
               for w in self.workloads])

    def latency(self, rows):
        p99 = lambda r: float(r["p99_us"]) or None
        client = lambda r: float(r["client_cores"])
        table("fio p99 completion latency in µs (medians; the slower of read and write), and the client's CPU use in cores (fio's own report):",
              [f"{s} p99" for s in self.servers] + [f"client cores vs {s}" for s in self.servers],
              [(w, [fmt(self.med(rows, w, s, p99)) for s in self.servers] + [fmt(self.med(rows, w, s, client)) for s in self.servers])
               for w in self.workloads if any(float(r["p99_us"]) for r in rows if r["workload"] == w)])


def main():
    with open(sys.argv[1]) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rep = Report(rows, float(sys.argv[2]))
    runs = len(ordered(rows, "run"))
    limit = float(os.environ.get("MAX_FOREIGN", "0.25"))

    foreign = [float(r["foreign_cores"]) for r in rows]
    loads = [float(r["load1"]) for r in rows]
    print(f"Other work on the machine during the jobs (cores used by anything but the server, the client and kernel threads): "
          f"median {statistics.median(foreign):.2f}, max {max(foreign):.2f}; 1-minute load average {min(loads):.1f}–{max(loads):.1f}.")
    print()
    rep.throughput(rows, f"Throughput, median of {runs} run(s) (IOPS for 4 KiB workloads, MB/s = 10^6 bytes/s otherwise; min–max in brackets):", False)
    rep.cpu(rows, "Server CPU (utime+stime of the server process, medians): seconds per GiB moved, and µs per operation for 4 KiB workloads:")
    rep.latency(rows)

    quiet = [r for r in rows if float(r["foreign_cores"]) <= limit]
    if quiet and len(quiet) < len(rows):
        rep.throughput(quiet, f"Only the {len(quiet)} of {len(rows)} jobs during which other work used at most {limit} cores "
                       "(medians, n = jobs behind each cell):", True)
        rep.cpu(quiet, "Server CPU of those jobs (medians):")


if __name__ == "__main__":
    main()
