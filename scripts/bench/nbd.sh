#!/usr/bin/env bash
# NBD server benchmark (issue 2, "Performance"): serves the SAME raw file with
# cairnd (adopted as disk "bench"), nbdkit's file plugin and qemu-nbd, and
# measures each with fio's nbd engine and nbdcopy:
#
#   randread-4k   4 KiB random read,   QD32, 1 job
#   randwrite-4k  4 KiB random write,  QD32, 1 job
#   seqread-1m    1 MiB sequential read,  QD8, 1 job
#   seqwrite-1m   1 MiB sequential write, QD8, 1 job
#   randrw-4k     4 KiB random 70% read / 30% write, QD32, 2 jobs
#   nbdcopy       nbdcopy --connections=4 of the whole export to null:
#
# Each run goes through every workload; within a workload the servers take
# turns, in an order that rotates from run to run, so slow drifts of the
# machine spread over all of them. The report gives the median of the runs,
# cairnd's ratio to each peer, and the server's CPU time (utime+stime from
# /proc/PID/stat, sampled after fio's ramp and after it ends) per GiB moved
# and, for 4 KiB workloads, per operation: fio's nbd engine saturates one
# core near 140k IOPS, so CPU per operation is the fairer comparison there.
#
# Traps avoided: --invalidate=0 (fio would drop the image's page cache before
# every job); no O_DIRECT anywhere (it evicts the image); qemu-nbd with -t and
# -e 8 (otherwise it serves one client and no multi-conn); `sync` between
# jobs so a job never pays for the previous job's dirty pages.
#
# Environment (defaults in brackets):
#   RUNS [3]  RUNTIME [15] seconds per fio job  RAMP [3] seconds before it
#   SIZE [4G] image size     IMAGE [WORK/image.raw] reuse this raw file
#   SERVERS ["cairnd nbdkit qemu-nbd"]   WORKLOADS [all six above]
#   PERF [unset]: "1" records `perf record -g` of cairnd during each of its
#     jobs into OUT/perf-WORKLOAD-RUN.data (adds overhead: do not compare
#     those runs' figures) and prints the top symbols into OUT/perf.txt
#   BENCH_TMP [/var/tmp]: where the scratch directory goes (not a tmpfs)
#   MAX_FOREIGN [0.25] cores: a job starts only when other work on the machine
#     uses less (waiting at most QUIET_WAIT [60] s), and is repeated (at most
#     RETRIES [2] tries) when other work used more during it
#   TRACK_FRESH [0]: "1" takes a snapshot of cairnd's disk (and waits until
#     it is copied out, deleting the previous one) before each of cairnd's
#     write jobs, so that its writes land in a fresh epoch and pay for
#     marking their blocks in the crash-safe dirty set. Without it, every
#     block of the adopted image is dirty from the start (a first snapshot
#     must be complete) and a write pays one atomic load for tracking.
#   BENCH_NICE [unset]: run servers and clients at this niceness (-15 puts
#     them ahead of other work on a shared machine; needs root)
#   KEEP [0]: "1" keeps the scratch directory (server logs, image)
#   CAIRND, CAIRN [bin/cairnd, bin/cairn]
# Quick smoke test: RUNS=1 RUNTIME=3 RAMP=1 SIZE=512M scripts/bench/nbd.sh
#
# Output: a markdown report on stdout and in scripts/bench/out/nbd-DATE/
# (report.md, raw.tsv with every measurement, fio JSON), also copied to
# scripts/bench/out/nbd-latest.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SERVERS=(${SERVERS:-cairnd nbdkit qemu-nbd})
WORKLOADS=(${WORKLOADS:-randread-4k randwrite-4k seqread-1m seqwrite-1m randrw-4k nbdcopy})
need fio nbdkit qemu-nbd nbdcopy nbdinfo
[ "${PERF:-}" != 1 ] || need perf
bench_setup nbd
IMAGE=${IMAGE:-$WORK/image.raw}

# fio_args WORKLOAD: the fio options of a workload.
fio_args() {
	case $1 in
	randread-4k) echo --rw=randread --bs=4k --iodepth=32 ;;
	randwrite-4k) echo --rw=randwrite --bs=4k --iodepth=32 ;;
	seqread-1m) echo --rw=read --bs=1m --iodepth=8 ;;
	seqwrite-1m) echo --rw=write --bs=1m --iodepth=8 ;;
	randrw-4k) echo --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --numjobs=2 --group_reporting ;;
	*) die "unknown workload $1" ;;
	esac
}

# A measurement window: window_open samples the server's CPU and the whole
# machine's; window_close samples again and sets SERVER_TICKS and FOREIGN
# (cores used on average by everything else than the server, the client
# and kernel threads: other work on the machine, which spoils the job).
window_open() {
	W_T0=$(cpu_ticks "$1")
	read -r W_B0 W_K0 <<<"$(cpu_sample)"
	W_S0=$(date +%s.%N)
}

