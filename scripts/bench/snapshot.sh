#!/usr/bin/env bash
# Snapshot benchmarks (issue 3, "Performance"). STATUS: A SKELETON. It is
# written against the snapshot API as cmd/cairn and daemon/api define it
# (cairn -o json snapshot create|show|list|delete|capacity, cairn -o json
# store stats), but it has not been run end to end yet: when this script
# was written, cairnd at HEAD did not serve the snapshot endpoints. Every
# section marked TODO needs its numbers checked by hand the first time it
# runs; no figure from it is in docs/performance.md until then.
#
# Sections (SECTIONS selects some, default all):
#   hold      write hold of `snapshot create` under fio 4k random-write load:
#             p50, p99, max over HOLD_SNAPS snapshots (target p99 < 1 ms)
#   impact    fio 4k 70/30 random read/write (QD32) while a snapshot of the
#             whole disk copies out, against the same job with nothing
#             pending (target: at most 10% lower, aim for 5%)
#   copyout   copy-out throughput (MB/s) and cairnd CPU seconds per GiB of
#             a snapshot of SIZE of random data (every block changed)
#   realistic dedup and compression on an ext4 image made from a directory
#             tree (REAL_DIR, default /usr) with mkfs.ext4 -d
#   depth     chains of depth 1, 16 and 64 (each snapshot rewrites
#             DEPTH_WRITE of the disk): delete time of the middle snapshot
#             and nbdcopy read throughput of the oldest and newest, next to
#             a qcow2 external-snapshot chain of the same depth and writes
#             served by qemu-nbd; stored bytes of both chains ("space")
#
# Environment: RUNS [3], RUNTIME [15] s per fio job, RAMP [3], SIZE [4G]
# (copyout, impact, hold), DEPTH_SIZE [1G], DEPTH_WRITE [10] % per
# snapshot, HOLD_SNAPS [40], REAL_DIR [/usr], REAL_SIZE [8G], BENCH_TMP,
# KEEP, CAIRND, CAIRN (as nbd.sh). Output: scripts/bench/out/snapshot-DATE/.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

need fio qemu-img qemu-nbd nbdcopy nbdinfo mkfs.ext4
bench_setup snapshot
DEPTH_SIZE=$(bytes "${DEPTH_SIZE:-1G}")
DEPTH_WRITE=${DEPTH_WRITE:-10}
HOLD_SNAPS=${HOLD_SNAPS:-40}
REAL_DIR=${REAL_DIR:-/usr}
REAL_SIZE=$(bytes "${REAL_SIZE:-8G}")
SECTIONS=(${SECTIONS:-hold impact copyout realistic depth})
REPORT=$OUT/report.md

# jfield KEY: a field of the JSON document on stdin ("a.b" descends).
jfield() {
	"$PY" -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$1"
}

# snap_wait DISK NAME: poll (every 0.1 s, at most 1 h) until the snapshot is
# ready; fails on "failed". Prints the seconds it waited.
snap_wait() {
	local start state i
	start=$(date +%s.%N)
	for ((i = 0; i < 36000; i++)); do
		state=$(cairnc -o json snapshot show "$1" "$2" | jfield state)
		case $state in
		ready) awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{print e-s}'; return 0 ;;
		failed) die "snapshot $1@$2 failed: $(cairnc -o json snapshot show "$1" "$2" | jfield reason)" ;;
		esac
		sleep 0.1
	done
	die "snapshot $1@$2 is not ready after an hour"
}

# fio_live URI ARGS...: a time-based fio job (RUNTIME after RAMP); prints
# "IOPS P99_US" from fio_summary.
fio_live() {
	local uri=$1 json=$WORK/fio-$RANDOM.json
	shift
	fio --name=snapbench --ioengine=nbd --uri="$uri" "$@" --time_based --runtime="$RUNTIME" \
		--ramp_time="$RAMP" --invalidate=0 --norandommap --randrepeat=0 \
		--output-format=json --output="$json" >"$WORK/fio.log" 2>&1 ||
		die "fio failed: $(tail -5 "$WORK/fio.log")"
	fio_summary "$json" | awk '{print $1, $5}'
}

