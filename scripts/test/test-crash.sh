#!/usr/bin/env bash
# Crash test: kills cairnd with SIGKILL at random points (during writes,
# snapshot copy-out, copy-on-write, delete and rollback), restarts it and
# checks every snapshot, the FLUSHed (and all acknowledged) writes, verify
# and a fresh snapshot against the live disk (scripts/test/lib/crash.py).
# make test runs CRASH_ROUNDS=10 (default); the long run is
#   CRASH_ROUNDS=100 scripts/test/test-crash.sh
# SEED=N reproduces a run, SCENARIOS=writes,cow picks scenarios,
# KEEP=1 keeps the scratch directory (data dir, logs, oracle files).
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-crash nbdcopy qemu-img cmp
"$PY" scripts/test/lib/crash.py
