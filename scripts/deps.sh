#!/usr/bin/env bash
# Installs what Cairn's tests need from Debian's packages. Idempotent: it
# only calls apt-get when a package is missing. Needs root for the install.
set -euo pipefail
pkgs=(qemu-utils libnbd-bin python3-libnbd nbdkit fio fuse3 e2fsprogs xfsprogs util-linux kmod systemd dbus
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
