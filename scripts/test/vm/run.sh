#!/usr/bin/env bash
# Boots the test VM once (scripts/test/vm/README.md): qemu-system-x86_64
# under TCG, Debian's kernel, the base initramfs from setup.sh plus this
# run's files, no network; waits until the guest powers off (or the timeout
# kills it) and reports the guest's verdict.
#
# usage: run.sh --script FILE [options]
#   --script FILE       the guest test script (busybox sh, sourced after
#                       /cairn/lib.sh); its exit status is the verdict
#   --file SRC[:DST]    copy SRC into the guest at DST (default
#                       /cairn/bin/BASENAME, on PATH); a dynamically linked
#                       SRC brings the libraries ldd names. Repeatable
#   --module NAME       put kernel module NAME (with its dependencies) into
#                       the guest's /lib/modules tree, not loaded. Repeatable
#   --env NAME=VALUE    set NAME in the script's environment. Repeatable
#   --nbd SOCKET        the NBD server's Unix socket (cairnd's nbd.sock) for
#                       --disk and --disk-ro
#   --disk EXPORT       a virtio disk served from EXPORT over NBD; in the
#                       guest: /dev/disk/cairn/EXPORT (vm_disk EXPORT).
#                       Repeatable, in order: vda, vdb, ...
#   --disk-ro EXPORT    the same, read-only
#   --nbd-reconnect S   qemu's reconnect-delay for the NBD disks: after the
#                       server goes away (cairnd killed or restarted), the
#                       guest's requests wait up to S seconds for qemu to
#                       reconnect instead of failing at once (default 0:
#                       they fail)
#   --disk-file FILE    a virtio disk on a raw FILE on the host; in the
#                       guest: /dev/disk/cairn/BASENAME
#   --disk-file-ro FILE the same, read-only
#   --agent SOCKET      the guest agent's virtio-serial port
#                       (org.qemu.guest_agent.0) on the host's Unix socket
#                       SOCKET, as libvirt wires it; /init starts qemu-ga on
#                       it unless --env CAIRN_VM_AGENT=manual
#   --ctl SOCKET        a control channel (org.cairn.ctl.0) on SOCKET: the
#                       host sends lines the script reads with vm_recv
#   --log FILE          the serial console log (default: in the work dir)
#   --timeout SECONDS   kill the VM after SECONDS (default 300)
#   --mem MIB           guest memory (default 512)
#   --work DIR          scratch directory (default: a new one, removed
#                       after a PASS, kept after anything else)
#
# Prints the verdict line and exits: 0 PASS; 1 FAIL (the script failed);
# 2 no verdict (timeout, guest crash, qemu error), with the console log's
# tail; 77 when the VM cannot be had (setup.sh says why).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '/^# usage:/,/^# Prints/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() {
	echo "vm run: $*" >&2
	[ -n "${own_work:-}" ] && rm -rf "$work"
	exit 2
}

script= nbd= agent= ctl= log= work= timeout=300 mem=512 reconnect=0
files=() modules=() envs=() disks=()
while [ $# -gt 0 ]; do
	case $1 in -h | --help) usage ;; esac
	[ $# -ge 2 ] || die "$1 needs a value"
	case $1 in
	--script) script=$2 ;;
	--file) files+=("$2") ;;
	--module) modules+=("$2") ;;
	--env) envs+=("$2") ;;
	--nbd) nbd=$2 ;;
	--nbd-reconnect) reconnect=$2 ;;
	--disk) disks+=("nbd rw $2") ;;
	--disk-ro) disks+=("nbd ro $2") ;;
	--disk-file) disks+=("file rw $2") ;;
	--disk-file-ro) disks+=("file ro $2") ;;
	--agent) agent=$2 ;;
	--ctl) ctl=$2 ;;
	--log) log=$2 ;;
	--timeout) timeout=$2 ;;
	--mem) mem=$2 ;;
	--work) work=$2 ;;
	*) echo "vm run: unknown option $1" >&2; usage ;;
	esac
	shift 2
done
[ -n "$script" ] || die "--script is required"
[ -f "$script" ] || die "--script $script: no such file"
[[ $reconnect =~ ^[0-9]+$ ]] || die "--nbd-reconnect $reconnect: not a number of seconds"
command -v qemu-system-x86_64 >/dev/null || { echo "vm run: qemu-system-x86_64 is missing (scripts/deps.sh installs qemu-system-x86)" >&2; exit 77; }

setup=$("$here/setup.sh")
rc=$?
[ $rc -eq 0 ] || exit $rc
eval "$setup"

own_work=
if [ -z "$work" ]; then
	work=$(mktemp -d /tmp/cairn-vm.XXXXXX)
	own_work=1
fi
mkdir -p "$work"
log=${log:-$work/console.log}
: >"$log"

