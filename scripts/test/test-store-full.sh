#!/usr/bin/env bash
# Store-full test: DATA/store on a small loop-mounted ext4 filesystem,
# cairnd with --store-reserve 96M, a disk far larger than the store; a
# snapshot taken under fio load (verify=crc32c) must fail with a store-full
# reason while fio's verify passes and other snapshots stay intact; after
# deleting it the space comes back (scripts/test/lib/storefull.py).
# Needs root (losetup, mount): exits 77 otherwise.
# STORE_FS_MIB=N sizes the filesystem (default 400), BIG_SIZE=N the disk in
# MiB (default 1024); KEEP=1 keeps the scratch directory.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
if [ "$(id -u)" != 0 ]; then echo "test-store-full: needs root (loop device and mount)"; exit 77; fi
e2e_setup test-store-full losetup mkfs.ext4 mount umount fio nbdcopy cmp
LOOP=
export DATA=$T/data
# The trap has killed cairnd and unmounted everything under $T by then.
e2e_cleanup_extra() { [ -n "$LOOP" ] && losetup -d "$LOOP"; }
mkdir -p "$DATA/store"
truncate -s "${STORE_FS_MIB:-400}M" "$T/store.img"
LOOP=$(losetup -f --show "$T/store.img") || { echo "FAIL losetup $T/store.img"; exit 1; }
mkfs.ext4 -q -F "$LOOP" || { echo "FAIL mkfs.ext4 $LOOP"; exit 1; }
mount "$LOOP" "$DATA/store" || { echo "FAIL mount $LOOP $DATA/store"; exit 1; }
rmdir "$DATA/store/lost+found" 2>/dev/null
"$PY" scripts/test/lib/storefull.py
