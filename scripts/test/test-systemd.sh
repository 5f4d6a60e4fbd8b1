#!/usr/bin/env bash
# cairnd as a real systemd service (issue 4), end to end: a real systemd
# boots as PID 1 of a throwaway namespace (scripts/systemd-ns.sh), Cairn is
# installed into it with `make install`, and systemctl, nbdinfo, qemu-io
# and the cairn CLI check socket activation, READY/STATUS, restart after
# SIGKILL with the data intact, a clean stop, the journal, the socket
# permissions, the watchdog and `make uninstall`. The host is untouched:
# the namespace's /etc, /var, /usr/local, /run and /tmp are its own.
# Exit 77 (skip) when the namespace cannot be built here.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
. scripts/systemd-ns.sh

skip() {
	echo "SKIP: $*"
	exit 77
}
if reason=$(ns_unsupported); then skip "$reason"; fi
for tool in qemu-io nbdinfo systemd-analyze setpriv stdbuf make; do
	command -v "$tool" >/dev/null || skip "$tool is not installed (scripts/deps.sh)"
done

watchdog_sec=3 # shortened by a drop-in; the shipped unit says 30s
nbd_sock=/run/cairn/nbd.sock
nbd_uri() { echo "nbd+unix:///$1?socket=$nbd_sock"; }

step() { echo "--- $*"; }
fail() {
	echo "FAIL: $*" >&2
	exit 1
}
# wait_for SECONDS WHAT CMD...: polls CMD until it succeeds.
wait_for() {
	local limit=$1 what=$2 deadline=$((SECONDS + $1))
	shift 2
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || fail "$what: not within ${limit}s"
		sleep 0.2
	done
}
prop() { ns systemctl show -p "$1" --value cairnd.service; }
# journal_has PATTERN [JOURNALCTL ARGS...]: cairnd's journal has a line
# matching PATTERN. (Read whole: grep -q on a pipe would SIGPIPE
# journalctl and fail the pipeline.)
journal_has() {
	local pattern=$1 out
	shift
	out=$(ns journalctl -u cairnd.service -o cat --no-pager "$@")
	grep -q -- "$pattern" <<<"$out"
}
prop_is() { [ "$(prop "$1")" = "$2" ]; }
prop_not() { [ "$(prop "$1")" != "$2" ]; }

cleanup_files=()
on_exit() {
	local rc=$?
	rm -rf "${cleanup_files[@]}"
	if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -n "$NS_PID" ]; then
		echo "=== systemctl status cairnd (on failure)"
		ns systemctl status --no-pager --lines=0 cairnd.service cairnd.socket cairnd-nbd.socket || true
		echo "=== journal (on failure)"
		ns journalctl --no-pager -n 80 || true
	fi
	ns_destroy
	exit $rc
}
trap on_exit EXIT

step "systemd-analyze verify on the units (as installed with PREFIX=/usr/local, binaries from ./bin)"
make -s build
stage=$(mktemp -d)
cleanup_files+=("$stage")
DESTDIR=$stage BINDIR=$repo/bin ./scripts/install.sh >/dev/null
systemd-analyze verify "$stage"/usr/local/lib/systemd/system/cairnd{.service,.socket,-nbd.socket} ||
	fail "systemd-analyze verify"

step "boot systemd in a namespace"
NS_KEEP=$repo ns_boot # the repository, even when it is cloned under /tmp

step "make install inside it (a cairn_testfaults build, so the watchdog test can wedge cairnd)"
ns make -s -C "$repo" install PREFIX=/usr/local BIN=/tmp/cairn-bin GOFLAGS=-tags=cairn_testfaults
ns getent group cairn >/dev/null || fail "make install did not create group cairn"
ns test -d /run/cairn || fail "make install did not apply tmpfiles.d (no /run/cairn)"
ns systemd-analyze verify cairnd.service cairnd.socket cairnd-nbd.socket || fail "verify installed units"
ns mkdir -p /run/systemd/system/cairnd.service.d
printf '[Service]\nWatchdogSec=%ss\n' "$watchdog_sec" | ns tee /run/systemd/system/cairnd.service.d/test.conf >/dev/null
ns systemctl daemon-reload

step "start the sockets; cairnd is not running yet"
ns systemctl start cairnd.socket cairnd-nbd.socket
! ns systemctl is-active --quiet cairnd.service || fail "cairnd started before any connection"
for s in /run/cairn/cairn.sock $nbd_sock; do
	perms=$(ns stat -c '%a %U %G' "$s")
	[ "$perms" = "660 root cairn" ] || fail "$s is $perms, want 660 root cairn"
