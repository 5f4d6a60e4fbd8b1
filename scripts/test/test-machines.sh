#!/usr/bin/env bash
# Machine snapshots against the real cairnd (scripts/test/lib/machines.py
# says what it checks): one instant across 2 and 8 disks under a sequence
# writer and fio, kill -9 rounds during machine snapshots, and the CLI.
# The guest agent's freeze in a real guest is scripts/test/test-vm-agent.sh.
# SEED=N reproduces a run; ROUNDS=N sets the crash rounds; KEEP=1 keeps $T.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-machines fio
export CAIRN=${CAIRN:-$PWD/bin/cairn}
"$PY" scripts/test/lib/machines.py