# window_close PID CLIENT_TICKS
window_close() {
	local t1 b1 k1 s1
	t1=$(cpu_ticks "$1")
	read -r b1 k1 <<<"$(cpu_sample)"
	s1=$(date +%s.%N)
	SERVER_TICKS=$((t1 - W_T0))
	FOREIGN=$(awk -v b=$((b1 - W_B0 - (k1 - W_K0) - SERVER_TICKS)) -v c="$2" -v t="$TICKS" \
		-v s="$W_S0" -v e="$s1" 'BEGIN{f=(b-c)/t/(e-s); printf "%.2f", f < 0 ? 0 : f}')
}

# spoiled: true when other work used more than MAX_FOREIGN cores.
spoiled() { awk -v f="$FOREIGN" -v m="${MAX_FOREIGN:-0.25}" 'BEGIN{exit !(f > m)}'; }

# record RUN SERVER WORKLOAD UNIT VALUE BYTES OPS P99_US CLIENT_CORES
# (with SERVER_TICKS, FOREIGN and the 1-minute load average)
record() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" \
		"$SERVER_TICKS" "$8" "$9" "$FOREIGN" "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/raw.tsv"
	printf 'bench: run %s %s %s: %.0f %s (server %.1f s CPU, other work %s cores)\n' \
		"$1" "$3" "$2" "$5" "$4" "$(awk -v t="$SERVER_TICKS" -v h="$TICKS" 'BEGIN{print t/h}')" "$FOREIGN" >&2
}

# perf_start NAME SERVER: with PERF=1 and cairnd, record its stacks for RUNTIME.
perf_start() {
	PERF_PID=
	[ "${PERF:-}" = 1 ] && [ "$2" = cairnd ] || return 0
	perf record -q -e cpu-clock -g -p "${SERVER_PIDS[cairnd]}" -o "$OUT/perf-$1.data" -- sleep "$RUNTIME" \
		>/dev/null 2>&1 &
	PERF_PID=$!
}

perf_finish() {
	[ -n "${PERF_PID:-}" ] || return 0
	wait "$PERF_PID" || true
	{
		echo "== $1: self time (top 30 symbols)"
		perf report -i "$OUT/perf-$1.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
			grep -v -e '^#' -e '^$' | head -30 || true
		echo "== $1: cairn functions with their callees (top 30)"
		perf report -i "$OUT/perf-$1.data" --children --sort symbol --stdio -g none 2>/dev/null |
			grep -e cairn-storage -e 'runtime\.\(mcall\|schedule\|findRunnable\|gcBgMarkWorker\|mallocgc\)' | head -30 || true
	} >>"$OUT/perf.txt"
}

# fio_once RUN SERVER WORKLOAD: one fio job; the window covers fio's run
# after its ramp.
fio_once() {
	local run=$1 server=$2 w=$3 pid=${SERVER_PIDS[$2]} json=$OUT/fio/$3-$2-$1.json fpid
	local -a args
	read -ra args <<<"$(fio_args "$w")"
	fio --name="$w" --ioengine=nbd --uri="${SERVER_URIS[$server]}" "${args[@]}" \
		--time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --invalidate=0 \
		--norandommap --randrepeat=0 --output-format=json --output="$json" \
		>"$WORK/fio.log" 2>&1 &
	fpid=$!
	sleep "$RAMP"
	window_open "$pid"
	perf_start "$w-$run" "$server"
	wait "$fpid" || die "fio $w against $server failed: $(tail -5 "$WORK/fio.log")"
	local ops_s bytes ops bw p99 fcpu unit=IOPS value jobs=1 client
	read -r ops_s bytes ops bw p99 fcpu <<<"$(fio_summary "$json")"
	[[ " ${args[*]} " == *" --numjobs=2 "* ]] && jobs=2
	# fio reports each job's CPU as a percentage of its run time.
	client=$(awk -v c="$fcpu" -v j=$jobs -v r="$RUNTIME" -v t="$TICKS" 'BEGIN{printf "%d", c/100*j*r*t}')
	window_close "$pid" "$client"
	perf_finish "$w-$run"
	value=$ops_s
	[[ $w == *-4k ]] || { unit=MB/s value=$(awk -v b="$bw" 'BEGIN{print b/1e6}'); }
	RESULT=("$unit" "$value" "$bytes" "$ops" "$p99" "$(awk -v c="$client" -v t="$TICKS" -v r="$RUNTIME" 'BEGIN{printf "%.2f", c/t/r}')")
}

