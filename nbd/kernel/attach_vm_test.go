package kernel_test

import (
	"os"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/vmtest"
)

// TestAttachInVM is kernel attach against a real kernel: this machine's
// has no nbd driver, so cairnd runs inside the test VM (Debian's kernel,
// scripts/test/vm), statically linked, with its data on the guest's
// tmpfs. nbd is in the guest's modules tree but not loaded at boot, and
// the kernel's own module autoloading is switched off: cairnd's first
// attach must load it (pmorjan/kmod). Then, all in the guest:
//
//   - attach a disk with two connections, mkfs.ext4, mount, write files;
//   - delete and rollback of the attached disk are refused without force;
//   - cairnd is killed (SIGKILL) while the filesystem is mounted; a read
//     of uncached data blocks instead of failing, and completes once a new
//     cairnd has reconnected the device (NBD_CMD_RECONFIGURE); every file
//     reads back, new ones are written; the same after a clean stop;
//   - a snapshot attaches read-only: the kernel marks the device
//     read-only and writes to it fail; it mounts and holds the files;
//   - detach is refused while the device is mounted, works once it is
//     unmounted (by device or by export name), and disconnects it; a
//     forced delete of the snapshot or the disk detaches their devices.
func TestAttachInVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM (-short)")
	}
	vmtest.Require(t)
	vm := vmtest.Start(t, vmtest.Config{
		Script: attachScript,
		Files: []vmtest.File{
			{Src: vmtest.StaticBinary(t, "./cmd/cairnd")},
			{Src: vmtest.StaticBinary(t, "./cmd/cairn")},
		},
		MemoryMiB: 1024,
		Timeout:   8 * time.Minute,
	})
	vm.RequirePass(t)
	if testing.Verbose() {
		console, _ := os.ReadFile(vm.Log)
		t.Logf("the guest's console:\n%s", console)
	}
}

