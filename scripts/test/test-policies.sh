#!/usr/bin/env bash
# Automatic snapshot policies end to end, against the real cairnd with a
# short real schedule (every minute): automatic snapshots appear at the
# minute's points, named for them and marked automatic; a step of the
# clock by a day (a cairn_testfaults build's clock file, so the test takes
# seconds, not a day) makes them expire, is reported as missed points not
# back-filled, and takes the latest point within the grace; a restart
# repeats nothing; the events log, the CLI and verify agree
# (scripts/test/lib/policies.py). KEEP=1 keeps the scratch directory.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-policies go
# The clock file is read only by a cairn_testfaults build: make one.
go build -tags cairn_testfaults -o "$T/cairnd-testfaults" ./cmd/cairnd || { echo "FAIL build a cairn_testfaults cairnd"; exit 1; }
export CAIRND=$T/cairnd-testfaults CAIRN=$PWD/bin/cairn
"$PY" scripts/test/lib/policies.py
