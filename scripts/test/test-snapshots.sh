#!/usr/bin/env bash
# Snapshot oracle test against the real cairnd and independent NBD clients
# (scripts/test/lib/snapshots.py says what it checks): random writes, trims
# and zero-writes with an oracle; snapshots at random moments read back with
# nbdcopy and compared with cmp; dirty bitmaps via nbdinfo, qemu-img and the
# API; rollback; deleting the first, a middle and the last snapshot; verify;
# fio (nbd engine, verify=crc32c) under snapshots; a quiesced snapshot equal
# to the live disk; nothing left in the store at the end.
# SEED=N reproduces a run; KEEP=1 keeps the scratch directory.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-snapshots nbdcopy nbdinfo qemu-img fio cmp
"$PY" scripts/test/lib/snapshots.py