# fill URI BYTES PERCENT SEED: rewrite PERCENT of the first BYTES of an
# export in 64 KiB blocks at random places (the same places for the same
# SEED, so cairnd and qemu get the same writes).
fill() {
	local n=$(($2 / 65536 * $3 / 100))
	fio --name=fill --ioengine=nbd --uri="$1" --rw=randwrite --bs=64k --iodepth=16 \
		--size="$2" --number_ios="$n" --randseed="$4" --norandommap --invalidate=0 \
		--refill_buffers >"$WORK/fill.log" 2>&1 || die "fill of $1 failed: $(tail -5 "$WORK/fill.log")"
}

# medians FILE COLUMN...: the median of each named column of a TSV file.
medians() {
	"$PY" - "$@" <<'PYEOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print(" ".join(f"{statistics.median(float(r[c]) for r in rows):.4g}" for c in sys.argv[2:]))
PYEOF
}

percentile() { # P: the P-th percentile of the numbers on stdin
	"$PY" -c 'import sys, statistics as s
v = sorted(float(x) for x in sys.stdin.read().split())
print(v[min(len(v) - 1, int(len(v) * float(sys.argv[1]) / 100))] if v else "nan")' "$1"
}

section_hold() {
	local disk=hold i fpid
	make_image "$WORK/hold.raw" "$SIZE"
	cairnc disk create "$disk" --adopt "$WORK/hold.raw" >/dev/null
	snap_wait "$disk" "$(cairnc -o json snapshot create "$disk" base | jfield name)" >/dev/null
	fio --name=load --ioengine=nbd --uri="$(cairnd_uri "$disk")" --rw=randwrite --bs=4k --iodepth=32 \
		--time_based --runtime=$((HOLD_SNAPS + 10)) --invalidate=0 --norandommap \
		--output-format=json --output="$WORK/hold-fio.json" >"$WORK/fio.log" 2>&1 &
	fpid=$!
	sleep 3
	for ((i = 1; i <= HOLD_SNAPS; i++)); do
		cairnc snapshot create "$disk" "hold-$i" >/dev/null
		sleep 1
	done
	wait "$fpid" || die "fio under the hold test failed: $(tail -5 "$WORK/fio.log")"
	# TODO(issue 3): check that hold_us is the time writes waited, as
	# daemon/api.Snapshot documents, once the endpoint exists.
	cairnc -o json snapshot list "$disk" | "$PY" -c 'import json, sys
for s in json.load(sys.stdin):
    if s["name"].startswith("hold-"): print(s["hold_us"])' >"$WORK/holds"
	{
		echo "### Write hold under fio 4k random writes (QD32), $HOLD_SNAPS snapshots one second apart"
		echo
		echo "| p50 µs | p99 µs | max µs |"
		echo "|---|---|---|"
		echo "| $(percentile 50 <"$WORK/holds") | $(percentile 99 <"$WORK/holds") | $(percentile 100 <"$WORK/holds") |"
		echo
	} >>"$REPORT"
}

