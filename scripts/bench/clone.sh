#!/usr/bin/env bash
# Clone and image benchmarks (issue 17); results and the command are
# recorded in docs/performance.md ("## Clones and images").
#
#   create     clone create time (API round trip) of disks of 1 GiB, 64 GiB
#              and 1 TiB, next to `qemu-img create -b` of a qcow2 overlay on a
#              raw file of the same size (the peer)
#   firstwrite latency of a 4 KiB write into an unwritten 64 KiB block of a
#              fresh clone (copy-up of the block) next to the same write to a
#              block the clone already holds, and to the parent disk
#   reads      fio 4k random read (QD8) and 1M sequential read of a fresh
#              clone next to the parent's snapshot export (the same bytes)
#   flatten    flatten --hydrate throughput of a clone of SIZE random data,
#              detach-only time
#   provision  machine create --from-image of a 4-disk image (disks of
#              64 GiB), next to 4 clone creates one after the other
#
# Environment [default]: RUNS [5], SIZE [1G] (reads, flatten), RUNTIME [10]
# s per fio job, SECTIONS, BENCH_TMP, BENCH_NICE, KEEP, CAIRND, CAIRN.
# Output: scripts/bench/out/clone-DATE/report.md, also clone-latest.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
: "${SIZE:=1G}"
: "${RUNS:=5}"
need fio qemu-img nbdcopy
bench_setup clone
export RUNS RUNTIME SIZE WORK OUT CAIRND CAIRN SECTIONS="${SECTIONS:-create firstwrite reads flatten provision}"
export PYTHONPATH=$ROOT/scripts/test/lib
{
	echo "Command: \`scripts/bench/clone.sh\` (RUNS=$RUNS SIZE=$SIZE RUNTIME=$RUNTIME${BENCH_NICE:+ BENCH_NICE=$BENCH_NICE})"
	echo
	system_info
	echo "- load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	"$PY" "$ROOT/scripts/bench/clone.py"
	echo
	echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/report.md"
cp "$OUT/report.md" "$ROOT/scripts/bench/out/clone-latest.md"
