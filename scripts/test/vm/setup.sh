#!/usr/bin/env bash
# Prepares what scripts/test/vm/run.sh boots, once, in a cache outside the
# checkout (README.md in this directory describes the harness):
# - Debian's kernel: linux-image-amd64's current kernel package fetched with
#   `apt-get download`, unpacked with dpkg-deb (never installed on the host),
#   its modules indexed with depmod (the package leaves that to its
#   postinst);
# - the base initramfs (an uncompressed newc cpio): busybox-static, the
#   e2fsprogs tools, qemu-ga, each with the shared libraries ldd names, the
#   boot modules and nbd with the whole /lib/modules/RELEASE index
#   (modules.dep, modules.alias, ...), and init + lib.sh from this directory.
# Idempotent and cheap when nothing changed: the base is rebuilt only when
# one of its inputs (the kernel, a tool's package version, init, lib.sh,
# this script) changes. Serialised by a lock on the cache.
#
# Prints shell assignments for run.sh to eval: VM_KERNEL (vmlinuz),
# VM_RELEASE (uname -r in the guest), VM_MODULES (the unpacked
# /lib/modules/RELEASE, for extra modules), VM_BASE (the base cpio).
# Exit 77 when the kernel package or a tool cannot be had, with the reason on
# stderr; 1 on any other failure.
#
# CAIRN_VM_CACHE overrides the cache (default /var/cache/cairn-test/vm, or
# ~/.cache/cairn-test/vm when /var/cache is not writable).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
unavailable() { echo "vm setup: $*" >&2; exit 77; }

if [ -z "${CAIRN_VM_CACHE:-}" ]; then
	CAIRN_VM_CACHE=/var/cache/cairn-test/vm
	mkdir -p "$CAIRN_VM_CACHE" 2>/dev/null && [ -w "$CAIRN_VM_CACHE" ] ||
		CAIRN_VM_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cairn-test/vm
fi
cache=$CAIRN_VM_CACHE
mkdir -p "$cache/debs" "$cache/kernels"
exec 9>"$cache/lock"
flock 9
# Left by a set-up that was interrupted (the lock says none is running).
rm -rf "$cache"/kernels/.unpack.* "$cache"/kernels/*/.base.*

export PATH=$PATH:/usr/sbin:/sbin
for tool in busybox qemu-ga mke2fs e2fsck debugfs tune2fs dumpe2fs depmod dpkg-deb apt-get ldd; do
	command -v "$tool" >/dev/null || unavailable "$tool is missing (scripts/deps.sh installs it)"
done
[ -x /bin/busybox ] && file_is_static=$(ldd /bin/busybox 2>&1 || true)
case "${file_is_static:-}" in
*"not a dynamic executable"*) ;;
*) unavailable "/bin/busybox is not busybox-static's static binary (install busybox-static)" ;;
esac

# kernel_package: the versioned kernel package linux-image-amd64 depends on
# now, e.g. linux-image-6.1.0-57-amd64 (apt-get update first if apt has no
# lists yet). apt-cache takes a second or more, so the answer is kept for a
# day in $cache/candidate.
kernel_package() {
	local pkg
	if [ -n "$(find "$cache/candidate" -mmin -1440 2>/dev/null)" ]; then
		cat "$cache/candidate"
		return
	fi
	pkg=$(kernel_package_now)
	[ -z "$pkg" ] || echo "$pkg" >"$cache/candidate"
	echo "$pkg"
}

kernel_package_now() {
	local pkg
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
		apt-get update -qq >/dev/null 2>&1 || true
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	fi
	echo "$pkg"
}

# fetch_kernel PKG: unpack PKG into $cache/kernels/RELEASE (once) and index
# its modules. Prints RELEASE.
fetch_kernel() {
	local pkg=$1 deb dir tmp rel
	rel=${pkg#linux-image-}
	dir=$cache/kernels/$rel
	if [ -f "$dir/.complete" ]; then
		echo "$rel"
		return
	fi
	deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | tail -1 || true)
	if [ -z "$deb" ]; then
		# apt-get download writes into the current directory; _apt cannot
		# write there as root's cache, so it warns and downloads unsandboxed.
		(cd "$cache/debs" && apt-get download -qq "$pkg" 2>&1 | grep -v "unsandboxed" >&2) || true
		deb=$(ls "$cache/debs/${pkg}_"*.deb 2>/dev/null | tail -1 || true)
		[ -n "$deb" ] || return 1
	fi
	tmp=$(mktemp -d "$cache/kernels/.unpack.XXXXXX")
	dpkg-deb -x "$deb" "$tmp"
	[ -f "$tmp/boot/vmlinuz-$rel" ] && [ -d "$tmp/lib/modules/$rel" ] || {
		rm -rf "$tmp"
		echo "vm setup: $deb has no boot/vmlinuz-$rel" >&2
		return 1
	}
	depmod -b "$tmp" "$rel"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	touch "$dir/.complete"
	# A new kernel replaces the older ones (~400 MB each unpacked).
	find "$cache/kernels" -mindepth 1 -maxdepth 1 ! -name "$rel" ! -name '.unpack.*' -exec rm -rf {} +
	find "$cache/debs" -name '*.deb' ! -name "${pkg}_*" -delete
	echo "$rel"
}

pkg=$(kernel_package)
rel=
if [ -n "$pkg" ]; then
	rel=$(fetch_kernel "$pkg") || rel=
fi
if [ -z "$rel" ] && [ "$(id -u)" = 0 ]; then
	# Stale apt lists name a package the archive no longer has: refresh
	# them once and ask again.
	apt-get update -qq >/dev/null 2>&1 || true
	rm -f "$cache/candidate"
	pkg=$(kernel_package)
	[ -n "$pkg" ] && { rel=$(fetch_kernel "$pkg") || rel=; }
fi
if [ -z "$rel" ]; then
	# Offline or no apt lists: any kernel unpacked before will do.
	rel=$(ls -t "$cache"/kernels/*/.complete 2>/dev/null | head -1 | xargs -r dirname | xargs -r basename || true)
	[ -n "$rel" ] || unavailable "cannot fetch Debian's kernel package (linux-image-amd64${pkg:+ -> $pkg}) with apt-get download"