section_impact() {
	local disk=impact run base during state
	make_image "$WORK/impact.raw" "$SIZE"
	cairnc disk create "$disk" --adopt "$WORK/impact.raw" >/dev/null
	snap_wait "$disk" "$(cairnc -o json snapshot create "$disk" s0 | jfield name)" >/dev/null
	echo -e "run\tbaseline_iops\tbaseline_p99\tcopying_iops\tcopying_p99\tprogress_at_end" >"$OUT/impact.tsv"
	for ((run = 1; run <= RUNS; run++)); do
		base=$(fio_live "$(cairnd_uri "$disk")" --rw=randrw --rwmixread=70 --bs=4k --iodepth=32)
		fill "$(cairnd_uri "$disk")" "$SIZE" 100 "$run" # every block pending for the next snapshot
		cairnc snapshot create "$disk" "s$run" >/dev/null
		during=$(fio_live "$(cairnd_uri "$disk")" --rw=randrw --rwmixread=70 --bs=4k --iodepth=32)
		# The comparison is fair only if the copy-out lasted the whole job.
		state=$(cairnc -o json snapshot show "$disk" "s$run" | jfield progress)
		echo -e "$run\t${base% *}\t${base#* }\t${during% *}\t${during#* }\t$state" >>"$OUT/impact.tsv"
		snap_wait "$disk" "s$run" >/dev/null
	done
	# TODO(issue 3): if progress_at_end is 100, the copy-out finished within
	# the job: lower RUNTIME or raise SIZE so the whole job overlaps it.
	{
		echo "### fio 4k 70/30 random (QD32) while a $((SIZE >> 30)) GiB snapshot copies out"
		echo
		local m
		read -r -a m <<<"$(medians "$OUT/impact.tsv" baseline_iops baseline_p99 copying_iops copying_p99)"
		echo "| | IOPS | p99 µs |"
		echo "|---|---|---|"
		echo "| nothing pending | ${m[0]} | ${m[1]} |"
		echo "| copying out | ${m[2]} | ${m[3]} |"
		awk -v a="${m[0]}" -v b="${m[2]}" -v c="${m[1]}" -v d="${m[3]}" 'BEGIN{printf "| change | %+.1f%% | %+.1f%% |\n", 100*(b/a-1), 100*(d/c-1)}'
		echo
		echo "Snapshot progress when each job ended (%): $(awk -F'\t' 'NR>1{printf "%s ", $6}' "$OUT/impact.tsv")"
		echo
	} >>"$REPORT"
}

section_copyout() {
	local disk=copyout run secs t0 t1 pid=${SERVER_PIDS[cairnd]}
	make_image "$WORK/copyout.raw" "$SIZE"
	echo -e "run\tseconds\tmb_s\tcpu_s_per_gib" >"$OUT/copyout.tsv"
	for ((run = 1; run <= RUNS; run++)); do
		cairnc disk create "$disk$run" --adopt "$WORK/copyout.raw" >/dev/null
		t0=$(cpu_ticks "$pid")
		cairnc snapshot create "$disk$run" full >/dev/null
		secs=$(snap_wait "$disk$run" full)
		t1=$(cpu_ticks "$pid")
		echo -e "$run\t$secs\t$(awk -v b="$SIZE" -v s="$secs" 'BEGIN{print b/s/1e6}')\t$(awk -v t=$((t1 - t0)) -v h="$TICKS" -v b="$SIZE" 'BEGIN{print t/h/(b/2^30)}')" >>"$OUT/copyout.tsv"
		cairnc disk delete "$disk$run" >/dev/null # keeps the adopted file
	done
	{
		echo "### Copy-out of a $((SIZE >> 30)) GiB snapshot of random data (every block changed)"
		echo
		local m
		read -r -a m <<<"$(medians "$OUT/copyout.tsv" mb_s cpu_s_per_gib)"
		echo "| MB/s | cairnd CPU s/GiB |"
		echo "|---|---|"
		echo "| ${m[0]} | ${m[1]} |"
		echo
	} >>"$REPORT"
}

section_realistic() {
	local disk=rootfs before after
	log "making an ext4 image of $REAL_DIR"
	mkfs.ext4 -q -F -d "$REAL_DIR" "$WORK/rootfs.raw" "$((REAL_SIZE >> 20))M" ||
		die "mkfs.ext4 -d $REAL_DIR failed (does it fit in REAL_SIZE?)"
	before=$(cairnc -o json store stats)
	cairnc disk create "$disk" --adopt "$WORK/rootfs.raw" >/dev/null
	cairnc snapshot create "$disk" base >/dev/null
	snap_wait "$disk" base >/dev/null
	after=$(cairnc -o json store stats)
	# TODO(issue 3): check that logical/unique/stored mean what
	# daemon/api.StoreStats says for one chain added to a store.
	{
		echo "### Dedup and compression: ext4 made from $REAL_DIR ($(du -sh --apparent-size "$REAL_DIR" 2>/dev/null | cut -f1) of files), one snapshot"
		echo
		"$PY" - "$before" "$after" "$(du -B1 "$WORK/rootfs.raw" | cut -f1)" <<'PYEOF'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
d = {k: a[k] - b[k] for k in ("logical_bytes", "unique_bytes", "stored_bytes")}
alloc = int(sys.argv[3])
print("| allocated in the image | logical | after dedup | stored | dedup | compression |\n|---|---|---|---|---|---|")
print(f"| {alloc >> 20} MiB | {d['logical_bytes'] >> 20} MiB | {d['unique_bytes'] >> 20} MiB | {d['stored_bytes'] >> 20} MiB "
      f"| {d['logical_bytes'] / max(1, d['unique_bytes']):.2f}x | {d['unique_bytes'] / max(1, d['stored_bytes']):.2f}x |\n")
PYEOF
	} >>"$REPORT"
}

