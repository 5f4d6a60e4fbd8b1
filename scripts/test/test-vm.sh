#!/usr/bin/env bash
# Smoke test of the test VM harness (scripts/test/vm/README.md), one boot:
# a real cairnd serves disk "vm" over NBD as the guest's /dev/vda, disk "db"
# as /dev/vdb and its snapshot db@s0 read-only as /dev/vdc; in the guest,
# the snapshot holds what the host wrote and refuses writes, a write to db
# lands in cairnd, mkfs.ext4 on vda and a file written and synced, nbd.ko loaded and
# /dev/nbd0 present (what kernel attach needs); on the host, the real guest
# agent answers over its virtio-serial socket (guest-sync-delimited,
# guest-ping, guest-info, and a freeze and thaw of the guest's ext4 — only
# ever inside the VM); after the guest powers off, a snapshot of the disk,
# read through cairnd's NBD export, passes e2fsck -fn and holds the guest's
# files byte for byte.
# Exit 77 (skip) only when qemu-system-x86_64 or Debian's kernel package
# cannot be had (or bin/cairnd is not built).
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/test/lib/common.sh
CAIRND=${CAIRND:-$PWD/bin/cairnd}
CAIRN=${CAIRN:-$PWD/bin/cairn}
VM=$PWD/scripts/test/vm
PY=/usr/bin/python3
skip() { echo "test-vm: $*"; exit 77; }
for b in "$CAIRND" "$CAIRN"; do
	[ -x "$b" ] || skip "$b is missing: run 'make build' first"
done
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is missing (scripts/deps.sh installs qemu-system-x86)"
for tool in qemu-img qemu-io e2fsck debugfs; do
	command -v $tool >/dev/null || skip "$tool is missing (scripts/deps.sh installs it)"
done
why=$("$VM/setup.sh" 2>&1 >/dev/null)
case $? in
0) ;;
77) skip "no test VM here: $why" ;;
*) echo "test-vm: FAIL scripts/test/vm/setup.sh: $why"; exit 1 ;;
esac

