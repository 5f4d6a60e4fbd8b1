#!/usr/bin/env bash
# Runs the README's five-minute tour, line by line, against a fresh cairnd
# (started as `make run` does, on a data directory of its own) so the tour
# stays true: every command must succeed. The tour's commands use
# $PWD/.cairn and bin/, so they run in a scratch directory with bin/
# linked to the build.
set -uo pipefail
. "$(dirname "$0")/lib/common.sh"
e2e_setup test-readme qemu-io qemu-img nbdinfo
REPO=$PWD
ln -s "$REPO/bin" "$T/bin"
cd "$T" || exit 1
"$CAIRND" --data-dir "$T/.cairn" >"$T/cairnd.log" 2>&1 &
echo $! >"$T/cairnd.pid"
for _ in $(seq 100); do [ -S "$T/.cairn/cairn.sock" ] && break; sleep 0.1; done
[ -S "$T/.cairn/cairn.sock" ] || { echo "FAIL cairnd did not start:"; tail "$T/cairnd.log"; exit 1; }

# The tour: the first ```sh block after "## Five-minute tour".
awk '/^## Five-minute tour/ { in_tour = 1 } in_tour && /^```sh/ { code = 1; next } code && /^```/ { exit } code { print }' \
	"$REPO/README.md" >"$T/tour.sh"
lines=$(grep -cv '^\s*\(#.*\)\?$' "$T/tour.sh")
[ "$lines" -gt 10 ] || { echo "FAIL the tour in README.md was not found ($lines commands)"; exit 1; }
failed=0 n=0
while IFS= read -r line; do
	case "$line" in '' | \#*) continue ;; esac
	n=$((n + 1))
	# The tour says sudo where a user needs root; the test runs as root,
	# where sudo may not be installed.
	[ "$(id -u)" = 0 ] && line=${line#sudo }
	if out=$(bash -c "set -e; export CAIRN_SOCKET=$T/.cairn/cairn.sock; NBD=$T/.cairn/nbd.sock; $line" 2>&1); then
		echo "PASS $line"
	else
		echo "FAIL $line"
		printf '%s\n' "$out" | sed 's/^/     /' | tail -8
		failed=$((failed + 1))
	fi
done <"$T/tour.sh"
kill -TERM "$(cat "$T/cairnd.pid")"
wait
echo "test-readme: $((n - failed)) of $n tour commands passed"
[ "$failed" -eq 0 ]
