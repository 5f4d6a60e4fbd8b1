# Shared helpers of the benchmark scripts (sourced by nbd.sh and snapshot.sh).
#
# A script that sources this file calls bench_setup first. Servers started
# with start_* are recorded in SERVER_PIDS and stopped by bench_cleanup,
# which bench_setup installs as the EXIT trap.

# CAIRND and CAIRN: the binaries under test (make bench builds them);
# CAIRND_FLAGS: extra cairnd flags (e.g. --copy-out-share 0.5).
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
CAIRND=${CAIRND:-$ROOT/bin/cairnd}
CAIRN=${CAIRN:-$ROOT/bin/cairn}
PY=$(command -v /usr/bin/python3 || command -v python3)
TICKS=$(getconf CLK_TCK)

declare -A SERVER_PIDS=()   # server name -> pid
declare -A SERVER_URIS=()   # server name -> NBD URI of the export "bench"

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

# need TOOL...: fail with the package that provides each missing tool.
need() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null && continue
		case $t in
		fio) die "fio is missing: apt-get install fio (or make deps)" ;;
		nbdkit) die "nbdkit is missing: apt-get install nbdkit (or make deps)" ;;
		qemu-nbd | qemu-img) die "$t is missing: apt-get install qemu-utils (or make deps)" ;;
		nbdcopy | nbdinfo) die "$t is missing: apt-get install libnbd-bin (or make deps)" ;;
		*) die "$t is missing" ;;
		esac
	done
	[ -n "$PY" ] || die "python3 is missing: apt-get install python3"
}

# bench_setup NAME: the common parameters (RUNS, RUNTIME, RAMP, SIZE from
# the environment), OUT (scripts/bench/out/NAME-DATE), WORK (a scratch
# directory on a real disk) and the EXIT trap that cleans up.
bench_setup() {
	RUNS=${RUNS:-3}
	RUNTIME=${RUNTIME:-15}
	RAMP=${RAMP:-3}
	SIZE=$(bytes "${SIZE:-4G}")
	((SIZE % (1 << 20) == 0 && SIZE > 0)) || die "SIZE must be a positive whole number of MiB"
	OUT=$ROOT/scripts/bench/out/$1-$(date +%Y%m%d-%H%M%S)
	WORK=$(mktemp -d "$(tmp_base)/cairn-$1.XXXXXX") || die "cannot create a scratch directory"
	mkdir -p "$OUT" || die "cannot create $OUT"
	# BENCH_NICE (e.g. -15, needs root): the script, and so every server and
	# client it starts, runs at this niceness, ahead of other work on a
	# shared machine. With autogroup scheduling, niceness only counts
	# within a session, so the session's group gets it too.
	if [ -n "${BENCH_NICE:-}" ]; then
		renice -n "$BENCH_NICE" -p $$ >/dev/null || die "cannot renice to $BENCH_NICE (needs root)"
		if [ -w /proc/$$/autogroup ]; then
			echo "$BENCH_NICE" >/proc/$$/autogroup || die "cannot set the autogroup's nice to $BENCH_NICE"
		fi
	fi
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

# bench_cleanup stops every server this script started (SIGTERM, then
# SIGKILL after 10 s) and removes WORK unless KEEP=1.
bench_cleanup() {
	local name pid i
	set +e
	for name in "${!SERVER_PIDS[@]}"; do
		pid=${SERVER_PIDS[$name]}
		kill -TERM "$pid" 2>/dev/null || continue
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "${KEEP:-0}" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
}

# tmp_base: /var/tmp unless it is a tmpfs (the image must be on a real disk).
tmp_base() {
	local d
	for d in "${BENCH_TMP:-}" /var/tmp "$ROOT/.bench"; do
		[ -n "$d" ] || continue
		mkdir -p "$d" 2>/dev/null || continue
		[ "$(stat -f -c %T "$d")" != tmpfs ] && { echo "$d"; return; }
	done
	die "no directory on a real disk for the image: set BENCH_TMP"
}

# bytes SIZE: 4G, 512M, 1T or bytes -> bytes (binary units).
bytes() {
	local n=${1%[KMGTkmgt]} u=${1: -1}
	case $u in
	K | k) echo $((n << 10)) ;; M | m) echo $((n << 20)) ;;
	G | g) echo $((n << 30)) ;; T | t) echo $((n << 40)) ;;
	*) echo "$1" ;;
	esac
}