const attachScript = `
set -u
export CAIRN_SOCKET=/tmp/data/cairn.sock
starts=0
start_cairnd() {
	starts=$((starts + 1))
	log=/tmp/cairnd.$starts.log
	# The data directory is in the guest's RAM: the smallest store reserve.
	cairnd --data-dir /tmp/data --fuse=false --store-reserve 96M >$log 2>&1 &
	pid=$!
	vm_wait_for 120 grep -q "cairnd ready" $log || { cat $log; vm_fail "cairnd start $starts did not become ready"; }
	vm_log "cairnd start $starts: pid $pid"
}
# fail_with DESC WANT CMD...: CMD must fail, saying WANT.
fail_with() {
	local what=$1 want=$2 out
	shift 2
	if out=$("$@" 2>&1); then vm_fail "$what: it succeeded: $out"; fi
	echo "$out" | grep -q "$want" || vm_fail "$what: '$out' does not say '$want'"
	vm_log "ok   $what"
}
# sums FILE...: their md5 sums, uncached: what the device holds.
sums() { sync; echo 3 >/proc/sys/vm/drop_caches; md5sum "$@"; }

vm_check "nbd is not loaded at boot" test ! -e /sys/module/nbd
# The kernel's own autoloading (request_module, via genetlink's family
# lookup) is off: only cairnd can load nbd.
echo >/proc/sys/kernel/modprobe

start_cairnd
vm_check "disk create" cairn disk create d1 --size 64M
dev=$(cairn disk attach d1 --connections 2 --reconnect-timeout 3m 2>/tmp/err) || vm_fail "attach d1: $(cat /tmp/err)"
vm_check "the first free device" test "$dev" = /dev/nbd0
vm_check "cairnd loaded nbd" grep -q "loaded the nbd kernel module" /tmp/cairnd.1.log
vm_check "nbd is loaded" test -e /sys/module/nbd
vm_check "the device's backend is cairn's" grep -q "^cairn:d1:" /sys/block/nbd0/backend
vm_check "the device's size is the disk's" test "$(cat /sys/block/nbd0/size)" = $((64 * 2048))
vm_check "the device is writable" test "$(cat /sys/block/nbd0/ro)" = 0
vm_check "listed with both connections" sh -c 'cairn disk attachments | grep -q "^/dev/nbd0 *d1 *rw .* 2/2 *connected"'
vm_check "its sockets are NBD clients of d1" sh -c 'cairn export list d1 | grep -q "^d1 *rw .* 2 "'

vm_check "mkfs.ext4" mkfs.ext4 -q /dev/nbd0
mkdir -p /mnt/d1 /mnt/s1
vm_check "mount" mount /dev/nbd0 /mnt/d1
seq 1 300000 >/mnt/d1/big
echo "small file before the snapshot" >/mnt/d1/small
sync
before=$(sums /mnt/d1/big /mnt/d1/small)
vm_check "snapshot d1@s1" cairn snapshot create d1 s1 --wait

fail_with "delete of the attached disk" "kernel attachment" cairn disk delete d1 --with-snapshots
fail_with "rollback of the attached disk" "kernel attachment" cairn snapshot rollback d1 s1

# A crash: the device waits for a new cairnd.
kill -9 $pid
wait $pid 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
(md5sum /mnt/d1/big >/tmp/during.md5 2>&1; echo "exit $?" >>/tmp/during.md5) &
reader=$!
sleep 3
vm_check "a read waits while cairnd is down" kill -0 $reader
start_cairnd
vm_check "the device was reconnected" grep -q "kernel attachment reconnected.*device=/dev/nbd0" /tmp/cairnd.2.log
vm_wait_for 60 sh -c '! kill -0 '$reader || vm_fail "the read waiting for cairnd never ended"
vm_check "the read that waited succeeded" grep -q "exit 0" /tmp/during.md5
vm_check "the read that waited read the file" test "$(head -1 /tmp/during.md5)" = "$(echo "$before" | head -1)"
vm_wait_for 30 sh -c 'cairn disk attachments | grep -q "2/2 *connected"' || vm_fail "not 2/2 connected after the restart: $(cairn disk attachments)"
vm_check "the files read back after the crash" test "$(sums /mnt/d1/big /mnt/d1/small)" = "$before"
echo "written after the crash" >/mnt/d1/after-crash
vm_check "a write after the crash" sync

# A clean stop and start.
kill -TERM $pid
wait $pid
start_cairnd
vm_check "the device was reconnected after a clean stop" grep -q "kernel attachment reconnected.*device=/dev/nbd0" /tmp/cairnd.3.log
vm_check "the files read back after the clean stop" test "$(sums /mnt/d1/big /mnt/d1/small)" = "$before"
vm_check "the file written after the crash" grep -qx "written after the crash" /mnt/d1/after-crash
dd if=/dev/urandom of=/mnt/d1/random bs=64k count=32 2>/dev/null
want=$(sums /mnt/d1/random)
vm_check "a new file reads back uncached" test "$(sums /mnt/d1/random)" = "$want"

# The snapshot, read-only.
ro=$(cairn disk attach d1@s1 2>/tmp/err) || vm_fail "attach d1@s1: $(cat /tmp/err)"
vm_check "the snapshot's device" test "$ro" = /dev/nbd1
vm_check "the kernel marks it read-only" test "$(cat /sys/block/nbd1/ro)" = 1
vm_check "listed read-only" sh -c 'cairn disk attachments | grep -q "^/dev/nbd1 *d1@s1 *ro "'
if out=$(dd if=/dev/zero of=/dev/nbd1 bs=4k count=1 conv=fsync 2>&1); then vm_fail "a write to the snapshot's device succeeded"; fi
echo "$out" | grep -qE "Read-only file system|Operation not permitted" || vm_fail "the write to the snapshot's device failed with '$out', not EROFS/EPERM"
vm_log "ok   a write to the snapshot's device: $(echo "$out" | grep -E "Read-only file system|Operation not permitted")"
vm_check "the snapshot mounts read-only" mount -o ro,noload /dev/nbd1 /mnt/s1
vm_check "the snapshot holds the files" test "$(sums /mnt/s1/big /mnt/s1/small | sed 's|/mnt/s1/|/mnt/d1/|')" = "$before"
vm_check "the snapshot does not hold later files" test ! -e /mnt/s1/after-crash
fail_with "delete of the attached snapshot" "kernel attachment" cairn snapshot delete d1 s1

# Detach.
fail_with "detach of a mounted device" "mounted or held open" cairn disk detach /dev/nbd0
vm_check "umount d1" umount /mnt/d1
vm_check "detach /dev/nbd0" cairn disk detach /dev/nbd0
vm_check "the device is disconnected" test "$(cat /sys/block/nbd0/size)" = 0
vm_check "umount s1" umount /mnt/s1
vm_check "a forced snapshot delete detaches its device" cairn snapshot delete d1 s1 --force
vm_check "the snapshot's device is disconnected" test "$(cat /sys/block/nbd1/size)" = 0
vm_check "no attachment left" test -z "$(cairn disk attachments -o json | grep device)"
vm_check "attach again" test "$(cairn disk attach d1)" = /dev/nbd0
vm_check "detach by export name" cairn disk detach d1
vm_check "attach once more" test "$(cairn disk attach d1 --device /dev/nbd5)" = /dev/nbd5
fail_with "delete of the attached disk" "1 kernel attachment" cairn disk delete d1
vm_check "a forced delete detaches the device" cairn disk delete d1 --force
vm_check "the deleted disk's device is disconnected" test "$(cat /sys/block/nbd5/size)" = 0
vm_check "no attachment left after the delete" test -z "$(cairn disk attachments -o json | grep device)"
kill -TERM $pid
wait $pid
grep -h "level=WARN" /tmp/cairnd.*.log
if grep -h "level=ERROR" /tmp/cairnd.*.log; then vm_fail "cairnd logged errors"; fi
`
