#!/usr/bin/env bash
# Prometheus metrics against a real Prometheus (Debian's prometheus
# package): cairnd serves /metrics on TCP (--metrics-listen); fio (nbd
# engine) writes and reads a disk; promtool checks the exposition; a
# Prometheus on a free port with a scratch TSDB scrapes cairnd every
# second with the shipped alert rules loaded, and a query through its HTTP
# API returns exactly the bytes and operations fio reports
# (scripts/test/lib/metrics.py). KEEP=1 keeps the scratch directory.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-metrics fio prometheus promtool
PROM_PID=
e2e_cleanup_extra() { [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null; }
export RULES=$PWD/contrib/prometheus/cairn-alerts.yml
"$PY" scripts/test/lib/metrics.py
