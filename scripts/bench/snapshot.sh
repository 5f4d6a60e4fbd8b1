#!/usr/bin/env bash
# Snapshot benchmarks (issue 3, "Performance"); results and commands are
# recorded in docs/performance.md ("## Snapshots").
#
# Sections (SECTIONS selects some, default all, in this order):
#   hold      write hold of `snapshot create` under fio 4k random-write load
#             (QD32): hold_us of HOLD_SNAPS snapshots one second apart, RUNS
#             times, pooled: p50, p99, max (target p99 < 1 ms)
#   impact    fio 4k random write and random read (QD32, RUNTIME s) on a disk
#             of SIZE random data while its first snapshot copies out every
#             block, against the same job with no snapshot (target: at most
#             10% lower, aim for 5%); the copy-out must outlast the job
#   copyout   copy-out throughput (MB/s) and cairnd CPU seconds per GiB of
#             a snapshot of SIZE of random data, empty store, no load
#   realistic dedup and compression on an ext4 image made from REAL_DIR
#             with mkfs.ext4 -d; a second disk from a copy of the image
#   depth     chains of depth DEPTHS (1 16 64; each snapshot rewrites
#             DEPTH_WRITE% of the disk): delete time of the middle and the
#             oldest snapshot, nbdcopy read throughput of the oldest and
#             newest, next to a qcow2 external-snapshot chain of the same
#             writes served by qemu-nbd; space of both chains
#   gobench   go test -bench . ./cow (BenchmarkWrite4K, BenchmarkSnapshotHold,
#             BenchmarkCopyOut), -count RUNS, medians
#
# Environment [default]: RUNS [3], RUNTIME [15] s per fio job, RAMP [3],
# SIZE [2G] (impact, copyout), HOLD_SNAPS [30], HOLD_SIZE [1G], DEPTHS ["1 16 64"],
# DEPTH_SIZE [512M], DEPTH_WRITE [2] % per snapshot, REAL_DIR [/usr/share],
# REAL_SIZE [2G], WORKLOADS ["randwrite randread"] (impact), BENCH_TMP, BENCH_NICE, KEEP, CAIRND, CAIRN (as nbd.sh).
# QUICK=1: a smoke run of every section in a few minutes (RUNS=1, small
# sizes; its numbers are not for the record).
# Output: scripts/bench/out/snapshot-DATE/ (report.md, TSVs of every run),
# also copied to scripts/bench/out/snapshot-latest.md.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ "${QUICK:-0}" = 1 ]; then
	: "${RUNS:=1}" "${RUNTIME:=4}" "${RAMP:=1}" "${SIZE:=512M}" "${HOLD_SNAPS:=5}" "${HOLD_SIZE:=256M}" "${DEPTHS:=1 4 8}"
	: "${DEPTH_SIZE:=64M}" "${REAL_DIR:=/usr/share/doc}" "${REAL_SIZE:=512M}" "${GOBENCHTIME:=200ms}"
fi
: "${SIZE:=2G}"
need fio qemu-img qemu-nbd nbdcopy nbdinfo mkfs.ext4
bench_setup snapshot
DEPTH_SIZE=$(bytes "${DEPTH_SIZE:-512M}")
DEPTH_WRITE=${DEPTH_WRITE:-2}
HOLD_SNAPS=${HOLD_SNAPS:-30}
HOLD_SIZE=$(bytes "${HOLD_SIZE:-1G}")
DEPTHS=${DEPTHS:-1 16 64}
REAL_DIR=${REAL_DIR:-/usr/share}
REAL_SIZE=$(bytes "${REAL_SIZE:-2G}")
SECTIONS=(${SECTIONS:-hold impact copyout realistic depth gobench})
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

# snap_create DISK NAME: take a snapshot (returns at once, state copying).
snap_create() {
	cairnc snapshot create "$1" "$2" >"$WORK/snap-create.log" 2>&1 ||
		die "cairn snapshot create $1 $2 failed: $(cat "$WORK/snap-create.log")"
}

