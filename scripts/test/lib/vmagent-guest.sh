# The guest side of scripts/test/test-vm-agent.sh (busybox sh; /init
# sources scripts/test/vm/lib.sh, then this). run.sh is given
# --env CAIRN_VM_AGENT=manual: this script starts qemu-ga itself, with a
# freeze hook, and restarts it when the host asks.
#
# It makes ext4 on both disks (root: a small root-like tree; data: a
# database-like file), starts one writer per filesystem that never stops
# writing and fsyncing, starts qemu-ga, says "ready" and then serves the
# host's commands on the control channel, one per line:
#   write TAG        create probe.TAG on each filesystem with dd conv=fsync, in
#                    the background; each answers "wrote TAG FS T0 T1 RC" when
#                    dd returns (T0, T1: /proc/uptime when dd started and
#                    returned, RC its exit status)
#   agent stop|cont|kill|start
#                    SIGSTOP, SIGCONT, SIGKILL or start qemu-ga; "agent ..."
#   hook MODE        what the freeze hook does at the next freeze only:
#                    "kill" (SIGKILL qemu-ga inside guest-fsfreeze-freeze,
#                    before it freezes anything) or "sleep N" (answer the
#                    freeze N seconds late, then freeze); "hook MODE"
#   counts           "counts ROOT DATA": how many rounds each writer did
#   finish           stop the writers, unmount, end the script
set -u
agent_port=/dev/virtio-ports/org.qemu.guest_agent.0
vm_ctl_open # fd 7 for the whole script: replies come from background jobs too

# Default mount options, as a real guest's. ext4's commit interval does
# not matter here: every writer round ends with an fsync, which commits a
# jbd2 transaction at once (several a second), and a committed transaction
# stays in the journal, to be replayed after a crash, until its blocks are
# written home and the journal's tail moves past it, which takes far
# longer: a crash-consistent snapshot under this load needs recovery. A
# freeze writes everything home at once, empties the journal and clears
# needs_recovery: what a filesystem-consistent snapshot shows. (Measured:
# with commit=5 and with commit=60 every crash-consistent member held 6 to
# 60 transactions to replay.)
for fs in root data; do
	dev=$(vm_disk $fs)
	vm_check "mkfs.ext4 on $fs ($dev)" mkfs.ext4 -q -L "$fs" "$dev"
	mkdir -p /mnt/$fs
	vm_check "mount $fs" mount -t ext4 "$dev" /mnt/$fs
done

# A root-like tree on root, a preallocated database file on data.
mkdir -p /mnt/root/etc /mnt/root/usr/bin /mnt/root/var/log /mnt/root/var/lib/app /mnt/root/tmp
vm_check "populate root" cp -a /bin/busybox /etc/mke2fs.conf /mnt/root/usr/bin/
vm_check "random source" dd if=/dev/urandom of=/tmp/src bs=64k count=8
dd if=/dev/urandom of=/tmp/4k bs=4k count=1 2>/dev/null
vm_check "preallocate data/db (32 MiB)" dd if=/dev/zero of=/mnt/data/db bs=1M count=32 conv=fsync
vm_check "sync" sync

# The writers. root: a new object file per round (written, fsynced, renamed
# over an old one), a log line appended; data: a random 64 KiB block of the
# database overwritten in place and fsynced, a small WAL file rewritten.
# Each round's number goes to /run/count.FS (tmpfs, replaced whole) for the host, and to
# the filesystem (app.log, data/seq) to be found in the snapshots.
writer_root() {
	local i=0 f
	while [ ! -e /run/stop ]; do
		i=$((i + 1))
		f=/mnt/root/var/lib/app/obj.$((i % 32))
		dd if=/tmp/src of=$f.new bs=64k count=4 conv=fsync 2>/dev/null || vm_log "writer root: dd failed in round $i"
		mv $f.new $f
		echo "round $i" >>/mnt/root/var/log/app.log
		echo $i >/run/count.root.new && mv /run/count.root.new /run/count.root
	done
}
writer_data() {
	local i=0
	while [ ! -e /run/stop ]; do
		i=$((i + 1))
		dd if=/tmp/src of=/mnt/data/db bs=64k count=1 seek=$((RANDOM % 512)) conv=notrunc,fsync 2>/dev/null ||
			vm_log "writer data: dd failed in round $i"
		echo "$i" >/mnt/data/wal.$((i % 8))
		echo "$i" >/mnt/data/seq
		echo $i >/run/count.data.new && mv /run/count.data.new /run/count.data
	done
}
echo 0 >/run/count.root
echo 0 >/run/count.data
writer_root &
wroot=$!
writer_data &
wdata=$!

# The freeze hook: qemu-ga runs it (with "freeze") before it freezes and
# waits for it; /run/hook-mode, if present, says what to do this once.
cat >/run/fsfreeze-hook <<'EOF'
#!/bin/sh
export PATH=/cairn/bin:/usr/sbin:/usr/bin:/sbin:/bin
read up _ </proc/uptime
echo "$1 $up" >>/run/hook.log
[ "$1" = freeze ] && [ -e /run/hook-mode ] || exit 0
mode=$(cat /run/hook-mode)
rm -f /run/hook-mode
case $mode in
kill) kill -KILL "$(cat /run/agent.pid)" ;;
sleep\ *) sleep "${mode#sleep }" ;;
esac
exit 0
EOF
chmod 755 /run/fsfreeze-hook

agent_start() {
	mkdir -p /run/qga
	qemu-ga -m virtio-serial -p $agent_port -t /run/qga -l /run/qemu-ga.log -F/run/fsfreeze-hook &
	echo $! >/run/agent.pid
	vm_log "qemu-ga started (pid $!)"
}
agent_start

uptime_s() { read up _ </proc/uptime && echo "$up"; }

vm_event ready
while :; do
	line=$(vm_recv 900) || vm_fail "no command from the host in 900 s"
	vm_log "host: $line"
	set -- $line
	case $1 in
	write)
		for fs in root data; do
			(
				t0=$(uptime_s)
				dd if=/tmp/4k of=/mnt/$fs/probe.$2 bs=4k conv=fsync 2>/dev/null
				rc=$?
				vm_send "wrote $2 $fs $t0 $(uptime_s) $rc"
			) &
		done
		;;
	agent)
		case $2 in
		stop) kill -STOP "$(cat /run/agent.pid)" ;;
		cont) kill -CONT "$(cat /run/agent.pid)" ;;
		kill) kill -KILL "$(cat /run/agent.pid)" ;;
		start) agent_start ;;
		esac
		vm_send "agent $2"
		;;
	hook)
		echo "${line#hook }" >/run/hook-mode
		vm_send "hook ${line#hook }"
		;;
	counts) vm_send "counts $(cat /run/count.root) $(cat /run/count.data)" ;;
	finish) break ;;
	*) vm_send "unknown $line" ;;
	esac
done

touch /run/stop
wait $wroot $wdata
vm_log "writers did $(cat /run/count.root) rounds on root and $(cat /run/count.data) on data"
for fs in root data; do
	vm_check "umount $fs" umount /mnt/$fs
done
