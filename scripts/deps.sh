#!/usr/bin/env bash
# Installs what Cairn's tests need from Debian's packages. Idempotent: it
# only calls apt-get when a package is missing. Needs root for the install.
# qemu-system-x86, busybox-static and qemu-guest-agent are for the test VM
# (scripts/test/vm/README.md), whose kernel package setup.sh there fetches
# and unpacks without installing it. qemu-guest-agent's service only starts
# where a guest-agent port exists, never on a host: its freeze must only
# ever run inside the VM. linux-libc-dev's uapi headers are what
# nbd/kernel's tests check the nbd netlink numbers against. prometheus
# (with promtool) scrapes cairnd in scripts/test/test-metrics.sh and checks
# the alert rules; the test runs its own server on a free port and never
# uses the package's service (which Debian starts on :9090 where systemd
# runs; stop it if you do not want it).
set -euo pipefail
pkgs=(qemu-utils libnbd-bin python3-libnbd nbdkit fio fuse3 e2fsprogs xfsprogs linux-libc-dev util-linux kmod systemd dbus
	qemu-system-x86 busybox-static qemu-guest-agent prometheus
	curl passwd) # curl, passwd (useradd): the role tests call the API as users they make
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing Debian packages: ${missing[*]}; run 'sudo $0' (needs root)" >&2
	exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