done

step "the first NBD connection starts cairnd and is answered"
ns nbdinfo --list "$(nbd_uri '')" >/dev/null || fail "nbdinfo --list over the activating socket"
ns systemctl is-active --quiet cairnd.service || fail "cairnd is not active after the first connection"
status=$(prop StatusText)
echo "status: $status"
[[ $status == "serving 0 disks, 0 NBD clients" ]] || fail "status line is '$status'"
journal_has "using sockets passed by systemd" || fail "cairnd did not use the activated sockets"

step "create a disk with the CLI over the API socket and write through NBD"
ns /usr/local/bin/cairn disk create vm1 --size 64M >/dev/null
ns qemu-io -f raw -c 'write -P 0xa5 0 1M' -c 'write -P 0x5a 63M 1M' -c flush "$(nbd_uri vm1)" >/dev/null
wait_for 15 "status line counting the disk" prop_is StatusText "serving 1 disk, 0 NBD clients"

step "the FUSE view is visible on the host, with the hardening kept, and loop-mounts"
if ! (for _ in $(seq 50); do ns test -e /run/cairn/fuse/vm1/disk.raw && exit 0; sleep 0.2; done; exit 1); then
	ns findmnt /run/cairn/fuse || true # what the host has there, for the failure's reader
	fail "disk.raw of vm1 is not visible on the host within 10s"
fi
[ "$(ns stat -c %s /run/cairn/fuse/vm1/disk.raw)" = $((64 << 20)) ] || fail "disk.raw on the host has the wrong size"
[ "$(prop ProtectSystem)" = strict ] && [ "$(prop PrivateTmp)" = yes ] || fail "the unit's hardening is not in force"
[ "$(ns head -c 4 /run/cairn/fuse/vm1/disk.raw | od -An -tx1 | tr -d ' \n')" = a5a5a5a5 ] ||
	fail "disk.raw on the host does not read what qemu-io wrote"
ns mkfs.ext4 -q -F -E nodiscard /run/cairn/fuse/vm1/disk.raw
loopdev=$(ns losetup --find --show /run/cairn/fuse/vm1/disk.raw) || fail "losetup on the host's FUSE view"
mnt=$(ns mktemp -d)
ns mount "$loopdev" "$mnt" || { ns losetup -d "$loopdev"; fail "mount of the loop device"; }
echo hello | ns tee "$mnt/hello" >/dev/null
ns umount "$mnt"
ns losetup -d "$loopdev"
ns qemu-io -f raw -c 'write -P 0xa5 0 1M' -c 'write -P 0x5a 63M 1M' -c flush "$(nbd_uri vm1)" >/dev/null # as before

step "SIGKILL: systemd restarts cairnd and the data is intact"
pid=$(prop MainPID)
restarts=$(prop NRestarts)
ns kill -KILL "$pid"
wait_for 20 "restart after SIGKILL" prop_is NRestarts $((restarts + 1))
wait_for 20 "active again" ns systemctl is-active --quiet cairnd.service
[ "$(prop MainPID)" != "$pid" ] || fail "MainPID unchanged after SIGKILL"
ns qemu-io -f raw -r -c 'read -P 0xa5 0 1M' -c 'read -P 0x5a 63M 1M' "$(nbd_uri vm1)" | grep -q 'read 1048576/1048576' ||
	fail "data written and flushed before the SIGKILL does not read back"

step "the healthy daemon keeps petting the watchdog (${watchdog_sec}s)"
pid=$(prop MainPID)
restarts=$(prop NRestarts)
sleep $((2 * watchdog_sec + 1)) # nothing to wait for: the point is that nothing happens
[ "$(prop MainPID)" = "$pid" ] && [ "$(prop NRestarts)" = "$restarts" ] ||
	fail "a healthy cairnd was restarted (watchdog not petted?)"

step "clean stop (SIGTERM): result success, exit 0"
ns systemctl stop cairnd.service
[ "$(prop Result)" = success ] || fail "stop result $(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || fail "exit status $(prop ExecMainStatus)"

step "a connection while stopped starts it again; the data is intact"
ns qemu-io -f raw -r -c 'read -P 0xa5 0 1M' "$(nbd_uri vm1)" | grep -q 'read 1048576/1048576' ||
	fail "read after reactivation"
ns systemctl is-active --quiet cairnd.service || fail "not reactivated"