fi
kdir=$cache/kernels/$rel
mods=$kdir/lib/modules/$rel

# The modules /init loads at boot, in this order, with their dependencies
# before them: virtio PCI, disks, the virtio-serial ports qemu-ga and the
# control channel use, and ext4 (crc32c_generic is ext4's and jbd2's softdep
# "crypto-crc32c"; modules.dep does not list it). nbd is in the tree but not
# loaded: issue 22's tests load it themselves (kmod or modprobe).
boot_modules=(crc32c_generic virtio_pci virtio_blk virtio_console ext4)
tree_modules=(nbd)

# Inputs of the base initramfs; a change to any of them makes a new one.
tools=(mke2fs e2fsck debugfs tune2fs dumpe2fs)
key=$( {
	echo "$rel ${boot_modules[*]} ${tree_modules[*]}"
	dpkg-query -W busybox-static e2fsprogs qemu-guest-agent libc6 2>/dev/null
	cat "$here/init" "$here/lib.sh" "$here/modules.awk" "$0"
} | sha256sum | cut -c1-16)
base=$kdir/base-$key.cpio

# module_paths NAME...: the module files NAME needs, dependencies first,
# relative to $mods, each once.
module_paths() { awk -v want="$*" -f "$here/modules.awk" "$mods/modules.dep"; }

# copy_with_libs ROOT FILE...: FILE at the same path under ROOT, with every
# shared library ldd names at its path (symlinks resolved).
copy_with_libs() {
	local root=$1 f lib
	shift
	for f in "$@"; do
		mkdir -p "$root$(dirname "$f")"
		cp -L "$f" "$root$f"
		for lib in $(ldd "$f" 2>/dev/null | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }'); do
			[ -e "$root$lib" ] && continue
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done
	done
}

build_base() {
	local s p link
	s=$(mktemp -d "$kdir/.base.XXXXXX")
	mkdir -p "$s"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,root,var,etc/cairn-vm,cairn/bin}
	ln -s ../run "$s/var/run"
	cp /bin/busybox "$s/bin/busybox"
	# Every applet as a symlink, except where a real tool goes below.
	for link in $(/bin/busybox --list-full); do
		[ -e "$s/$link" ] || [ -L "$s/$link" ] || ln -s /bin/busybox "$s/$link"
	done
	for p in "${tools[@]}"; do
		rm -f "$s/sbin/$p" "$s/usr/sbin/$p"
		copy_with_libs "$s" "$(command -v "$p")"
	done
	rm -f "$s/sbin/mkfs.ext4" "$s/sbin/fsck.ext4"
	ln -s "$(command -v mke2fs)" "$s/sbin/mkfs.ext4"
	ln -s "$(command -v e2fsck)" "$s/sbin/fsck.ext4"
	copy_with_libs "$s" "$(command -v qemu-ga)"
	cp /etc/mke2fs.conf "$s/etc/" 2>/dev/null || true
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$s/etc/passwd"
	printf 'root:x:0:\n' >"$s/etc/group"
	# The modules tree: every index depmod wrote (for the whole kernel), the
	# module files the guest may load.
	mkdir -p "$s/lib/modules/$rel"
	cp "$mods"/modules.* "$s/lib/modules/$rel/"
	for p in $(module_paths "${boot_modules[@]}" "${tree_modules[@]}"); do
		mkdir -p "$s/lib/modules/$rel/$(dirname "$p")"
		cp "$mods/$p" "$s/lib/modules/$rel/$p"
	done
	module_paths "${boot_modules[@]}" >"$s/etc/cairn-vm/boot-modules"
	cp "$here/init" "$s/init"
	cp "$here/lib.sh" "$s/cairn/lib.sh"
	chmod 0755 "$s/init"
	(cd "$s" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$base.tmp"
	mv "$base.tmp" "$base"
	rm -rf "$s"
}

if [ ! -f "$base" ]; then
	build_base
	find "$kdir" -maxdepth 1 -name 'base-*.cpio' ! -path "$base" -delete
fi

printf 'VM_KERNEL=%q\nVM_RELEASE=%q\nVM_MODULES=%q\nVM_BASE=%q\n' \
	"$kdir/boot/vmlinuz-$rel" "$rel" "$mods" "$base"
