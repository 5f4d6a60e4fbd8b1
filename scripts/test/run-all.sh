#!/usr/bin/env bash
# Runs every end-to-end script in scripts/test (test-*.sh), each with a
# time limit; prints "N passed, N failed" and exits non-zero on a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
pass=0 fail=0 skip=0
for t in scripts/test/test-*.sh; do
	[ -e "$t" ] || continue
	echo "=== $t"
	timeout 600 "$t"
	rc=$?
	case $rc in
	0) pass=$((pass + 1)) ;;
	77) skip=$((skip + 1)); echo "--- SKIP $t" ;;
	*) fail=$((fail + 1)); echo "--- FAIL $t (exit $rc)" ;;
	esac
done
echo "e2e: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