# --- this run's files, appended to the base as a second cpio archive
x=$work/extra
rm -rf "$x"
mkdir -p "$x/cairn/bin"
cp "$script" "$x/cairn/test.sh"
for e in ${envs[@]+"${envs[@]}"}; do
	name=${e%%=*} value=${e#*=}
	[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env $e: not NAME=VALUE"
	printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}" >>"$x/cairn/env"
done
for f in ${files[@]+"${files[@]}"}; do
	src=${f%%:*} dst=/cairn/bin/$(basename "${f%%:*}")
	[[ $f == *:* ]] && dst=${f#*:}
	[ -f "$src" ] || die "--file $src: no such file"
	[[ $dst == /* ]] || die "--file $f: the guest path must be absolute"
	mkdir -p "$x$(dirname "$dst")"
	cp -L "$src" "$x$dst"
	for lib in $(ldd "$src" 2>/dev/null | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }'); do
		mkdir -p "$x$(dirname "$lib")"
		cp -L "$lib" "$x$lib"
	done
done
if [ ${#modules[@]} -gt 0 ]; then
	paths=$(awk -v want="${modules[*]}" -f "$here/modules.awk" "$VM_MODULES/modules.dep" 2>&1) ||
		die "--module: $paths"
	for p in $paths; do
		mkdir -p "$x/lib/modules/$VM_RELEASE/$(dirname "$p")"
		cp "$VM_MODULES/$p" "$x/lib/modules/$VM_RELEASE/$p"
	done
fi

# --- qemu's devices
qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display none -nic none
	-machine pc,accel=tcg -cpu max -smp 1 -m "$mem" -no-reboot
	-kernel "$VM_KERNEL" -append "console=ttyS0 panic=-1 quiet rdinit=/init"
	-serial "file:$log")
n=0
: >"$x/cairn/disks"
for d in ${disks[@]+"${disks[@]}"}; do
	read -r kind mode target <<<"$d"
	ro=
	[ "$mode" = ro ] && ro=,readonly=on
	if [ "$kind" = nbd ]; then
		[ -n "$nbd" ] || die "--disk $target needs --nbd SOCKET"
		rd=
		[ "$reconnect" -gt 0 ] && rd=,file.reconnect-delay=$reconnect
		qemu+=(-drive "file=nbd+unix:///$target?socket=$nbd,format=raw,if=none,id=d$n,cache=none$ro$rd")
		echo "d$n $target" >>"$x/cairn/disks"
	else
		[ -f "$target" ] || die "--disk-file $target: no such file"
		# qemu's default cache mode: cache=none needs O_DIRECT, which tmpfs
		# only has in recent kernels.
		qemu+=(-drive "file=$target,format=raw,if=none,id=d$n$ro")
		echo "d$n $(basename "$target")" >>"$x/cairn/disks"
	fi
	qemu+=(-device "virtio-blk-pci,drive=d$n,serial=d$n")
	n=$((n + 1))
done
: >"$x/cairn/ports"
if [ -n "$agent$ctl" ]; then
	qemu+=(-device virtio-serial-pci,id=vser0)
	if [ -n "$agent" ]; then
		qemu+=(-chardev "socket,path=$agent,server=on,wait=off,id=qga0"
			-device "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0")
		echo org.qemu.guest_agent.0 >>"$x/cairn/ports"
	fi
	if [ -n "$ctl" ]; then
		qemu+=(-chardev "socket,path=$ctl,server=on,wait=off,id=ctl0"
			-device "virtserialport,bus=vser0.0,chardev=ctl0,name=org.cairn.ctl.0")
		echo org.cairn.ctl.0 >>"$x/cairn/ports"
	fi
fi

# The kernel unpacks concatenated cpio archives in turn; each must start
# on a 4-byte boundary.
initrd=$work/initrd.cpio
(cd "$x" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$work/extra.cpio" ||
	die "cannot build this run's cpio"
cp "$VM_BASE" "$initrd"
truncate -s %4 "$initrd"
cat "$work/extra.cpio" >>"$initrd"
qemu+=(-initrd "$initrd")

# --- boot, wait, judge
# timeout(1) ends qemu (TERM, then KILL 5 s later) and passes a TERM or INT
# sent to this script on to it.
qpid=
trap '[ -n "$qpid" ] && kill -TERM "$qpid" 2>/dev/null; wait; exit 2' INT TERM
start=$SECONDS
timeout -k 5 "$timeout" "${qemu[@]}" </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
wait "$qpid"
qrc=$?
qpid=
took=$((SECONDS - start))

verdict=$(grep -a '^CAIRN-VM-RESULT: ' "$log" | tail -1 | tr -d '\r')
tail_log() {
	echo "--- console log ($log), last 40 lines:"
	tail -40 "$log" | tr -d '\r'
	[ -s "$work/qemu.out" ] && { echo "--- qemu:"; cat "$work/qemu.out"; }
}
case $verdict in
"CAIRN-VM-RESULT: PASS")
	echo "$verdict (${took}s)"
	[ -n "$own_work" ] && rm -rf "$work"
	exit 0
	;;
"CAIRN-VM-RESULT: FAIL"*)
	echo "$verdict (${took}s)"
	tail_log
	echo "vm run: kept $work"
	exit 1
	;;
esac
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
	echo "CAIRN-VM-RESULT: NONE (killed after the ${timeout}s timeout)"
else
	echo "CAIRN-VM-RESULT: NONE (qemu exited $qrc without a verdict after ${took}s)"
fi
tail_log
echo "vm run: kept $work"
exit 2
