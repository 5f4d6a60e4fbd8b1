#!/usr/bin/env bash
# End-to-end tour of bin/cairnd and bin/cairn (make test builds them first):
# create, list, show, grow a disk; write and read it over NBD with qemu-io;
# export list while a client is connected; delete refused while connected;
# a second cairnd on the same data directory fails; SIGTERM exits 0; the
# data is still there after a restart. Exit 77 (skip) without the binaries
# or qemu-io.
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/test/lib/common.sh
CAIRND=$PWD/bin/cairnd
CAIRN=$PWD/bin/cairn
for b in "$CAIRND" "$CAIRN"; do
	[ -x "$b" ] || { echo "test-cli: $b is missing: run 'make build' first"; exit 77; }
done
command -v qemu-io >/dev/null || { echo "test-cli: qemu-io is missing (scripts/deps.sh installs qemu-utils)"; exit 77; }

T=$(mktemp -d /tmp/cairn-cli.XXXXXX)
DATA=$T/data
export CAIRN_SOCKET=$DATA/cairn.sock
NBD="nbd+unix:///vm1?socket=$DATA/nbd.sock"
PID=
QPID=
pass=0 fail=0

cleanup() {
	exec 3>&- 4<&- 2>/dev/null
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
# check DESC CMD...: the command must succeed.
check() { local d=$1; shift; if "$@" >"$T/out" 2>&1; then ok "$d"; else bad "$d: $(cat "$T/out")"; fi; }
# contains DESC NEEDLE: the last command's output contains NEEDLE.
contains() { if grep -qF -- "$2" "$T/out"; then ok "$1"; else bad "$1: no '$2' in: $(cat "$T/out")"; fi; }

# cli_start: start cairnd on $DATA and wait until it logs that it is ready.
cli_start() {
	start_cairnd "$T/cairnd.log" --data-dir "$DATA"
	local rc=$?
	PID=$CAIRND_PID
	if [ $rc -eq 0 ]; then
		ok "cairnd started (pid $PID)"
	else
		bad "cairnd did not become ready: $(cat "$T/cairnd.log")"
		exit 1
	fi
}

# stop_cairnd SIGNAL: the daemon must exit 0 within 5 seconds.
stop_cairnd() {
	local start=$SECONDS rc
	kill "-$1" "$PID"
	wait "$PID"
	rc=$?
	PID=
	if [ $rc -eq 0 ] && [ $((SECONDS - start)) -le 5 ]; then ok "SIG$1: cairnd exited 0 in $((SECONDS - start))s"; else bad "SIG$1: cairnd exited $rc after $((SECONDS - start))s: $(tail -5 "$T/cairnd.log")"; fi
	if [ ! -e "$DATA/cairn.sock" ] && [ ! -e "$DATA/nbd.sock" ]; then ok "sockets removed"; else bad "sockets left: $(ls "$DATA")"; fi
}

cli_start

check "disk create" "$CAIRN" disk create vm1 --size 64M --description "e2e disk"
contains "create shows the size" "64 MiB (67108864 bytes)"
check "disk list" "$CAIRN" disk list
contains "list shows the disk" "vm1"
contains "list shows the description" "e2e disk"
check "disk grow" "$CAIRN" disk grow vm1 128M
check "disk show -o json" "$CAIRN" disk show vm1 -o json
contains "show has the grown size" '"size": 134217728'
contains "show has the export name" '"export": "vm1"'

check "qemu-io write over NBD" qemu-io -f raw "$NBD" -c "write -P 0x5a 0 1M" -c "write -P 0xa5 127M 1M"
check "qemu-io read over NBD" qemu-io -f raw "$NBD" -c "read -P 0x5a 0 1M" -c "read -P 0xa5 127M 1M" -c "read -P 0 1M 1M"
if grep -q "Pattern verification failed" "$T/out"; then bad "read back what was written: $(cat "$T/out")"; else ok "read back what was written"; fi

# A client that stays connected: qemu-io reading commands from a FIFO.
mkfifo "$T/qin" "$T/qout"
qemu-io -f raw "$NBD" <"$T/qin" >"$T/qout" 2>&1 &
QPID=$!
exec 3>"$T/qin" 4<"$T/qout"
echo "read -P 0x5a 0 4k" >&3
connected=no
while IFS= read -r -t 20 -u 4 line; do
	case $line in *"read 4096/4096"*) connected=yes; break ;; *"failed"*|*"error"*) break ;; esac
done
[ $connected = yes ] && ok "qemu-io connected and read" || bad "qemu-io did not read: $line"

check "export list" "$CAIRN" export list
if awk '$1 == "vm1" && $5 == "1" { found = 1 } END { exit !found }' "$T/out"; then ok "export list shows 1 client"; else bad "export list: $(cat "$T/out")"; fi
"$CAIRN" disk delete vm1 >"$T/out" 2>&1
rc=$?
[ $rc -eq 1 ] && ok "delete while connected exits 1" || bad "delete while connected exited $rc"
contains "delete names the clients" "1 connected NBD client"
echo "quit" >&3
exec 3>&- 4<&-
wait "$QPID"
QPID=

"$CAIRND" --data-dir "$DATA" --api-socket "$T/second.sock" --nbd-socket "$T/second-nbd.sock" >"$T/out" 2>&1
rc=$?
[ $rc -eq 1 ] && ok "second cairnd exits 1" || bad "second cairnd exited $rc"
contains "second cairnd names the first" "data directory $DATA is in use by another cairnd (pid $PID)"

"$CAIRN" disk create bad --size 10X >"$T/out" 2>&1
rc=$?
[ $rc -eq 2 ] && ok "usage error exits 2" || bad "usage error exited $rc"
"$CAIRN" disk show nosuch >"$T/out" 2>&1
rc=$?
[ $rc -eq 1 ] && ok "missing disk exits 1" || bad "missing disk exited $rc"
contains "missing disk message" 'cairn: disk "nosuch" not found'

stop_cairnd TERM
"$CAIRN" info >"$T/out" 2>&1
contains "stopped daemon: clear message" "cannot reach cairnd at $CAIRN_SOCKET"

cli_start
check "data survives a restart" qemu-io -f raw "$NBD" -c "read -P 0x5a 0 1M" -c "read -P 0xa5 127M 1M"
if grep -q "Pattern verification failed" "$T/out"; then bad "data after restart: $(cat "$T/out")"; else ok "data after restart verified"; fi
check "disk delete" "$CAIRN" disk delete vm1
check "disk list after delete" "$CAIRN" disk list -o json
contains "no disks left" "[]"
stop_cairnd INT

echo "test-cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