# qcow2_chain DEPTH: 1.qcow2 (the random image) under DEPTH-1 overlays,
# each with the same writes as the cairnd chain's snapshot of that number.
qcow2_chain() {
	local depth=$1 dir=$WORK/qcow2-$1 i
	mkdir -p "$dir"
	qemu-img convert -f raw -O qcow2 "$WORK/depth.raw" "$dir/1.qcow2"
	for ((i = 2; i <= depth; i++)); do
		qemu-img create -q -f qcow2 -b "$dir/$((i - 1)).qcow2" -F qcow2 "$dir/$i.qcow2"
		start_qemu_file "$dir/$i.qcow2"
		fill "${SERVER_URIS[qemu-nbd]}" "$DEPTH_SIZE" "$DEPTH_WRITE" "$i"
		stop_qemu_file
	done
}

# start_qemu_file FILE [-r]: qemu-nbd serving one qcow2 file (and its chain).
start_qemu_file() {
	local sock=$WORK/qemu-file.sock
	qemu-nbd -t -e 4 --cache=writeback --aio=threads -f qcow2 ${2:-} -k "$sock" -x bench "$1" >"$WORK/qemu-nbd.log" 2>&1 &
	SERVER_PIDS[qemu-nbd]=$!
	SERVER_URIS[qemu-nbd]="nbd+unix:///bench?socket=$sock"
	wait_nbd qemu-nbd "${SERVER_URIS[qemu-nbd]}" "${SERVER_PIDS[qemu-nbd]}"
}

stop_qemu_file() {
	kill "${SERVER_PIDS[qemu-nbd]}" 2>/dev/null || true
	wait "${SERVER_PIDS[qemu-nbd]}" 2>/dev/null || true
	unset 'SERVER_PIDS[qemu-nbd]'
}

# seconds CMD...: run CMD and print how long it took.
seconds() {
	local s e
	s=$(date +%s.%N)
	"$@" >"$WORK/seconds.log" 2>&1 || die "$* failed: $(tail -5 "$WORK/seconds.log")"
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN{print e-s}'
}

# nbdcopy_mbs URI BYTES: MB/s of one nbdcopy of the export to null:.
nbdcopy_mbs() {
	awk -v b="$2" -v t="$(seconds nbdcopy --connections=4 "$1" null:)" 'BEGIN{print b/t/1e6}'
}