step "qemu (reconnect-delay) rides through a restart: nothing acknowledged and flushed is lost"
# qemu-io writes and flushes, then idles for 5s (its own sleep command)
# while cairnd restarts, then writes again on the reconnected client and
# reads both back. Without reconnect-delay the second write fails.
qlog=$(mktemp)
cleanup_files+=("$qlog")
ns stdbuf -oL qemu-io --image-opts "driver=nbd,server.type=unix,server.path=$nbd_sock,export=vm1,reconnect-delay=20" \
	-c 'write -P 0x11 2M 1M' -c flush -c 'sleep 5000' -c 'write -P 0x22 3M 1M' -c flush \
	-c 'read -P 0x11 2M 1M' -c 'read -P 0x22 3M 1M' >"$qlog" 2>&1 &
qpid=$!
wait_for 20 "qemu-io's first write" grep -q 'wrote 1048576/1048576 bytes at offset 2097152' "$qlog"
ns systemctl restart cairnd.service
kill -0 $qpid 2>/dev/null || fail "qemu-io finished before the restart did: the test proved nothing"
wait $qpid || fail "qemu-io across a restart: $(cat "$qlog")"
[ "$(grep -c '^read 1048576/1048576' "$qlog")" = 2 ] || fail "reads after the reconnect: $(cat "$qlog")"

step "socket permissions: group cairn may connect, others may not"
ns useradd --no-create-home --groups cairn cairn-member
ns useradd --no-create-home cairn-outsider
ns setpriv --reuid=cairn-member --regid=cairn-member --init-groups \
	nbdinfo --list "$(nbd_uri '')" >/dev/null || fail "a member of group cairn cannot use the NBD socket"
ns setpriv --reuid=cairn-member --regid=cairn-member --init-groups \
	/usr/local/bin/cairn disk list >/dev/null || fail "a member of group cairn cannot use the API socket"
if ns setpriv --reuid=cairn-outsider --regid=cairn-outsider --init-groups \
	nbdinfo --list "$(nbd_uri '')" >/dev/null 2>&1; then
	fail "a user outside group cairn could use the NBD socket"
fi

step "watchdog: a wedged health check gets cairnd restarted within WatchdogSec"
pid=$(prop MainPID)
restarts=$(prop NRestarts)
ns kill -USR2 "$pid"
wait_for $((3 * watchdog_sec + 10)) "restart by the watchdog" prop_is NRestarts $((restarts + 1))
wait_for 20 "active after the watchdog restart" ns systemctl is-active --quiet cairnd.service
journal_has "Failed with result 'watchdog'" ||
	fail "the restart was not the watchdog's (no \"Failed with result 'watchdog'\" in the journal)"
journal_has "cmd/cairnd/testfaults.go" ||
	fail "no goroutine dump (SIGABRT) showing the wedged health check in the journal"
ns qemu-io -f raw -r -c 'read -P 0x5a 63M 1M' "$(nbd_uri vm1)" | grep -q 'read 1048576/1048576' ||
	fail "data after the watchdog restart"

step "journal: cairnd's lines, with priorities and fields"
ns systemctl stop cairnd.service
for line in "cairnd ready" "shutting down" "cairnd stopped" "test fault: SIGUSR2 wedged the health check" "Started cairnd.service"; do
	journal_has "$line" || fail "journalctl -u cairnd has no '$line'"
done
journal_has "test fault" -p warning || fail "a Warn record is not at priority warning"
! journal_has "cairnd ready" -p warning || fail "an Info record is at priority warning or above"
journal_has "cairnd ready" SYSLOG_IDENTIFIER=cairnd DATA_DIR=/var/lib/cairn ||
	fail "records lack their attributes as journal fields (DATA_DIR)"
journal_has "api call" ACTION=disk.create TARGET=vm1 CALLER_UID=0 RESULT=ok ||
	fail "the audit line of disk create lacks its journal fields (ACTION, TARGET, CALLER_UID, RESULT)"

step "make uninstall removes what make install put there"
ns make -s -C "$repo" uninstall PREFIX=/usr/local >/dev/null
for f in /usr/local/bin/cairnd /usr/local/bin/cairn /usr/local/lib/systemd/system/cairnd.service \
	/usr/local/lib/systemd/system/cairnd.socket /usr/local/lib/systemd/system/cairnd-nbd.socket \
	/usr/local/lib/sysusers.d/cairn.conf /usr/local/lib/tmpfiles.d/cairn.conf /etc/cairn/cairnd.conf; do
	! ns test -e "$f" || fail "make uninstall left $f"
done
! ns systemctl is-active --quiet cairnd.socket || fail "cairnd.socket still listening after uninstall"

step "power off"
ns_poweroff
echo "PASS: cairnd under systemd (${SECONDS}s)"
