#!/usr/bin/env bash
# Export and import benchmarks (issue 20); results and commands are in
# docs/performance.md ("## Exports and imports").
#
# In one run, RUNS times each, medians:
#   export   cairn export of a snapshot (DATA of data on a disk of SIZE:
#            half random, half text, the rest never written) to qcow2 and
#            to raw, next to qemu-img convert of the same data from a raw
#            file (the image the disk was filled from): ratio = qemu-img's
#            time / cairn's (target >= 1.0)
#   import   cairn import of the qcow2 export into a new disk (MB/s of the
#            virtual size and of the data), next to qemu-img convert of
#            the same qcow2 to a raw file
#   sparse   a 1 TiB disk with SPARSE_DATA written: cairn export to qcow2
#            (seconds) and the file's size
#
# Environment [default]: RUNS [3], SIZE [2G], DATA [1G], SPARSE_DATA [1G],
# BENCH_TMP, BENCH_NICE, KEEP, CAIRND, CAIRN (as nbd.sh).
# Output: scripts/bench/out/export-DATE/report.md (and the TSV of every
# run), also copied to scripts/bench/out/export-latest.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need qemu-img qemu-io nbdinfo
: "${SIZE:=2G}"
bench_setup export
DATA=$(bytes "${DATA:-1G}")
SPARSE_DATA=$(bytes "${SPARSE_DATA:-1G}")
REPORT=$OUT/report.md
TSV=$OUT/runs.tsv
echo -e "what\trun\tseconds" >"$TSV"

# timed WHAT CMD...: run CMD, record its wall time under WHAT.
timed() {
	local what=$1 t0 t1
	shift
	t0=$(date +%s.%N)
	"$@" >"$WORK/last.log" 2>&1 || die "$what failed: $(tail -5 "$WORK/last.log")"
	t1=$(date +%s.%N)
	echo -e "$what\t$RUN\t$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" >>"$TSV"
}

# median WHAT: the median seconds of WHAT's runs.
median() {
	awk -F'\t' -v w="$1" '$1 == w {print $3}' "$TSV" | sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# The source: DATA of data at the start of a raw file of SIZE (half random,
# half text, which compresses), the rest a hole.
SRC=$WORK/source.raw
log "writing $((DATA >> 20)) MiB of data into a $((SIZE >> 20)) MiB raw file"
truncate -s "$SIZE" "$SRC"
dd if=/dev/urandom of="$SRC" bs=1M count=$((DATA >> 21)) conv=notrunc status=none
{ yes "cairn export benchmark: a line of text that compresses well" || true; } | head -c $((DATA / 2)) |
	dd of="$SRC" bs=1M seek=$((DATA >> 21)) conv=notrunc iflag=fullblock status=none
cat "$SRC" >/dev/null

start_cairnd_daemon
cairnc disk create src --size "$SIZE" >/dev/null
qemu-img convert -n -f raw -O raw "$SRC" "$(cairnd_uri src)"
cairnc snapshot create src s1 --wait >/dev/null 2>&1

for ((RUN = 1; RUN <= RUNS; RUN++)); do
	log "run $RUN of $RUNS"
	rm -f "$WORK"/out.* "$WORK"/qemu.*
	wait_quiet
	timed qemu-qcow2 qemu-img convert -f raw -O qcow2 "$SRC" "$WORK/qemu.qcow2"
	wait_quiet
	timed cairn-qcow2 cairnc export src@s1 "$WORK/out.qcow2"
	wait_quiet
	timed qemu-raw qemu-img convert -f raw -O raw "$SRC" "$WORK/qemu.raw"
	wait_quiet
	timed cairn-raw cairnc export src@s1 "$WORK/out.raw" --format raw
	wait_quiet
	timed qemu-import qemu-img convert -f qcow2 -O raw "$WORK/out.qcow2" "$WORK/qemu.imported"
	rm -f "$WORK/qemu.imported"
	wait_quiet
	timed cairn-import cairnc import "$WORK/out.qcow2" "imp$RUN"
	cairnc disk delete "imp$RUN" >/dev/null
done
QCOW2_BYTES=$(stat -c %s "$WORK/out.qcow2")
QEMU_QCOW2_BYTES=$(stat -c %s "$WORK/qemu.qcow2")

log "sparse: a 1 TiB disk with $((SPARSE_DATA >> 20)) MiB written"
cairnc disk create big --size 1T >/dev/null
qemu-io -f raw -c "write -P 0x5a 0 $SPARSE_DATA" "$(cairnd_uri big)" >/dev/null
qemu-io -f raw -c "write -P 0x33 900G 64k" "$(cairnd_uri big)" >/dev/null
cairnc snapshot create big s1 --wait >/dev/null 2>&1
for ((RUN = 1; RUN <= RUNS; RUN++)); do
	rm -f "$WORK/big.qcow2"
	wait_quiet
	timed sparse-qcow2 cairnc export big@s1 "$WORK/big.qcow2"
done
BIG_BYTES=$(stat -c %s "$WORK/big.qcow2")

mb() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.0f", b/1048576/s}'; }
ratio() { awk -v q="$(median "$1")" -v c="$(median "$2")" 'BEGIN{printf "%.2f", q/c}'; }
{
	echo "# Exports and imports ($(date -u +%Y-%m-%d), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?))"
	echo
	echo "SIZE $((SIZE >> 20)) MiB, DATA $((DATA >> 20)) MiB (half random, half text), RUNS $RUNS, medians; load average $(cut -d' ' -f1-3 /proc/loadavg)."
	echo
	echo "| | cairn (s) | qemu-img from a raw file (s) | ratio (qemu-img / cairn) | cairn MB/s of data |"
	echo "| --- | ---: | ---: | ---: | ---: |"
	echo "| export to qcow2 | $(median cairn-qcow2) | $(median qemu-qcow2) | $(ratio qemu-qcow2 cairn-qcow2) | $(mb "$DATA" "$(median cairn-qcow2)") |"
	echo "| export to raw | $(median cairn-raw) | $(median qemu-raw) | $(ratio qemu-raw cairn-raw) | $(mb "$DATA" "$(median cairn-raw)") |"
	echo "| import of the qcow2 | $(median cairn-import) | $(median qemu-import) (to a raw file) | $(ratio qemu-import cairn-import) | $(mb "$DATA" "$(median cairn-import)") |"
	echo
	echo "qcow2 sizes: cairn's $((QCOW2_BYTES >> 20)) MiB, qemu-img's $((QEMU_QCOW2_BYTES >> 20)) MiB."
	echo
	echo "1 TiB disk with $((SPARSE_DATA >> 20)) MiB + 64 KiB written: cairn export to qcow2 $(median sparse-qcow2) s (median), file $((BIG_BYTES >> 20)) MiB."
} >"$REPORT"
cp "$REPORT" "$ROOT/scripts/bench/out/export-latest.md"
cat "$REPORT"