# A chain of depth D: snapshot s1 holds the whole disk, each later one
# DEPTH_WRITE% rewritten at random places (so D=64 meets the default quota).
section_depth() {
	local depth disk i mid del oldest newest qdir qold qnew qdel cstored qbytes
	make_image "$WORK/depth.raw" "$DEPTH_SIZE"
	echo -e "depth\tcairnd_delete_s\tcairnd_oldest_mbs\tcairnd_newest_mbs\tqcow2_delete_s\tqcow2_oldest_mbs\tqcow2_newest_mbs\tcairnd_stored\tqcow2_bytes" >"$OUT/depth.tsv"
	for depth in 1 16 64; do
		disk=depth$depth
		cp "$WORK/depth.raw" "$WORK/$disk.raw"
		cairnc disk create "$disk" --adopt "$WORK/$disk.raw" >/dev/null
		for ((i = 1; i <= depth; i++)); do
			((i == 1)) || fill "$(cairnd_uri "$disk")" "$DEPTH_SIZE" "$DEPTH_WRITE" "$i"
			cairnc snapshot create "$disk" "s$i" >/dev/null
			snap_wait "$disk" "s$i" >/dev/null
		done
		sync
		oldest=$(nbdcopy_mbs "$(cairnd_uri "$disk@s1")" "$DEPTH_SIZE")
		newest=$(nbdcopy_mbs "$(cairnd_uri "$disk@s$depth")" "$DEPTH_SIZE")
		cstored=$(cairnc -o json snapshot capacity "$disk" | jfield stored_bytes)
		mid=$(((depth + 1) / 2))
		del=$(seconds cairnc snapshot delete "$disk" "s$mid")

		qcow2_chain "$depth"
		qdir=$WORK/qcow2-$depth
		qbytes=$(du -cB1 "$qdir"/*.qcow2 | tail -1 | cut -f1)
		start_qemu_file "$qdir/1.qcow2" -r
		qold=$(nbdcopy_mbs "${SERVER_URIS[qemu-nbd]}" "$DEPTH_SIZE")
		stop_qemu_file
		start_qemu_file "$qdir/$depth.qcow2" -r
		qnew=$(nbdcopy_mbs "${SERVER_URIS[qemu-nbd]}" "$DEPTH_SIZE")
		stop_qemu_file
		# qemu's way to drop a middle layer: commit it into its backing
		# file, then point the layer above at that file (metadata only).
		qdel=0
		if ((depth > 1)); then
			qdel=$(seconds qemu-img commit -q -f qcow2 "$qdir/$mid.qcow2")
			if ((mid < depth)); then
				qdel=$(awk -v a="$qdel" -v b="$(seconds qemu-img rebase -u -f qcow2 -F qcow2 -b "$qdir/$((mid - 1)).qcow2" "$qdir/$((mid + 1)).qcow2")" 'BEGIN{print a+b}')
			fi
		fi
		echo -e "$depth\t$del\t$oldest\t$newest\t$qdel\t$qold\t$qnew\t$cstored\t$qbytes" >>"$OUT/depth.tsv"
		cairnc disk delete "$disk" >/dev/null
		rm -rf "$qdir" "$WORK/$disk.raw"
	done
	# TODO(issue 3): RUNS repetitions and medians; the middle delete of a
	# depth-1 chain deletes its only snapshot.
	{
		echo "### Chain depth: delete and read, against a qcow2 chain served by qemu-nbd ($((DEPTH_SIZE >> 20)) MiB disk, $DEPTH_WRITE% rewritten per snapshot)"
		echo
		echo "| depth | cairnd delete (middle) s | cairnd read oldest MB/s | cairnd read newest MB/s | qemu-img commit + rebase (middle) s | qcow2 read oldest MB/s | qcow2 read newest MB/s | cairnd stored MiB | qcow2 chain MiB |"
		echo "|---|---|---|---|---|---|---|---|---|"
		awk -F'\t' 'NR>1{printf "| %s | %.3f | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f | %.0f |\n", $1, $2, $3, $4, $5, $6, $7, $8/2^20, $9/2^20}' "$OUT/depth.tsv"
		echo
	} >>"$REPORT"
}

{
	echo "# Snapshot benchmarks"
	echo
	echo "Command: \`SECTIONS='${SECTIONS[*]}' RUNS=$RUNS RUNTIME=$RUNTIME SIZE=$((SIZE >> 20))M DEPTH_SIZE=$((DEPTH_SIZE >> 20))M scripts/bench/snapshot.sh\`"
	echo
	system_info
	echo
} >"$REPORT"
start_cairnd_daemon
# Probe: a disk's snapshot list must be a JSON array.
cairnc disk create probe --size 1M >/dev/null
cairnc -o json snapshot list probe 2>&1 | "$PY" -c 'import json, sys; assert isinstance(json.load(sys.stdin), list)' 2>/dev/null ||
	die "this cairnd does not serve the snapshot API: $(cairnc -o json snapshot list probe 2>&1 | head -3)"
cairnc disk delete probe >/dev/null
for sec in "${SECTIONS[@]}"; do
	log "section $sec"
	case $sec in
	hold | impact | copyout | realistic | depth) "section_$sec" ;;
	*) die "unknown section $sec (hold impact copyout realistic depth)" ;;
	esac
done
cp "$REPORT" "$ROOT/scripts/bench/out/snapshot-latest.md"
cat "$REPORT"
log "results in $OUT"
