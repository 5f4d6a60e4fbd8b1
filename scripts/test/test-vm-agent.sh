#!/usr/bin/env bash
# The real qemu guest agent in a real guest (TCG VM, scripts/test/vm): a
# machine of two disks that a real cairnd serves over NBD, filesystem- and
# crash-consistent machine snapshots under a guest write load, and the
# failure paths (scripts/test/lib/vmagent.py says what it checks).
# Exit 77 (skip) only when the harness says no VM can be had here (or a
# tool or bin/cairnd is missing). ROUNDS=N sets the crash/frozen rounds;
# KEEP=1 keeps $T.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-vm-agent qemu-system-x86_64 qemu-img e2fsck dumpe2fs debugfs
export CAIRN=${CAIRN:-$PWD/bin/cairn}
[ -x "$CAIRN" ] || { echo "test-vm-agent: $CAIRN is missing: run 'make build' first"; exit 77; }
why=$(scripts/test/vm/setup.sh 2>&1 >/dev/null)
case $? in
0) ;;
77) echo "test-vm-agent: no test VM here: $why"; exit 77 ;;
*) echo "test-vm-agent: FAIL scripts/test/vm/setup.sh: $why"; exit 1 ;;
esac
# The VM (run.sh) is the Python driver's child; end it if the driver could not.
e2e_cleanup_extra() {
	local pid i
	pid=$(cat "$T/vm.pid" 2>/dev/null)
	if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
		for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
	fi
}
"$PY" scripts/test/lib/vmagent.py
