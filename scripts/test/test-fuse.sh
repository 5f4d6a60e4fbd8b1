#!/usr/bin/env bash
# End-to-end test of cairnd's FUSE view and `cairn mount` (docs/fuse.md),
# with bin/cairnd and bin/cairn (make test builds them first):
# - ext4 made on the live disk through a loop device on disk.raw, files
#   written, a snapshot taken through the API, files changed and deleted;
#   `cairn mount disk@snap` finds the old files with their old checksums;
#   e2fsck -fn is clean after journal replay on a throwaway overlay;
# - the same disk written through NBD and read through FUSE and the
#   reverse see the same bytes; a snapshot taken after a FUSE write holds it;
# - disk.raw's page cache: what FUSE read (cached) and NBD then wrote,
#   discarded or zeroed reads back new through FUSE, with a FUSE handle
#   held open and with none;
# - fio through disk.raw with verify=crc32c;
# - a disk deleted through the API leaves the tree;
# - a cairnd killed with SIGKILL leaves no stale mount after restart, and
#   SIGTERM unmounts the tree.
# Exit 77 (skip) without root, FUSE, loop devices or the tools.
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/test/lib/common.sh
CAIRND=${CAIRND:-$PWD/bin/cairnd}
CAIRN=${CAIRN:-$PWD/bin/cairn}
skip() { echo "test-fuse: $*"; exit 77; }
for b in "$CAIRND" "$CAIRN"; do
	[ -x "$b" ] || skip "$b is missing: run 'make build' first"
done
[ "$(id -u)" = 0 ] || skip "needs root (FUSE mount, loop devices)"
[ -e /dev/fuse ] || skip "no /dev/fuse in this kernel"
[ -e /dev/loop-control ] || skip "no loop devices in this kernel"
for tool in mkfs.ext4 e2fsck losetup qemu-io fio sha256sum; do
	command -v $tool >/dev/null || skip "$tool is missing (scripts/deps.sh installs it)"
done

T=$(mktemp -d /tmp/cairn-fuse.XXXXXX)
DATA=$T/data
FUSE=$T/fuse
export CAIRN_SOCKET=$DATA/cairn.sock
unset RUNTIME_DIRECTORY
PID=
LOOPS=()
pass=0 fail=0

