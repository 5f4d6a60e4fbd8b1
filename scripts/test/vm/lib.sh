# Helpers for a guest test script (scripts/test/vm/README.md). /init
# sources this file before the script, so the script calls them directly.
# Everything runs in busybox sh.

# vm_log MSG...: a line on the console, marked as the script's.
vm_log() { echo "cairn-vm: $*"; }

# vm_fail REASON...: end the script; the verdict line becomes
# "CAIRN-VM-RESULT: FAIL REASON".
vm_fail() {
	echo "$*" >/run/cairn-vm/reason
	echo "cairn-vm: FAIL $*"
	exit 1
}

# vm_check DESCRIPTION COMMAND...: run COMMAND; on failure, vm_fail with
# DESCRIPTION and the command's last output line.
vm_check() {
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then
		echo "cairn-vm: ok   $what"
	else
		echo "$out" | tail -5
		vm_fail "$what: $(echo "$out" | tail -1)"
	fi
}

# vm_event NAME: tell the host NAME happened (a console line run.sh's
# callers wait for: wait-event in vmctl.py, VM.WaitEvent in internal/vmtest).
vm_event() { echo "CAIRN-VM-EVENT: $*"; }

# vm_disk EXPORT: the guest's block device for the disk run.sh was given
# as --disk EXPORT (or --disk-file's base name).
vm_disk() { readlink -f "/dev/disk/cairn/$1"; }

# The control channel (run.sh --ctl) is opened once, on fd 7, read-write:
# closing a virtio-serial port discards what the host sent and the script
# has not read yet.
vm_ctl_open() {
	[ -n "${vm_ctl_opened:-}" ] && return 0
	[ -e /dev/virtio-ports/org.cairn.ctl.0 ] || vm_fail "no control channel (run.sh --ctl)"
	exec 7<>/dev/virtio-ports/org.cairn.ctl.0
	vm_ctl_opened=1
}

# vm_recv [SECONDS]: print the next line the host sent on the control
# channel. Waits at most SECONDS (default 120); returns 1 on timeout. Until
# the host connects, a read ends at once with nothing, hence the polling.
# Only the wait for a line's first byte has a timeout: busybox's read -t
# drops what it has read when its time runs out in the middle of a line.
vm_recv() {
	local deadline first rest
	vm_ctl_open
	deadline=$(($(date +%s) + ${1:-120}))
	while [ "$(date +%s)" -lt $deadline ]; do
		if IFS= read -r -t 1 -n 1 first <&7 && [ -n "$first" ]; then
			IFS= read -r rest <&7
			echo "$first$rest"
			return 0
		fi
		sleep 0.2
	done
	return 1
}

# vm_send LINE...: write LINE to the host on the control channel. Blocks
# until the host has connected to the socket (qemu holds the bytes).
vm_send() {
	vm_ctl_open
	echo "$*" >&7
}

# vm_wait_for SECONDS COMMAND...: poll COMMAND until it succeeds (every
# 0.1 s), at most SECONDS.
vm_wait_for() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" 2>/dev/null; do
		[ "$(date +%s)" -lt $deadline ] || return 1
		sleep 0.1
	done
}
