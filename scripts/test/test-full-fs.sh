#!/usr/bin/env bash
# Full-filesystem test: the whole data directory (live images and store)
# on a small loop-mounted ext4 that guest writes and snapshots fill. cairnd
# must never crash (no SIGBUS): it stops with SIGTERM, starts with 0 bytes
# free, deletes snapshots and disks to get room back, survives SIGKILL at
# random points of the fill, and every acknowledged write and every ready
# snapshot stays right (scripts/test/lib/fullfs.py says what it checks).
# make test runs FULL_ROUNDS=20 kill rounds; the long run is
#   FULL_ROUNDS=200 scripts/test/test-full-fs.sh   (make test-long)
# FS_MIB=N sizes the filesystem (default 512), DISK_MIB=N each of the two
# disks (default 192); SEED=N reproduces a run; KEEP=1 keeps the scratch
# directory. Needs root (losetup, mount): exits 77 otherwise.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
if [ "$(id -u)" != 0 ]; then echo "test-full-fs: needs root (loop device and mount)"; exit 77; fi
e2e_setup test-full-fs losetup mkfs.ext4 mount umount nbdcopy cmp
export DATA=$T/data
# -m 0: no blocks kept for root, so "full" is full for cairnd (root) too.
e2e_loopfs "${FS_MIB:-512}" "$DATA" -m 0
"$PY" scripts/test/lib/fullfs.py
