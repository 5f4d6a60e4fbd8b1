# Sourced by the end-to-end tests. The Python-driven ones (test-snapshots.sh,
# test-crash.sh, test-store-full.sh, test-machines.sh, test-vm-agent.sh)
# call e2e_setup; the shell-driven ones start cairnd with start_cairnd
# (below). After `e2e_setup NAME TOOL...`:
# $CAIRND is the daemon binary ($CAIRND from the environment, else
# bin/cairnd), $T a scratch directory that the EXIT trap removes after
# killing the cairnd whose pid is in $T/cairnd.pid, and $PY the Python
# that imports Debian's python3-libnbd. Exits 77 (skip) when something is
# missing. Extra cleanup: define e2e_cleanup_extra before the trap runs.
# The trap also unmounts whatever is still mounted under $T (cairnd's FUSE
# tree, DATA/fuse, stays mounted, disconnected, after a SIGKILL).
e2e_setup() {
	local name=$1 tool
	shift
	cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
	CAIRND=${CAIRND:-$PWD/bin/cairnd}
	PY=/usr/bin/python3
	[ -x "$CAIRND" ] || { echo "$name: $CAIRND is missing: run 'make build' first"; exit 77; }
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "$name: $tool is missing (scripts/deps.sh installs it)"; exit 77; }
	done
	"$PY" -c 'import nbd' 2>/dev/null || { echo "$name: $PY cannot import nbd (install python3-libnbd)"; exit 77; }
	T=$(mktemp -d "/tmp/cairn-$name.XXXXXX")
	export T CAIRND PYTHONPATH=$PWD/scripts/test/lib
	trap e2e_cleanup EXIT
}

e2e_cleanup() {
	local pid i m
	pid=$(cat "$T/cairnd.pid" 2>/dev/null)
	if [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; then
		# Not our child (the Python driver started it): poll until it is gone.
		for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
	fi
	# Deepest first, so a FUSE tree inside a mounted store goes before it.
	for m in $(awk -v t="$T/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m"
	done
	declare -F e2e_cleanup_extra >/dev/null && e2e_cleanup_extra
	for m in "${E2E_LOOPS[@]}"; do losetup -d "$m"; done
	if [ -n "${KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}

# e2e_loopfs MIB DIR [MKFS_ARG...]: a new ext4 of MIB MiB in $T on a loop
# device, mounted on DIR (created). The trap unmounts it and detaches the
# loop device. Needs root; call after e2e_setup.
e2e_loopfs() {
	local mib=$1 dir=$2 img loop
	shift 2
	img=$T/fs.$RANDOM.img
	mkdir -p "$dir"
	truncate -s "${mib}M" "$img"
	loop=$(losetup -f --show "$img") || { echo "FAIL losetup $img"; exit 1; }
	E2E_LOOPS+=("$loop")
	mkfs.ext4 -q -F "$@" "$loop" || { echo "FAIL mkfs.ext4 $loop"; exit 1; }
	mount "$loop" "$dir" || { echo "FAIL mount $loop $dir"; exit 1; }
	rmdir "$dir/lost+found" 2>/dev/null
}
E2E_LOOPS=()

# start_cairnd LOG ARGS...: for the shell-driven tests. Empties LOG, starts
# $CAIRND ARGS... in the background with its stderr in LOG, sets
# CAIRND_PID, and waits (bounded: 20 s) for the line cairnd logs once it
# serves, "cairnd ready". Returns 1 if that line does not come (cairnd
# exited, or is still starting): the caller reports LOG.
start_cairnd() {
	local log=$1 i
	shift
	: >"$log"
	"$CAIRND" "$@" 2>>"$log" &
	CAIRND_PID=$!
	for ((i = 0; i < 400; i++)); do
		grep -q "cairnd ready" "$log" && return 0
		kill -0 "$CAIRND_PID" 2>/dev/null || break
		sleep 0.05
	done
	grep -q "cairnd ready" "$log"
}
