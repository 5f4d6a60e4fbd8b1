#!/usr/bin/env bash
# Store benchmarks (store/bench_test.go): copy-out (PutEntries), verified
# block reads (ReadBlock) and lookups through chains of depth 1, 16 and 64.
# Runs the benchmarks COUNT times (each run once the machine is quiet, see
# wait_quiet in lib.sh) and prints the median of each as a markdown table,
# on stdout and in scripts/bench/out/store-latest.md.
#
# Environment: COUNT [3] runs, BENCHTIME [2s], BENCH [.] benchmark regexp.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-3}
BENCHTIME=${BENCHTIME:-2s}
BENCH=${BENCH:-.}
bench_setup store
raw=$OUT/bench.txt
# One test binary, run COUNT times, each run once the machine is quiet
# (wait_quiet): the same as go test -count=COUNT without the compiler's or
# other work's noise.
cmd="go test -c -o store.test ./store && ./store.test -test.run XXX -test.bench '$BENCH' -test.benchtime=$BENCHTIME (x$COUNT)"
(cd "$ROOT" && go test -c -o "$WORK/store.test" ./store) || die "cannot build the store's test binary"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$raw"
for ((i = 1; i <= COUNT; i++)); do
	wait_quiet
	log "run $i of $COUNT"
	(cd "$WORK" && ./store.test -test.run XXX -test.bench "$BENCH" -test.benchtime="$BENCHTIME") | tee -a "$raw" >&2
done
{
	echo "Command: \`$cmd\` (median of $COUNT)"
	echo
	system_info | grep -E '^- (date|machine|cairnd)' | sed 's/- cairnd: [^;]*; /- Go: /'
	echo "- load average before / after: $load0 / $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	"$PY" - "$raw" <<'EOF'
import re, statistics, sys
res = {}
for line in open(sys.argv[1]):
    m = re.match(r"Benchmark(\S+?)-\d+\s+\d+\s+([\d.]+) ns/op(?:\s+([\d.]+) MB/s)?", line)
    if m:
        r = res.setdefault(m[1], ([], []))
        r[0].append(float(m[2]))
        if m[3]:
            r[1].append(float(m[3]))
print("| benchmark | ns/op | MB/s | runs (MB/s or ns/op) |")
print("|---|---|---|---|")
for name, (ns, mbs) in res.items():
    runs = ", ".join(f"{v:.0f}" for v in (mbs or ns))
    mb = f"{statistics.median(mbs):.0f}" if mbs else "–"
    print(f"| {name} | {statistics.median(ns):.0f} | {mb} | {runs} |")
EOF
} | tee "$OUT/report.md"
cp "$OUT/report.md" "$ROOT/scripts/bench/out/store-latest.md"