# nbdcopy_once RUN SERVER: copy the whole export to null: over 4 connections.
nbdcopy_once() {
	local pid=${SERVER_PIDS[$2]} times real user sys client
	window_open "$pid"
	times=$( { TIMEFORMAT='%R %U %S'; time nbdcopy --connections=4 "${SERVER_URIS[$2]}" null: 2>"$WORK/nbdcopy.log"; } 2>&1) ||
		die "nbdcopy from $2 failed: $(cat "$WORK/nbdcopy.log")"
	read -r real user sys <<<"$times"
	client=$(awk -v u="$user" -v s="$sys" -v t="$TICKS" 'BEGIN{printf "%d", (u+s)*t}')
	window_close "$pid" "$client"
	RESULT=(MB/s "$(awk -v b="$SIZE" -v r="$real" 'BEGIN{print b/r/1e6}')" "$SIZE" 0 0
		"$(awk -v u="$user" -v s="$sys" -v r="$real" 'BEGIN{printf "%.2f", (u+s)/r}')")
}

# fresh_epoch: snapshot cairnd's disk and wait until it is copied out, so
# the epoch after it starts with no block marked; drop the snapshot before.
EPOCHS=0
LAST_EPOCH=
fresh_epoch() {
	local name=epoch-$((++EPOCHS))
	cairnc snapshot create bench "$name" --wait >"$WORK/snapshot.log" 2>&1 ||
		die "cairn snapshot create bench $name failed: $(tail -3 "$WORK/snapshot.log")"
	if [ -n "$LAST_EPOCH" ]; then
		cairnc snapshot delete bench "$LAST_EPOCH" >"$WORK/snapshot.log" 2>&1 ||
			die "cairn snapshot delete bench $LAST_EPOCH failed: $(tail -3 "$WORK/snapshot.log")"
	fi
	LAST_EPOCH=$name
}

# measure RUN SERVER WORKLOAD: wait for a quiet machine, run the job, and
# repeat it (up to RETRIES times, default 2) while other work spoiled it.
measure() {
	local try
	for ((try = 1; ; try++)); do
		alive "$2"
		[ "${TRACK_FRESH:-0}" = 1 ] && [ "$2" = cairnd ] && [[ $3 == *write* || $3 == randrw* ]] && fresh_epoch
		sync
		wait_quiet
		if [ "$3" = nbdcopy ]; then nbdcopy_once "$1" "$2"; else fio_once "$1" "$2" "$3"; fi
		spoiled && ((try < ${RETRIES:-2})) || break
		log "run $1 $3 $2: other work used $FOREIGN cores during the job; repeating it"
	done
	record "$1" "$2" "$3" "${RESULT[@]}"
}

mkdir -p "$OUT/fio"
printf 'run\tserver\tworkload\tunit\tvalue\tbytes\tops\tcpu_ticks\tp99_us\tclient_cores\tforeign_cores\tload1\n' >"$OUT/raw.tsv"
make_image "$IMAGE" "$SIZE"
{
	system_info
	echo "- image: $((SIZE >> 30)) GiB ($((SIZE >> 20)) MiB) of random data, $(df -T "$IMAGE" | awk 'NR==2{print $2}') on $(df "$IMAGE" | awk 'NR==2{print $1}'), page-cached"
} >"$OUT/system.md"
for s in "${SERVERS[@]}"; do
	case $s in
	cairnd) start_cairnd "$IMAGE" ;;
	nbdkit) start_nbdkit "$IMAGE" ;;
	qemu-nbd) start_qemu_nbd "$IMAGE" ;;
	*) die "unknown server $s (cairnd, nbdkit, qemu-nbd)" ;;
	esac
	echo "- $s: pid ${SERVER_PIDS[$s]}, $(nbdinfo --can multi-conn "${SERVER_URIS[$s]}" && echo multi-conn || echo NO multi-conn)" >>"$OUT/system.md"
done

n=${#SERVERS[@]}
for ((run = 1; run <= RUNS; run++)); do
	for w in "${WORKLOADS[@]}"; do
		for ((k = 0; k < n; k++)); do
			s=${SERVERS[$(((k + run - 1) % n))]}
			measure "$run" "$s" "$w"
		done
	done
done

{
	echo "# NBD servers: cairnd against nbdkit and qemu-nbd"
	echo
	echo "Command: \`RUNS=$RUNS RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$((SIZE >> 20))M${BENCH_NICE:+ BENCH_NICE=$BENCH_NICE} MAX_FOREIGN=${MAX_FOREIGN:-0.25}${TRACK_FRESH:+ TRACK_FRESH=$TRACK_FRESH} SERVERS='${SERVERS[*]}' WORKLOADS='${WORKLOADS[*]}' scripts/bench/nbd.sh\`"
	echo
	cat "$OUT/system.md"
	echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	"$PY" "$ROOT/scripts/bench/report.py" "$OUT/raw.tsv" "$TICKS"
} >"$OUT/report.md"
cp "$OUT/report.md" "$ROOT/scripts/bench/out/nbd-latest.md"
cat "$OUT/report.md"
log "results in $OUT"