# store_empty: wait (at most 60 s) until the store holds no chunk, so the
# next copy-out writes every chunk instead of finding it already stored.
store_empty() {
	local i
	for ((i = 0; i < 300; i++)); do
		[ "$(cairnc -o json store stats | jfield chunks)" = 0 ] && return 0
		sleep 0.2
	done
	die "the store still holds chunks 60 s after every disk was deleted: $(cairnc -o json store stats)"
}

# fresh_cairnd: stop cairnd and start it again on an empty data directory.
fresh_cairnd() {
	local pid=${SERVER_PIDS[cairnd]}
	kill -TERM "$pid"
	wait "$pid" 2>/dev/null || true
	unset 'SERVER_PIDS[cairnd]'
	rm -rf "$WORK/cairnd"
	start_cairnd_daemon
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# The write hold: HOLD_SNAPS snapshots one second apart while fio writes
# 4 KiB blocks at random (QD32), RUNS times; hold_us of every snapshot is
# pooled. fio's own completion latency (p99, max) over the same run is
# the client's view of the same holds.
section_hold() {
	local disk run i fpid
	make_image "$WORK/hold.raw" "$HOLD_SIZE"
	: >"$WORK/holds"
	: >"$WORK/drains"
	echo -e "run\tfio_iops\tfio_p99_us\tfio_max_us\tload1" >"$OUT/hold.tsv"
	for ((run = 1; run <= RUNS; run++)); do
		disk=hold$run
		cairnc disk create "$disk" --adopt "$WORK/hold.raw" >/dev/null
		snap_create "$disk" base
		snap_wait "$disk" base >/dev/null
		fio --name=load --ioengine=nbd --uri="$(cairnd_uri "$disk")" --rw=randwrite --bs=4k --iodepth=32 \
			--time_based --runtime=$((HOLD_SNAPS + 4)) --invalidate=0 --norandommap --randrepeat=0 \
			--output-format=json --output="$WORK/hold-fio-$run.json" >"$WORK/fio.log" 2>&1 &
		fpid=$!
		sleep 2
		for ((i = 1; i <= HOLD_SNAPS; i++)); do
			snap_create "$disk" "hold-$i"
			sleep 1
		done
		wait "$fpid" || die "fio under the hold test failed: $(tail -5 "$WORK/fio.log")"
		cairnc -o json snapshot list "$disk" | "$PY" -c 'import json, sys
for s in json.load(sys.stdin):
    if s["name"].startswith("hold-"): print(s["hold_us"])' >>"$WORK/holds"
		cairnc -o json snapshot list "$disk" | "$PY" -c 'import json, sys
for s in json.load(sys.stdin):
    if s["name"].startswith("hold-"): print(s.get("drain_us", 0))' >>"$WORK/drains"
		"$PY" - "$WORK/hold-fio-$run.json" "$run" "$(load1)" >>"$OUT/hold.tsv" <<'PYEOF'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
c = w["clat_ns"]
print(sys.argv[2], round(w["iops"]), c["percentile"]["99.000000"] / 1000, c["max"] / 1000, sys.argv[3], sep="\t")
PYEOF
		cairnc disk delete --force "$disk" >/dev/null
	done
	cp "$WORK/holds" "$OUT/holds.txt"
	cp "$WORK/drains" "$OUT/drains.txt"
	local m
	read -r -a m <<<"$(medians "$OUT/hold.tsv" fio_iops fio_p99_us fio_max_us)"
	{
		echo "### Write hold under fio 4k random writes (QD32) on a $((HOLD_SIZE >> 20)) MiB disk: $HOLD_SNAPS snapshots one second apart, $RUNS runs, $(wc -l <"$WORK/holds") holds pooled"
		echo
		echo "| hold p50 µs | hold p90 µs | hold p95 µs | hold p99 µs | hold max µs | holds > 1 ms | fio IOPS (median) | fio clat p99 µs (median) | fio clat max µs (median) |"
		echo "|---|---|---|---|---|---|---|---|---|"
		echo "| $(percentile 50 <"$WORK/holds") | $(percentile 90 <"$WORK/holds") | $(percentile 95 <"$WORK/holds") | $(percentile 99 <"$WORK/holds") | $(percentile 100 <"$WORK/holds") | $(awk '$1 > 1000' "$WORK/holds" | wc -l) | ${m[0]} | ${m[1]} | ${m[2]} |"
		echo
		echo "Drain (from the seal until the sealed epoch's writes in flight had finished; create answers after it, and only writes that must save one of the new snapshot's blocks wait for it): p50 $(percentile 50 <"$WORK/drains") µs, p99 $(percentile 99 <"$WORK/drains") µs, max $(percentile 100 <"$WORK/drains") µs."
		echo
	} >>"$REPORT"
}

# fio_impact URI RW: one fio job of 4 KiB at QD32 (RUNTIME after RAMP);
# prints "IOPS P99_US MEAN_US".
fio_impact() {
	local json=$WORK/fio-$RANDOM.json
	fio --name=impact --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 --time_based --runtime="$RUNTIME" \
		--ramp_time="$RAMP" --invalidate=0 --norandommap --randrepeat=0 \
		--output-format=json --output="$json" >"$WORK/fio.log" 2>&1 ||
		die "fio failed: $(tail -5 "$WORK/fio.log")"
	"$PY" - "$json" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["total_ios"] else j["write"]
print(round(d["iops"]), d["clat_ns"]["percentile"]["99.000000"] / 1000, round(d["clat_ns"]["mean"] / 1000))
PYEOF
}

# The cost of a copy-out to the guest: 4 KiB random writes and random reads
# (QD32) on a disk adopted from SIZE of random data, (a) with no snapshot
# (nothing to copy) and (b) right after its first snapshot, which must copy
# out every block: the job starts at once and the copy-out must last past
# its end (progress_at_end < 100). Each copying run uses a fresh disk on an
# empty store, deleted (copy-out cancelled) after the job. The same runs
# give the copy-out throughput with no load (section copyout).
# impact_case RUN RW CASE: one fio job on a fresh disk adopted from the
# image on an empty store, in state CASE: no-snapshot; fresh-epoch (first
# snapshot taken and copied out before the job: the same change-tracking
# cost as "copying", but nothing copies out); copying (first snapshot taken
# just before the job). Appends a row to impact.tsv.
impact_case() {
	local run=$1 rw=$2 kind=$3 disk=$3$1$2 r progress=-
	store_empty
	sync
	cairnc disk create "$disk" --adopt "$WORK/impact.raw" >/dev/null
	if [ "$kind" != no-snapshot ]; then
		snap_create "$disk" full
		if [ "$kind" = fresh-epoch ]; then snap_wait "$disk" full >/dev/null; fi
	fi
	r=$(fio_impact "$(cairnd_uri "$disk")" "$rw")
	if [ "$kind" = copying ]; then
		progress=$(cairnc -o json snapshot show "$disk" full | jfield progress)
	fi
	echo -e "$run\t$rw\t$kind\t${r// /\\t}\t$progress\t$(load1)" >>"$OUT/impact.tsv"
	cairnc disk delete --force "$disk" >/dev/null
}

section_impact() {
	local run rw kind
	make_image "$WORK/impact.raw" "$SIZE"
	echo -e "run\trw\tcase\tiops\tp99_us\tmean_us\tprogress_at_end\tload1" >"$OUT/impact.tsv"
	for ((run = 1; run <= RUNS; run++)); do
		for rw in ${WORKLOADS:-randwrite randread}; do
			for kind in no-snapshot fresh-epoch copying; do
				impact_case "$run" "$rw" "$kind"
			done
			log "impact run $run $rw: $(tail -3 "$OUT/impact.tsv" | cut -f3-5 | tr '\n\t' '; ')"
		done
	done
	{
		echo "### fio 4k QD32 on a disk of $((SIZE >> 20)) MiB of random data while its first snapshot copies out every block, against no snapshot ($RUNS runs, medians, ${RUNTIME} s after ${RAMP} s ramp)"
		echo
		echo "\"no snapshot\": the adopted disk, every block already marked changed (no change-tracking cost); \"fresh epoch\": its first snapshot already copied out, so first writes to each 64 KiB block pay change tracking as in \"copying\", where the first snapshot copies out meanwhile."
		echo
		echo "| workload | IOPS no snapshot | IOPS fresh epoch | IOPS copying | copying / no snapshot | per-run | copying / fresh epoch | per-run | p99 µs no snapshot / fresh / copying | mean µs no snapshot / fresh / copying | copy-out progress at job end % |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|"
		"$PY" - "$OUT/impact.tsv" <<'PYEOF'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for rw in [w for w in ("randwrite", "randread") if any(r["rw"] == w for r in rows)]:
    def med(case, col):
        return st.median(float(r[col]) for r in rows if r["rw"] == rw and r["case"] == case)
    b, f, c = med("no-snapshot", "iops"), med("fresh-epoch", "iops"), med("copying", "iops")
    prog = " ".join(f"{float(r['progress_at_end']):.0f}" for r in rows if r["rw"] == rw and r["case"] == "copying")
    runs = sorted({r["run"] for r in rows})
    def one(run, case):
        return next(float(r["iops"]) for r in rows if r["run"] == run and r["rw"] == rw and r["case"] == case)
    per = ", ".join(f"{one(k, 'copying') / one(k, 'no-snapshot'):.2f}" for k in runs)
    perf = ", ".join(f"{one(k, 'copying') / one(k, 'fresh-epoch'):.2f}" for k in runs)
    lat = lambda col: " / ".join(f"{med(k, col):.0f}" for k in ("no-snapshot", "fresh-epoch", "copying"))
    print(f"| {rw} | {b:.0f} | {f:.0f} | {c:.0f} | {c / b:.2f} | {per} | {c / f:.2f} | {perf} | {lat('p99_us')} | {lat('mean_us')} | {prog} |")
PYEOF
		echo
	} >>"$REPORT"
}

# Copy-out with no load: a fresh disk adopted from SIZE of random data on an
# empty store, its first snapshot timed from create to ready; cairnd's CPU
# (utime+stime) over the same interval.
section_copyout() {
	local disk run secs t0 t1 pid=${SERVER_PIDS[cairnd]}
	make_image "$WORK/impact.raw" "$SIZE"
	echo -e "run\tseconds\tmb_s\tcpu_s_per_gib\tload1" >"$OUT/copyout.tsv"
	for ((run = 1; run <= RUNS; run++)); do
		disk=copyout$run
		store_empty
		sync
		cairnc disk create "$disk" --adopt "$WORK/impact.raw" >/dev/null
		t0=$(cpu_ticks "$pid")
		snap_create "$disk" full
		secs=$(snap_wait "$disk" full)
		t1=$(cpu_ticks "$pid")
		echo -e "$run\t$secs\t$(awk -v b="$SIZE" -v s="$secs" 'BEGIN{print b/s/1e6}')\t$(awk -v t=$((t1 - t0)) -v h="$TICKS" -v b="$SIZE" 'BEGIN{print t/h/(b/2^30)}')\t$(load1)" >>"$OUT/copyout.tsv"
		log "copyout run $run: $(tail -1 "$OUT/copyout.tsv")"
		cairnc disk delete --force "$disk" >/dev/null # keeps the adopted file
	done
	{
		echo "### Copy-out of a $((SIZE >> 20)) MiB snapshot of random data (every block changed, empty store, no guest load; $RUNS runs, medians)"
		echo
		local m
		read -r -a m <<<"$(medians "$OUT/copyout.tsv" seconds mb_s cpu_s_per_gib)"
		echo "| seconds | MB/s | cairnd CPU s/GiB |"
		echo "|---|---|---|"
		echo "| ${m[0]} | ${m[1]} | ${m[2]} |"
		echo
	} >>"$REPORT"
}

# stats_row LABEL BEFORE AFTER: a table row of what the store gained.
stats_row() {
	"$PY" - "$@" <<'PYEOF'
import json, sys
b, a = json.loads(sys.argv[2]), json.loads(sys.argv[3])
d = {k: a[k] - b[k] for k in ("logical_bytes", "unique_bytes", "stored_bytes", "chunks", "zero_entries")}
def ratio(a, b):
    return f"{a / b:.2f}x" if b else "all already stored"
print(f"| {sys.argv[1]} | {d['logical_bytes'] / 2**20:.0f} | {d['zero_entries']} | {d['chunks']} | {d['unique_bytes'] / 2**20:.0f} | {d['stored_bytes'] / 2**20:.0f} "
      f"| {ratio(d['logical_bytes'], d['unique_bytes'])} | {ratio(d['unique_bytes'], d['stored_bytes'])} |")
PYEOF
}

# Dedup and compression on a realistic image: ext4 made from REAL_DIR
# (mkfs.ext4 -d: no mount needed), adopted as a disk and snapshotted; then
# a second disk adopted from a copy of the same image, whose blocks the
# store must already hold.
section_realistic() {
	local s0 s1 s2
	store_empty
	log "making an ext4 image of $REAL_DIR"
	mkfs.ext4 -q -F -d "$REAL_DIR" "$WORK/rootfs.raw" "$((REAL_SIZE >> 20))M" ||
		die "mkfs.ext4 -d $REAL_DIR failed (does it fit in REAL_SIZE?)"
	cp --sparse=always "$WORK/rootfs.raw" "$WORK/rootfs2.raw"
	s0=$(cairnc -o json store stats)
	cairnc disk create rootfs --adopt "$WORK/rootfs.raw" >/dev/null
	snap_create rootfs base
	snap_wait rootfs base >/dev/null
	s1=$(cairnc -o json store stats)
	cairnc disk create rootfs2 --adopt "$WORK/rootfs2.raw" >/dev/null
	snap_create rootfs2 base
	snap_wait rootfs2 base >/dev/null
	s2=$(cairnc -o json store stats)
	echo "$s0" >"$OUT/realistic-stats0.json"
	echo "$s1" >"$OUT/realistic-stats1.json"
	echo "$s2" >"$OUT/realistic-stats2.json"
	{
		echo "### Dedup and compression: ext4 of $((REAL_SIZE >> 20)) MiB made from $REAL_DIR ($(du -sh "$REAL_DIR" 2>/dev/null | cut -f1) on disk, $(du -B1M "$WORK/rootfs.raw" | cut -f1) MiB allocated in the image), one snapshot; then a second disk from a copy of the image"
		echo
		echo "| added to the store | logical MiB | zero entries | chunks | unique MiB (after dedup) | stored MiB (after compression) | dedup | compression |"
		echo "|---|---|---|---|---|---|---|---|"
		stats_row "disk 1 (snapshot base)" "$s0" "$s1"
		stats_row "disk 2, a copy of the image (snapshot base)" "$s1" "$s2"
		stats_row "both" "$s0" "$s2"
		echo
	} >>"$REPORT"
	cairnc disk delete rootfs >/dev/null
	cairnc disk delete rootfs2 >/dev/null
	rm -f "$WORK/rootfs.raw" "$WORK/rootfs2.raw"
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

# nbdcopy_med URI BYTES: the median MB/s of RUNS nbdcopy reads.
nbdcopy_med() {
	local i
	for ((i = 0; i < RUNS; i++)); do nbdcopy_mbs "$1" "$2"; done | "$PY" -c 'import sys, statistics as s
print(s.median(float(x) for x in sys.stdin.read().split()))'
}

# A chain of depth D: snapshot s1 holds the whole disk (DEPTH_SIZE of random
# data), each later one DEPTH_WRITE% rewritten with fresh random data at
# random places (so D=64 meets the default quota). The same writes (same
# places, fio --randseed) go into a qcow2 chain: 1.qcow2 converted from the
# image, then one overlay per snapshot. Measured: nbdcopy read of the oldest
# and newest snapshot (median of RUNS), the space both chains take, then the
# delete of the middle and of the oldest snapshot; qemu's counterpart of a
# delete is qemu-img commit of that layer into its backing file plus a
# rebase -u of the layer above (the oldest, 1.qcow2, cannot be dropped:
# committing 2.qcow2 into it is the counterpart).
section_depth() {
	local depth disk i mid del odel oldest newest qdir qold qnew qdel qodel cstored sdu qbytes
	make_image "$WORK/depth.raw" "$DEPTH_SIZE"
	echo -e "depth\tcairnd_delete_mid_s\tcairnd_delete_oldest_s\tcairnd_oldest_mbs\tcairnd_newest_mbs\tqcow2_delete_mid_s\tqcow2_delete_oldest_s\tqcow2_oldest_mbs\tqcow2_newest_mbs\tcairnd_stored\tcairnd_store_du\tqcow2_bytes\tload1" >"$OUT/depth.tsv"
	for depth in $DEPTHS; do
		disk=depth$depth
		fresh_cairnd # so that du of the store directory counts this chain only
		cp "$WORK/depth.raw" "$WORK/$disk.raw"
		cairnc disk create "$disk" --adopt "$WORK/$disk.raw" >/dev/null
		for ((i = 1; i <= depth; i++)); do
			((i == 1)) || fill "$(cairnd_uri "$disk")" "$DEPTH_SIZE" "$DEPTH_WRITE" "$i"
			snap_create "$disk" "s$i"
			snap_wait "$disk" "s$i" >/dev/null
		done
		sync
		oldest=$(nbdcopy_med "$(cairnd_uri "$disk@s1")" "$DEPTH_SIZE")
		newest=$(nbdcopy_med "$(cairnd_uri "$disk@s$depth")" "$DEPTH_SIZE")
		cstored=$(cairnc -o json store stats | jfield stored_bytes)
		sdu=$(du -sB1 "$WORK/cairnd/store" | cut -f1)
		mid=$(((depth + 1) / 2))
		del=$(seconds cairnc snapshot delete "$disk" "s$mid")
		odel=nan
		((mid == 1)) || odel=$(seconds cairnc snapshot delete "$disk" s1)

		qcow2_chain "$depth"
		qdir=$WORK/qcow2-$depth
		qbytes=$(du -cB1 "$qdir"/*.qcow2 | tail -1 | cut -f1)
		start_qemu_file "$qdir/1.qcow2" -r
		qold=$(nbdcopy_med "${SERVER_URIS[qemu-nbd]}" "$DEPTH_SIZE")
		stop_qemu_file
		start_qemu_file "$qdir/$depth.qcow2" -r
		qnew=$(nbdcopy_med "${SERVER_URIS[qemu-nbd]}" "$DEPTH_SIZE")
		stop_qemu_file
		qdel=nan qodel=nan
		if ((depth > 2)); then
			qdel=$(seconds qemu-img commit -q -f qcow2 "$qdir/$mid.qcow2")
			qdel=$(awk -v a="$qdel" -v b="$(seconds qemu-img rebase -u -f qcow2 -F qcow2 -b "$qdir/$((mid - 1)).qcow2" "$qdir/$((mid + 1)).qcow2")" 'BEGIN{print a+b}')
			qodel=$(seconds qemu-img commit -q -f qcow2 "$qdir/2.qcow2")
		fi
		echo -e "$depth\t$del\t$odel\t$oldest\t$newest\t$qdel\t$qodel\t$qold\t$qnew\t$cstored\t$sdu\t$qbytes\t$(load1)" >>"$OUT/depth.tsv"
		log "depth $depth: $(tail -1 "$OUT/depth.tsv")"
		cairnc disk delete --force "$disk" >/dev/null
		rm -rf "$qdir" "$WORK/$disk.raw"
	done
	{
		echo "### Chain depth: delete and read, against a qcow2 chain served by qemu-nbd ($((DEPTH_SIZE >> 20)) MiB disk of random data, $DEPTH_WRITE% = $((DEPTH_SIZE * DEPTH_WRITE / 100 >> 20)) MiB rewritten per snapshot; reads: median of $RUNS nbdcopy --connections=4 to null:)"
		echo
		echo "| depth | cairnd delete middle s | cairnd delete oldest s | qemu-img commit+rebase middle s | qemu-img commit oldest s | cairnd read oldest MB/s | cairnd read newest MB/s | qcow2 read oldest MB/s | qcow2 read newest MB/s |"
		echo "|---|---|---|---|---|---|---|---|---|"
		awk -F'\t' 'NR>1{printf "| %s | %.3f | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f | %.0f |\n", $1, $2, $3, $6, $7, $4, $5, $8, $9}' "$OUT/depth.tsv"
		echo
		echo "### Space: the whole chain (before the deletes) against the qcow2 chain of the same writes"
		echo
		echo "| snapshots | written MiB (image + rewrites) | cairnd stored MiB (store stats) | cairnd store directory MiB (du) | qcow2 chain MiB (du) | cairnd / qcow2 |"
		echo "|---|---|---|---|---|---|"
		awk -F'\t' -v s="$DEPTH_SIZE" -v w="$DEPTH_WRITE" 'NR>1{printf "| %s | %.0f | %.0f | %.0f | %.0f | %.2f |\n", $1, (s + ($1-1)*int(s/65536*w/100)*65536)/2^20, $10/2^20, $11/2^20, $12/2^20, $10/$12}' "$OUT/depth.tsv"
		echo
	} >>"$REPORT"
}

# The cow package's Go benchmarks, -count RUNS: the median of each metric.
section_gobench() {
	(cd "$ROOT" && go test -run XXX -bench . -benchtime "${GOBENCHTIME:-2s}" -count "$RUNS" ./cow) >"$OUT/gobench.txt" 2>&1 ||
		die "go test -bench ./cow failed: $(tail -5 "$OUT/gobench.txt")"
	{
		echo "### Go benchmarks of the cow package (go test -run XXX -bench . -benchtime ${GOBENCHTIME:-2s} -count $RUNS ./cow; medians)"
		echo
		"$PY" - "$OUT/gobench.txt" <<'PYEOF'
import collections, re, statistics as st, sys
vals = collections.OrderedDict()
for line in open(sys.argv[1]):
    if not line.startswith("Benchmark"):
        continue
    f = line.split()
    name = re.sub(r"-\d+$", "", f[0])
    for i in range(2, len(f) - 1, 2):
        vals.setdefault(name, collections.OrderedDict()).setdefault(f[i + 1], []).append(float(f[i]))
print("| benchmark | metrics (median) |\n|---|---|")
for name, m in vals.items():
    print(f"| {name} | " + ", ".join(f"{st.median(v):.4g} {u}" for u, v in m.items()) + " |")
PYEOF
		echo
	} >>"$REPORT"
}

{
	echo "# Snapshot benchmarks"
	echo
	echo "Command: \`SECTIONS='${SECTIONS[*]}' RUNS=$RUNS RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$((SIZE >> 20))M HOLD_SNAPS=$HOLD_SNAPS DEPTHS='$DEPTHS' DEPTH_SIZE=$((DEPTH_SIZE >> 20))M DEPTH_WRITE=$DEPTH_WRITE REAL_DIR=$REAL_DIR REAL_SIZE=$((REAL_SIZE >> 20))M${BENCH_NICE:+ BENCH_NICE=$BENCH_NICE} scripts/bench/snapshot.sh\`"
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
	hold | impact | copyout | realistic | depth | gobench) "section_$sec" ;;
	*) die "unknown section $sec (hold impact copyout realistic depth gobench)" ;;
	esac
done
echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$REPORT"
cp "$REPORT" "$ROOT/scripts/bench/out/snapshot-latest.md"
cat "$REPORT"
log "results in $OUT"