cleanup() {
	mountpoint -q "$T/live" && umount "$T/live"
	mountpoint -q "$T/restore" && "$CAIRN" umount "$T/restore" --state-dir "$T/state" >/dev/null 2>&1
	for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
	[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	mountpoint -q "$FUSE" && umount -l "$FUSE"
	rm -rf "$T"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local d=$1; shift; if "$@" >"$T/out" 2>&1; then ok "$d"; else bad "$d: $(cat "$T/out")"; fi; }
contains() { if grep -qF -- "$2" "$T/out"; then ok "$1"; else bad "$1: no '$2' in: $(cat "$T/out")"; fi; }
die() { bad "$*"; echo "test-fuse: $pass passed, $fail failed"; exit 1; }

# fuse_start: start cairnd with its FUSE view and wait until it is ready.
fuse_start() {
	start_cairnd "$T/cairnd.log" --data-dir "$DATA" --fuse-dir "$FUSE"
	local rc=$?
	PID=$CAIRND_PID
	[ $rc -eq 0 ] || die "cairnd did not become ready: $(cat "$T/cairnd.log")"
	ok "cairnd started with the FUSE view on $FUSE"
}

# fuse_mounts: how many cairn trees are mounted on $FUSE.
fuse_mounts() { awk -v d="$FUSE" '$5 == d && $0 ~ / - fuse.cairn / { n++ } END { print n + 0 }' /proc/self/mountinfo; }

fuse_start
check "disk create vm" "$CAIRN" disk create vm --size 256M
check "disk.raw appears" test -f "$FUSE/vm/disk.raw"
check "disk.raw is 256 MiB, 0644" test "$(stat -c '%s %a' "$FUSE/vm/disk.raw")" = "268435456 644"

# --- ext4 on the live disk through a loop device on disk.raw
LIVE=$(losetup --find --show "$FUSE/vm/disk.raw") || die "losetup on disk.raw failed"
LOOPS+=("$LIVE")
check "mkfs.ext4 through the loop device" mkfs.ext4 -q "$LIVE"
mkdir -p "$T/live"
check "mount the live filesystem" mount "$LIVE" "$T/live"
mkdir -p "$T/live/data"
for i in 1 2 3 4; do head -c $((i * 700000 + 13)) /dev/urandom >"$T/live/data/f$i"; done
(cd "$T/live" && sha256sum data/*) >"$T/old.sums"
check "sync the live filesystem" sync -f "$T/live"
check "snapshot create (ready)" "$CAIRN" snapshot create vm s1 --wait
check "the snapshot file appears, 0444" test "$(stat -c '%a' "$FUSE/vm/snapshots/s1.raw")" = 444
# Change and delete files after the snapshot.
head -c 100000 /dev/urandom >"$T/live/data/f1"
rm "$T/live/data/f2"
sync -f "$T/live"
if (cd "$T/live" && sha256sum -c --quiet "$T/old.sums") >/dev/null 2>&1; then bad "the live files did not change"; fi

check "cairn mount vm@s1" "$CAIRN" mount vm@s1 "$T/restore" --state-dir "$T/state"
contains "mount says read-only ext4" "(ext4) on $T/restore, read-only"
check "the snapshot's files have their old checksums" sh -c "cd '$T/restore' && sha256sum -c --quiet '$T/old.sums'"
if touch "$T/restore/new" 2>/dev/null; then bad "the restored filesystem is writable"; else ok "the restored filesystem is read-only"; fi
check "cairn umount" "$CAIRN" umount "$T/restore" --state-dir "$T/state"
check "the restore directory is gone" test ! -e "$T/restore"

SCRATCH=$(losetup --find --show "$FUSE/vm/scratch/s1.raw") || die "losetup on the scratch file failed"
LOOPS+=("$SCRATCH")
e2fsck -E journal_only -y "$SCRATCH" >"$T/out" 2>&1
check "e2fsck -fn on the snapshot after journal replay (in the overlay)" e2fsck -fn "$SCRATCH"
losetup -d "$SCRATCH"
check "umount the live filesystem" umount "$T/live"
losetup -d "$LIVE"
LOOPS=()

# --- NBD and FUSE see the same bytes
check "disk create raw" "$CAIRN" disk create raw --size 128M
NBD="nbd+unix:///raw?socket=$DATA/nbd.sock"
check "NBD write 0xab at 1M" qemu-io -f raw "$NBD" -c "write -P 0xab 1M 1M"
check "FUSE reads the NBD write" cmp <(head -c 1048576 /dev/zero | tr '\0' '\253') <(dd if="$FUSE/raw/disk.raw" bs=1M skip=1 count=1 status=none)
check "FUSE write 0xcd at 4M" sh -c "head -c 1048576 /dev/zero | tr '\0' '\315' | dd of='$FUSE/raw/disk.raw' bs=1M seek=4 conv=notrunc,fsync status=none"
check "NBD reads the FUSE write" qemu-io -f raw "$NBD" -c "read -P 0xcd 4M 1M"
check "snapshot after the FUSE write" "$CAIRN" snapshot create raw after --wait
check "the snapshot's NBD export holds the FUSE write" qemu-io -f raw -r "nbd+unix:///raw@after?socket=$DATA/nbd.sock" -c "read -P 0xcd 4M 1M"
check "the snapshot's file holds it too" cmp <(head -c 1048576 /dev/zero | tr '\0' '\315') <(dd if="$FUSE/raw/snapshots/after.raw" bs=1M skip=4 count=1 status=none)

# --- disk.raw keeps the page cache; NBD writes, trims and zeroes drop it
# (once with a FUSE handle open, once with none: the pages outlive opens)
pattern() { head -c 1048576 /dev/zero | tr '\0' "\\$(printf %03o "$1")"; }
fuse_mib() { dd if="$FUSE/raw/disk.raw" bs=1M skip="$1" count=1 status=none; }
for held in open closed; do
	[ $held = open ] && exec 7<"$FUSE/raw/disk.raw"
	for change in "write -P 0x5a 1M 1M:0x5a" "discard 1M 1M:0" "write -z 1M 1M:0"; do
		cmd=${change%:*} want=${change##*:}
		check "NBD write 0xab at 1M" qemu-io -f raw "$NBD" -c "write -P 0xab 1M 1M"
		check "FUSE reads it, and caches it (a file $held)" cmp <(pattern 0xab) <(fuse_mib 1)
		check "NBD $cmd" qemu-io -f raw "$NBD" -c "$cmd"
		check "FUSE reads what NBD $cmd left, not the cached bytes (a file $held)" cmp <(pattern "$want") <(fuse_mib 1)
	done
	[ $held = open ] && exec 7<&-
done
check "NBD write 0xab at 1M" qemu-io -f raw "$NBD" -c "write -P 0xab 1M 1M"

# --- fio with verification
check "fio randwrite 4k qd16 O_DIRECT, verify=crc32c" fio --name=verify --filename="$FUSE/raw/disk.raw" \
	--size=64m --direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bs=4k \
	--verify=crc32c --verify_fatal=1 --do_verify=1 --fallocate=none --verify_state_save=0
contains "fio verified without errors" "err= 0"

# --- the tree follows the API
"$CAIRN" disk delete raw --force >"$T/out" 2>&1
rc=$?
[ $rc -eq 1 ] && ok "disk delete of a disk with snapshots exits 1" || bad "disk delete of a disk with snapshots exited $rc"
contains "the refusal counts the snapshots" 'disk "raw" has 1 snapshot(s)'
contains "the refusal names the flag" "delete with --with-snapshots"
check "disk delete raw --force --with-snapshots" "$CAIRN" disk delete raw --force --with-snapshots
check "the deleted disk left the tree" test ! -e "$FUSE/raw"

# --- crash: SIGKILL leaves a dead mount; the next start detaches it
kill -KILL "$PID"
wait "$PID" 2>/dev/null
PID=
if stat -f "$FUSE" >/dev/null 2>&1; then bad "the killed cairnd's mount still answers"; else ok "the killed cairnd left a dead mount (statfs fails)"; fi
fuse_start
check "one cairn tree on $FUSE after restart" test "$(fuse_mounts)" = 1
check "the restarted tree serves the disk" test -f "$FUSE/vm/disk.raw"
kill -TERM "$PID"
wait "$PID"
rc=$?
PID=
[ $rc -eq 0 ] && ok "SIGTERM: cairnd exited 0" || bad "SIGTERM: cairnd exited $rc: $(tail -5 "$T/cairnd.log")"
check "no cairn tree left on $FUSE" test "$(fuse_mounts)" = 0

echo "test-fuse: $pass passed, $fail failed"
[ $fail -eq 0 ]