T=$(mktemp -d /tmp/cairn-vm-test.XXXXXX)
DATA=$T/data
export CAIRN_SOCKET=$DATA/cairn.sock
unset RUNTIME_DIRECTORY
PID= VMPID=
pass=0 fail=0
cleanup() {
	[ -n "$VMPID" ] && kill -TERM "$VMPID" 2>/dev/null && wait "$VMPID" 2>/dev/null
	[ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	if [ $fail -gt 0 ] || [ -n "${KEEP:-}" ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
check() { local d=$1; shift; if "$@" >"$T/out" 2>&1; then ok "$d"; else bad "$d: $(tail -5 "$T/out")"; fi; }
# expect DESCRIPTION WANT COMMAND...: COMMAND prints exactly WANT.
expect() {
	local d=$1 want=$2 got
	shift 2
	if got=$("$@" 2>"$T/out") && [ "$got" = "$want" ]; then ok "$d"; else bad "$d: got '$got', want '$want' $(tail -3 "$T/out")"; fi
}
die() { bad "$*"; echo "test-vm: $pass passed, $fail failed"; exit 1; }
qga() { "$PY" "$VM/vmctl.py" qga "$T/qga.sock" "$@"; }

start_cairnd "$T/cairnd.log" --data-dir "$DATA" --fuse=false
rc=$?
PID=$CAIRND_PID
[ $rc -eq 0 ] || die "cairnd did not become ready: $(cat "$T/cairnd.log")"
check "disk create vm (64 MiB)" "$CAIRN" disk create vm --size 64M
check "disk create db (16 MiB)" "$CAIRN" disk create db --size 16M
check "write 0xab to db's first MiB" qemu-io -f raw "nbd+unix:///db?socket=$DATA/nbd.sock" -c "write -P 0xab 0 1M"
check "snapshot db@s0" "$CAIRN" snapshot create db s0 --wait

# The files the guest writes, made the same way on the host to compare.
content() { seq "$1" 20000 | sed "s/^/cairn vm harness line /"; }

cat >"$T/guest.sh" <<'EOF'
set -u
dev=$(vm_disk vm)
vm_check "the cairnd disk is /dev/vda" test "$dev" = /dev/vda
vm_check "mkfs.ext4 $dev" mkfs.ext4 -q "$dev"
mkdir -p /mnt/vm
vm_check "mount $dev" mount -t ext4 "$dev" /mnt/vm
seq 1 20000 | sed "s/^/cairn vm harness line /" >/mnt/vm/before-freeze.txt
vm_check "sync" sync
vm_check "nbd is not loaded at boot" sh -c '! grep -q "^nbd " /proc/modules'
vm_check "modprobe nbd (modules.dep from the kernel package)" modprobe nbd
vm_check "/dev/nbd0 is a block device" test -b /dev/nbd0
# Two more disks, in order: db (vdb) and its snapshot db@s0 (vdc), read-only.
vm_check "db is /dev/vdb" test "$(vm_disk db)" = /dev/vdb
vm_check "db@s0 is /dev/vdc" test "$(vm_disk db@s0)" = /dev/vdc
printf '\253\253\253\253' >/tmp/ab
vm_check "db@s0 holds the host's 0xab" cmp /tmp/ab /dev/vdc -n 4
if echo x | dd of=/dev/vdc conv=fsync 2>/dev/null; then vm_fail "the read-only snapshot took a write"; fi
printf '\315\315\315\315' | dd of=/dev/vdb conv=fsync 2>/dev/null || vm_fail "write to db"
vm_event ready
line=$(vm_recv 120) || vm_fail "no word from the host on the control channel"
vm_check "the host's word is 'thawed'" test "$line" = thawed
# The filesystem takes writes again after the agent's thaw.
seq 2 20000 | sed "s/^/cairn vm harness line /" >/mnt/vm/after-thaw.txt
vm_check "sync after the thaw" sync
vm_check "umount" umount /mnt/vm
EOF

"$VM/run.sh" --script "$T/guest.sh" --nbd "$DATA/nbd.sock" --disk vm --disk db --disk-ro db@s0 \
	--agent "$T/qga.sock" --ctl "$T/ctl.sock" --log "$T/console.log" \
	--work "$T/vm" --timeout 240 >"$T/vm.out" 2>&1 &
VMPID=$!
if "$PY" "$VM/vmctl.py" wait-event "$T/console.log" ready --timeout 180 2>"$T/out"; then
	ok "the guest made ext4 on the cairnd disk, wrote a file and loaded nbd"
else
	bad "the guest did not get ready: $(cat "$T/out")"
fi

check "guest-ping" qga guest-ping
qga guest-info >"$T/info.json" 2>"$T/out" && ok "guest-info" || bad "guest-info: $(cat "$T/out")"
check "guest-info names qemu-ga's version and guest-fsfreeze-freeze" "$PY" -c '
import json, sys
info = json.load(open(sys.argv[1]))
assert info["version"].startswith(sys.argv[2]), info["version"]
cmds = {c["name"]: c["enabled"] for c in info["supported_commands"]}
assert cmds.get("guest-fsfreeze-freeze") is True, cmds.get("guest-fsfreeze-freeze")
' "$T/info.json" "$(dpkg-query -W -f='${Version}' qemu-guest-agent | sed 's/^[0-9]*://; s/[+~-].*//')"
expect "guest-fsfreeze-freeze froze the guest's one ext4" 1 qga guest-fsfreeze-freeze
expect "guest-fsfreeze-status: frozen" '"frozen"' qga guest-fsfreeze-status
expect "guest-fsfreeze-thaw thawed it" 1 qga guest-fsfreeze-thaw
expect "guest-fsfreeze-status: thawed" '"thawed"' qga guest-fsfreeze-status
check "an unknown command is the agent's error" sh -c "! '$PY' '$VM/vmctl.py' qga '$T/qga.sock' guest-no-such-command"
check "tell the guest over the control channel" "$PY" "$VM/vmctl.py" send "$T/ctl.sock" thawed

wait "$VMPID"
rc=$?
VMPID=
if [ $rc -eq 0 ]; then ok "the guest passed: $(head -1 "$T/vm.out")"; else bad "the guest did not pass (run.sh exited $rc): $(cat "$T/vm.out")"; fi

# --- on the host, through cairnd: a snapshot of what the guest left
check "snapshot create vm@after --wait" "$CAIRN" snapshot create vm after --wait
check "read the snapshot's NBD export" qemu-img convert -f raw -O raw "nbd+unix:///vm@after?socket=$DATA/nbd.sock" "$T/after.raw"
check "e2fsck -fn: the guest's filesystem is clean" e2fsck -fn "$T/after.raw"
for f in "before-freeze.txt 1" "after-thaw.txt 2"; do
	read -r name first <<<"$f"
	debugfs -R "cat /$name" "$T/after.raw" 2>/dev/null >"$T/$name"
	check "the guest's $name is in the snapshot, byte for byte" cmp "$T/$name" <(content "$first")
done

check "the guest's write to db is in cairnd" qemu-io -f raw -r "nbd+unix:///db?socket=$DATA/nbd.sock" -c "read -P 0xcd 0 4" -c "read -P 0xab 4 1048572"
check "db@s0 is unchanged" qemu-io -f raw -r "nbd+unix:///db@s0?socket=$DATA/nbd.sock" -c "read -P 0xab 0 1M"

echo "test-vm: $pass passed, $fail failed"
[ $fail -eq 0 ]
