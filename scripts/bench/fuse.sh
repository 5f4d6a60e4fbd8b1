#!/usr/bin/env bash
# FUSE benchmark (issue 5): the same live image read and written through
# cairnd's FUSE view (/<disk>/disk.raw), through cairnd's NBD export (fio's
# nbd engine) and directly (the raw file), one job at queue depth 1,
# buffered, as host tools do it; sequential 1 MiB and random 4 KiB. The
# image stays in the page cache (--invalidate=0), so "raw file" is memory
# speed: the strictest yardstick. disk.raw keeps its own page cache, so
# timed FUSE reads after the first pass come from it; the "first pass"
# row reads the image once through FUSE with that cache dropped. Medians
# of RUNS runs.
#
#   scripts/bench/fuse.sh                 # RUNS=3 RUNTIME=8 RAMP=1 SIZE=4G
#   RUNS=1 RUNTIME=3 SIZE=256M scripts/bench/fuse.sh   # quick
#
# Needs root (FUSE mount). Raises fs.pipe-max-size as cairnd's install does
# (systemd/sysctl.d/60-cairn.conf) so FUSE reads are spliced.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need fio
[ "$(id -u)" = 0 ] || die "fuse.sh needs root (it mounts cairnd's FUSE view)"
RAMP=${RAMP:-1} # before bench_setup, whose default is longer
bench_setup fuse
RUNTIME=${RUNTIME:-8}

DATA=$WORK/data
IMG=$WORK/live.raw
log "writing a $((SIZE >> 20)) MiB image"
fio --name=fill --filename="$IMG" --rw=write --bs=1M --size="$SIZE" --refill_buffers --end_fsync=1 >/dev/null
"$CAIRND" --data-dir "$DATA" --adopt-allow "$WORK" --log-level warn >"$WORK/cairnd.log" 2>&1 &
SERVER_PIDS[cairnd]=$!
for _ in $(seq 100); do [ -S "$DATA/cairn.sock" ] && break; sleep 0.1; done
"$CAIRN" --socket "$DATA/cairn.sock" disk create bench --adopt "$IMG" >/dev/null
FUSEFILE=$DATA/fuse/bench/disk.raw
for _ in $(seq 50); do [ -e "$FUSEFILE" ] && break; sleep 0.1; done
[ -e "$FUSEFILE" ] || die "no FUSE file at $FUSEFILE (is the FUSE view on?)"
NBDURI="nbd+unix:///bench?socket=$DATA/nbd.sock"

# job TARGET RW BS [first]: MB/s of one fio run. Timed runs loop over the
# image for RUNTIME seconds after RAMP; "first" is one pass over it with
# FUSE's page cache of disk.raw dropped first (the image itself stays
# cached): what a tool reading the disk once (a backup) gets.
job() {
	local target=$1 rw=$2 bs=$3 pass=${4:-} args timing
	case $target in
	raw) args=(--filename="$IMG" --ioengine=psync) ;;
	fuse) args=(--filename="$FUSEFILE" --ioengine=psync) ;;
	nbd) args=(--ioengine=nbd --uri="$NBDURI") ;;
	esac
	timing=(--time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --invalidate=0)
	if [ "$pass" = first ]; then
		timing=(--invalidate=0)
		[ "$target" = fuse ] && timing=(--invalidate=1) # fadvise DONTNEED on disk.raw
	fi
	fio --name=b --rw="$rw" --bs="$bs" --size="$SIZE" --iodepth=1 --numjobs=1 \
		"${timing[@]}" --output-format=json "${args[@]}" |
		"$PY" -c 'import json,sys; t=sys.stdin.read(); t=t[t.index("{"):]; j=json.loads(t)["jobs"][0]; print(round((j["read"]["bw_bytes"]+j["write"]["bw_bytes"])/1e6,1))'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

{
	echo "| workload | raw file MB/s | FUSE MB/s | NBD MB/s | FUSE/raw | NBD/raw |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: |"
	# rw|bs|pass|label
	for w in "read|1M||sequential read 1M" "read|1M|first|sequential read 1M, first pass" \
		"write|1M||sequential write 1M" "randread|4k||random read 4k" "randwrite|4k||random write 4k"; do
		IFS='|' read -r rw bs pass label <<<"$w"
		declare -A res=()
		for t in raw fuse nbd; do
			res[$t]=$(for _ in $(seq "$RUNS"); do job "$t" "$rw" "$bs" "$pass"; done | median)
		done
		"$PY" -c "import sys; r,f,n=map(float,sys.argv[1:4]); print(f'| {sys.argv[4]} | {r:.0f} | {f:.0f} | {n:.0f} | {f/r:.2f} | {n/r:.2f} |')" \
			"${res[raw]}" "${res[fuse]}" "${res[nbd]}" "$label"
	done
} | tee "$OUT/fuse.md"