# make_image PATH BYTES: a raw file fully written with random data (so reads
# hit real content and nothing is sparse), flushed, then read once into the
# page cache so every server starts from the same warm cache.
make_image() {
	local path=$1 size=$2
	if [ -f "$path" ] && [ "$(stat -c %s "$path")" = "$size" ]; then
		log "reusing image $path"
	else
		log "writing $((size >> 20)) MiB of random data to $path"
		dd if=/dev/urandom of="$path" bs=1M count=$((size >> 20)) iflag=fullblock conv=fsync status=none ||
			die "cannot write the image $path"
	fi
	cat "$path" >/dev/null
}

# cpu_ticks PID: utime+stime of a process (all its threads), in clock ticks.
cpu_ticks() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || die "server pid $1 is gone (see its log in $WORK)"
	stat=${stat##*) }   # the comm field may hold spaces: fields start after ") "
	set -- $stat
	echo $((${12} + ${13}))
}

# alive NAME: fail if the server NAME has exited.
alive() {
	kill -0 "${SERVER_PIDS[$1]}" 2>/dev/null || die "$1 (pid ${SERVER_PIDS[$1]}) has exited: $(tail -5 "$WORK/$1.log")"
}

# cpu_sample: "BUSY KTHREADS" clock ticks: all CPUs' non-idle time since
# boot (/proc/stat) and the part of it spent by kernel threads (children of
# kthreadd, such as the writeback workers that flush the image's dirty pages).
cpu_sample() {
	"$PY" - <<'PYEOF'
import os
f = open("/proc/stat").readline().split()[1:]
busy = sum(int(v) for i, v in enumerate(f[:8]) if i not in (3, 4))  # not idle, iowait
kt = 0
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        st = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    v = st[st.rindex(")") + 2:].split()
    if p == "2" or v[1] == "2":
        kt += int(v[11]) + int(v[12])
print(busy, kt)
PYEOF
}

# wait_quiet: wait (at most QUIET_WAIT seconds, default 60) until the rest
# of the machine uses less than MAX_FOREIGN cores (default 0.25) over one
# second, so that a job does not start while other work competes for the
# cores. Returns 0 either way; logs when it gave up waiting.
wait_quiet() {
	local b0 k0 b1 k1 start=$SECONDS
	while :; do
		read -r b0 k0 <<<"$(cpu_sample)"
		sleep 1
		read -r b1 k1 <<<"$(cpu_sample)"
		awk -v b=$((b1 - b0 - (k1 - k0))) -v t="$TICKS" -v m="${MAX_FOREIGN:-0.25}" 'BEGIN{exit !(b/t < m)}' && return 0
		if ((SECONDS - start >= ${QUIET_WAIT:-60})); then
			log "the machine is still busy after ${QUIET_WAIT:-60} s (load $(cut -d' ' -f1 /proc/loadavg)): measuring anyway"
			return 0
		fi
		sleep 2
	done
}

# wait_nbd NAME URI PID: poll (bounded: 30 s) until the export answers.
wait_nbd() {
	local i
	for ((i = 0; i < 300; i++)); do
		kill -0 "$3" 2>/dev/null || die "$1 exited at start: $(tail -5 "$WORK/$1.log")"
		nbdinfo --size "$2" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$1 did not serve $2 within 30 s: $(tail -5 "$WORK/$1.log")"
}

