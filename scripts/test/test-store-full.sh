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
export DATA=$T/data
e2e_loopfs "${STORE_FS_MIB:-400}" "$DATA/store"
"$PY" scripts/test/lib/storefull.py
