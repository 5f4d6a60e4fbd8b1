#!/usr/bin/env bash
# End-to-end exports, imports and checks through bin/cairnd and bin/cairn
# (make test builds them first; docs/export.md): a disk with an ext4 is
# exported to qcow2 and vhd, checked by qemu-img and by cairn check, and
# imported back; an import interrupted with Ctrl-C (SIGINT to cairn) leaves
# no disk; a refused import leaves nothing and cairnd answers on; the
# temporary snapshot of a live export is gone afterwards. Exit 77 (skip)
# without the binaries or qemu-img.
set -uo pipefail
cd "$(dirname "$0")/../.."
CAIRND=$PWD/bin/cairnd
CAIRN=$PWD/bin/cairn
for b in "$CAIRND" "$CAIRN"; do
	[ -x "$b" ] || { echo "test-export: $b is missing: run 'make build' first"; exit 77; }
done
for t in qemu-img qemu-io mkfs.ext4; do
	command -v "$t" >/dev/null || { echo "test-export: $t is missing (scripts/deps.sh installs it)"; exit 77; }
done

T=$(mktemp -d /tmp/cairn-export.XXXXXX)
DATA=$T/data
export CAIRN_SOCKET=$DATA/cairn.sock
NBD=$DATA/nbd.sock
PID=
pass=0 fail=0
cleanup() {
	[ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local d=$1; shift; if "$@" >"$T/out" 2>&1; then ok "$d"; else bad "$d: $(cat "$T/out")"; fi; }
refuse() { local d=$1 want=$2; shift 2; if "$@" >"$T/out" 2>&1; then bad "$d: it succeeded"; elif grep -qF -- "$want" "$T/out"; then ok "$d"; else bad "$d: no '$want' in: $(cat "$T/out")"; fi; }
uri() { echo "nbd+unix:///$1?socket=$NBD"; }

"$CAIRND" --data-dir "$DATA" --fuse=false >"$T/cairnd.log" 2>&1 &
PID=$!
for _ in $(seq 100); do "$CAIRN" info >/dev/null 2>&1 && break; sleep 0.1; done

# A disk holding an ext4 with files, and a snapshot of it.
mkdir -p "$T/files/etc" && echo vm1 >"$T/files/etc/hostname" && head -c 8M /dev/urandom >"$T/files/random"
truncate -s 64M "$T/ext4.raw" && mkfs.ext4 -q -d "$T/files" "$T/ext4.raw"
"$CAIRN" disk create vm1 --size 64M >/dev/null
qemu-img convert -n -f raw -O raw "$T/ext4.raw" "$(uri vm1)"
"$CAIRN" snapshot create vm1 s1 --wait >/dev/null 2>&1

check "export to qcow2" "$CAIRN" export vm1@s1 "$T/vm1.qcow2" --compress
check "qemu-img check of the export" qemu-img check "$T/vm1.qcow2"
check "the export reads as the snapshot" qemu-img compare "$T/vm1.qcow2" "$(uri vm1@s1)"
check "export to a fixed vhd" "$CAIRN" export vm1@s1 "$T/vm1.vhd" --format vhd --subformat fixed --force-size
check "the vhd reads as the snapshot" qemu-img compare -f vpc "$T/vm1.vhd" -F raw "$(uri vm1@s1)"
check "import of the qcow2" "$CAIRN" import "$T/vm1.qcow2" copy
check "the import reads as the snapshot" qemu-img compare -f raw "$(uri copy)" -F raw "$(uri vm1@s1)"
check "import of the fixed vhd (found by its footer)" "$CAIRN" import "$T/vm1.vhd" copy2
check "the vhd import reads as the snapshot" qemu-img compare -f raw "$(uri copy2)" -F raw "$(uri vm1@s1)"

# A live disk: exported through a snapshot that is gone afterwards.
qemu-io -f raw -c "write -P 0x61 40M 1M" "$(uri vm1)" >/dev/null
check "export of the live disk" "$CAIRN" export vm1 "$T/live.qcow2"
check "it holds the latest write" qemu-img compare -f qcow2 "$T/live.qcow2" -F raw "$(uri vm1)"
if [ "$("$CAIRN" snapshot list vm1 -o json | grep -c '"name"')" = 1 ]; then ok "the temporary snapshot is deleted"; else bad "snapshots left: $("$CAIRN" snapshot list vm1)"; fi

if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v nbdfuse >/dev/null; then
	check "cairn check of the qcow2" "$CAIRN" check "$T/vm1.qcow2"
	grep -q "e2fsck -f -n: clean" "$T/out" && ok "check ran a read-only fsck" || bad "check output: $(cat "$T/out")"
	check "cairn check of a snapshot" "$CAIRN" check vm1@s1
else
	echo "skip cairn check (needs root, loop devices and nbdfuse)"
fi

# Ctrl-C during an import: cairn tells cairnd, which deletes the disk.
head -c 768M /dev/urandom >"$T/big.raw"
"$CAIRN" import "$T/big.raw" interrupted >"$T/int.log" 2>&1 &
CPID=$!
for _ in $(seq 200); do
	"$CAIRN" task list --kind import --state running -o json 2>/dev/null | grep -q '"done_bytes"' && break
	sleep 0.05
done
kill -INT "$CPID"
wait "$CPID"
rc=$?
if [ $rc = 0 ]; then
	echo "skip: the import finished before Ctrl-C reached it"
elif "$CAIRN" disk show interrupted >/dev/null 2>&1; then
	bad "an interrupted import left its disk: $(cat "$T/int.log")"
else
	ok "an interrupted import leaves no disk (exit $rc: $(tail -1 "$T/int.log"))"
fi

# Refused imports leave nothing, and cairnd answers on.
mkdir -p "$T/elsewhere" "$T/in"
qemu-img create -q -f qcow2 "$T/elsewhere/base.qcow2" 16M
qemu-img create -q -f qcow2 -b "$T/elsewhere/base.qcow2" -F qcow2 "$T/in/evil.qcow2"
refuse "backing file outside the allowed directory" "outside the allowed directories" "$CAIRN" import "$T/in/evil.qcow2" evil
check "with --allow-backing it is followed" "$CAIRN" import "$T/in/evil.qcow2" evil --allow-backing "$T/elsewhere"
qemu-img create -q -f qcow2 "$T/in/huge.qcow2" 100T
refuse "a 100 TiB image" "more than the largest disk" "$CAIRN" import "$T/in/huge.qcow2" huge
if "$CAIRN" disk show huge >/dev/null 2>&1; then bad "a refused import left a disk"; else ok "a refused import leaves no disk"; fi
check "cairnd still answers" "$CAIRN" info
if grep -q '"state": "failed"' <("$CAIRN" task list --kind import -o json); then ok "the interrupted import's task failed"; fi

echo "test-export: $pass passed, $fail failed"
[ $fail -eq 0 ]