# start_cairnd_daemon [FLAG...]: cairnd on WORK/cairnd (its API socket
# there, NBD on WORK/cairnd-nbd.sock), waiting until its API answers.
start_cairnd_daemon() {
	local data=$WORK/cairnd i
	[ -x "$CAIRND" ] && [ -x "$CAIRN" ] || die "$CAIRND or $CAIRN is missing: run 'make build'"
	mkdir -p "$data"
	"$CAIRND" --data-dir "$data" --api-socket "$data/cairn.sock" --nbd-socket "$WORK/cairnd-nbd.sock" \
		--log-level warn --adopt-allow "$WORK" ${CAIRND_FLAGS:-} "$@" >"$WORK/cairnd.log" 2>&1 &
	SERVER_PIDS[cairnd]=$!
	for ((i = 0; i < 300; i++)); do
		[ -S "$data/cairn.sock" ] && cairnc info >/dev/null 2>&1 && return 0
		alive cairnd
		sleep 0.1
	done
	die "cairnd's API did not answer within 30 s: $(tail -5 "$WORK/cairnd.log")"
}

# cairnc ARG...: the cairn CLI against the cairnd of start_cairnd_daemon.
cairnc() { "$CAIRN" --socket "$WORK/cairnd/cairn.sock" "$@"; }

# cairnd_uri EXPORT: the NBD URI of one of cairnd's exports (DISK or DISK@SNAPSHOT).
cairnd_uri() { echo "nbd+unix:///$1?socket=$WORK/cairnd-nbd.sock"; }

# start_cairnd IMAGE: cairnd adopting IMAGE as disk "bench".
start_cairnd() {
	start_cairnd_daemon
	cairnc disk create bench --adopt "$1" >"$WORK/cairn-create.log" 2>&1 ||
		die "cairn disk create --adopt $1 failed: $(cat "$WORK/cairn-create.log")"
	SERVER_URIS[cairnd]=$(cairnd_uri bench)
	wait_nbd cairnd "${SERVER_URIS[cairnd]}" "${SERVER_PIDS[cairnd]}"
}

# start_nbdkit IMAGE: nbdkit's file plugin (default: 16 threads, multi-conn).
start_nbdkit() {
	local sock=$WORK/nbdkit.sock
	nbdkit -f -U "$sock" -e bench file file="$1" >"$WORK/nbdkit.log" 2>&1 &
	SERVER_PIDS[nbdkit]=$!
	SERVER_URIS[nbdkit]="nbd+unix:///bench?socket=$sock"
	wait_nbd nbdkit "${SERVER_URIS[nbdkit]}" "${SERVER_PIDS[nbdkit]}"
}

# start_qemu_nbd IMAGE: qemu-nbd as a fair peer: persistent (-t), 8 clients
# at once (-e 8, which also makes it advertise multi-conn), page cache, a
# thread pool for I/O.
start_qemu_nbd() {
	local sock=$WORK/qemu-nbd.sock
	qemu-nbd -t -e 8 --cache=writeback --aio=threads -f raw -k "$sock" -x bench "$1" >"$WORK/qemu-nbd.log" 2>&1 &
	SERVER_PIDS[qemu-nbd]=$!
	SERVER_URIS[qemu-nbd]="nbd+unix:///bench?socket=$sock"
	wait_nbd qemu-nbd "${SERVER_URIS[qemu-nbd]}" "${SERVER_PIDS[qemu-nbd]}"
}

# fio_summary FILE: from the first (group-reported) job of a fio JSON file,
# one line "OPS_PER_S BYTES OPS BYTES_PER_S P99_US FIO_CPU_PCT" (read and
# write together; the ramp is not counted).
fio_summary() {
	"$PY" - "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
r, w = j["read"], j["write"]
ops = r["total_ios"] + w["total_ios"]
secs = max(r["runtime"], w["runtime"]) / 1000 or 1
def p99(d):
    p = d.get("clat_ns", {}).get("percentile", {})
    return p.get("99.000000", 0) / 1000
lat = max(p99(r), p99(w))
print(ops / secs, r["io_bytes"] + w["io_bytes"], ops, (r["io_bytes"] + w["io_bytes"]) / secs, lat, j["usr_cpu"] + j["sys_cpu"])
EOF
}

# system_info: the machine and tool versions, as markdown list items.
system_info() {
	echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
	echo "- machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
	echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- cairnd: $("$CAIRND" --version 2>&1 | head -1); $(go version 2>/dev/null | cut -d' ' -f3-)"
	echo "- peers: $(nbdkit --version | head -1), $(qemu-nbd --version | head -1), $(fio --version), $(nbdcopy --version | head -1)"
}
