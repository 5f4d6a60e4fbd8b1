# shellcheck shell=bash
# Boots a real systemd as PID 1 of a throwaway PID, mount and cgroup
# namespace, for end-to-end tests of cairnd as a service. Source it:
#
#   . scripts/systemd-ns.sh
#   reason=$(ns_unsupported) && { echo "skip: $reason"; exit 77; }
#   trap ns_destroy EXIT
#   ns_boot                       # sets NS_PID; systemd is up when it returns
#   ns systemctl start foo.socket # runs a command inside (nsenter)
#   ns_poweroff                   # clean shutdown; ns_destroy is the fallback
#
# What the namespace sees, and why the host stays clean:
#   /run, /tmp             private tmpfs (systemd's state, the sockets)
#   /etc, /var, /usr/local overlays on the host's directories whose upper
#                          layers live in NS_DIR, so `make install`, sysusers
#                          and the journal write there and vanish with it
#   /sys, /proc/sys        read-only, with a cgroup2 tree of its own at
#                          /sys/fs/cgroup (a child cgroup of ours, made the
#                          namespace's root) so systemd manages only itself
#   everything else        the host's (the repository, the Go toolchain)
# A host path under /tmp or /run that the namespace must still see (the
# repository, when a CI job clones it into /tmp) is named in NS_KEEP
# (colon-separated) and bind-mounted into the private tmpfs at the same path.
# systemd boots to cairn-test.target, which wants nothing: only what a test
# starts runs, plus journald. Units that would touch the host kernel or
# clock (sysctl, binfmt, modules, udev, timesyncd, pstore...) are masked.

NS_PID=""   # systemd's PID as the host sees it
NS_DIR=""   # the namespace's state: overlay layers, console log
NS_CGROUP="" # the host path of the namespace's cgroup
NS_UNSHARE="" # the unshare process that parents systemd

# Units masked inside the namespace: each would change host-wide state
# (kernel settings, the clock, devices, binfmt handlers) or waits for
# hardware a container does not have.
NS_MASKED=(
	systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
	proc-sys-fs-binfmt_misc.mount systemd-modules-load.service systemd-udevd.service
	systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-udev-trigger.service
	systemd-udev-settle.service systemd-timesyncd.service systemd-pstore.service
	systemd-remount-fs.service systemd-tmpfiles-setup-dev.service systemd-hwdb-update.service
	systemd-random-seed.service systemd-firstboot.service systemd-fsck-root.service
	systemd-repart.service systemd-growfs-root.service modprobe@.service
	dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount
	sys-kernel-config.mount systemd-journal-flush.service
)

# ns_unsupported prints why the namespace cannot boot here and returns 0,
# or prints nothing and returns 1 when it can.
ns_unsupported() {
	local tool
	[ "$(id -u)" = 0 ] || { echo "needs root (unshare, mount, cgroups)"; return 0; }
	for tool in unshare nsenter findmnt pgrep systemctl; do
		command -v "$tool" >/dev/null || { echo "$tool is not installed"; return 0; }
	done
	[ -x /lib/systemd/systemd ] || { echo "/lib/systemd/systemd is missing (Debian package systemd)"; return 0; }
	grep -qw overlay /proc/filesystems || { echo "the kernel has no overlayfs"; return 0; }
	[ -n "$(ns_cgroup2_mount)" ] || { echo "no cgroup2 hierarchy is mounted"; return 0; }
	return 1
}

# ns_cgroup2_mount prints where the host mounts the cgroup2 hierarchy
# (/sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones).
ns_cgroup2_mount() {
	findmnt -rn -t cgroup2 -o TARGET | head -n 1
}

# ns runs a command inside the namespace (its mounts and PIDs).
ns() {
	nsenter -t "$NS_PID" -m -p -- "$@"
}

# ns_boot starts systemd and returns when it has finished booting
# (is-system-running says running or degraded). On failure it prints the
# console log and returns non-zero; call ns_destroy either way.
ns_boot() {
	local mnt self started=$SECONDS
	# Not under /etc, /var or /usr/local: the overlays' layers must not be
	# reached through another overlay. The namespace's tmpfs /tmp hides it.
	NS_DIR=$(mktemp -d /tmp/cairn-systemd-ns.XXXXXX)
	mkdir -p "$NS_DIR"/{upper,work}/{etc,var,usrlocal}
	mnt=$(ns_cgroup2_mount)
	self=$(sed -n 's/^0:://p' /proc/self/cgroup)
	NS_CGROUP="$mnt${self%/}/cairn-test-ns.$$"
	mkdir "$NS_CGROUP"
	# The subshell joins the new cgroup before unshare makes it the root
	# of the namespace's cgroup tree.
	(
		echo "$BASHPID" >"$NS_CGROUP/cgroup.procs"
		exec unshare --cgroup --pid --fork --mount --mount-proc --propagation private \
			env NS_KEEP="${NS_KEEP:-}" bash -c "$(declare -f ns_inside); ns_inside \"\$@\"" ns_inside "$NS_DIR" "${NS_MASKED[@]}"
	) </dev/null >"$NS_DIR/console.log" 2>&1 &
	NS_UNSHARE=$!
	local deadline=$((SECONDS + 30))
	# systemd is unshare's only child: PID 1 of the new PID namespace.
	while ! ns_is_init "$NS_PID"; do
		NS_PID=$(pgrep -P "$NS_UNSHARE" | head -n 1 || true)
		ns_is_init "$NS_PID" && break
		kill -0 "$NS_UNSHARE" 2>/dev/null || { ns_fail "unshare exited before systemd started"; return 1; }
		[ $SECONDS -lt $deadline ] || { ns_fail "systemd did not start within 30s"; return 1; }
		sleep 0.05
	done
	# systemctl needs the manager's private socket; then --wait blocks
	# until start-up has finished.
	while ! ns test -S /run/systemd/private 2>/dev/null; do
		ns_is_init "$NS_PID" || { ns_fail "systemd (host PID $NS_PID) exited during boot"; return 1; }
		[ $SECONDS -lt $deadline ] || { ns_fail "systemd did not open its socket within 30s"; return 1; }
		sleep 0.05
	done
	local state
	state=$(timeout 60 nsenter -t "$NS_PID" -m -p -- systemctl is-system-running --wait 2>&1 || true)
	case "$state" in
	running) ;;
	degraded) echo "systemd-ns: booted degraded; failed units:"; ns systemctl --failed --no-pager --no-legend ;;
	*) ns_fail "systemd did not finish booting: $state"; return 1 ;;
	esac
	echo "systemd-ns: systemd is PID 1 of namespace (host PID $NS_PID), booted in $((SECONDS - started))s: $state"
}

# ns_is_init reports whether host PID $1 is PID 1 of a child PID namespace.
ns_is_init() {
	[ -n "$1" ] && grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$1/status" 2>/dev/null
}

ns_fail() {
	echo "systemd-ns: $*" >&2
	[ -n "$NS_DIR" ] && tail -n 40 "$NS_DIR/console.log" >&2
}

# ns_inside runs as PID 1 of the new namespaces: it builds the file system
# view described at the top, then becomes systemd. Arguments: the state
# directory, then the units to mask.
ns_inside() {
	set -e
	local dir=$1 d u
	shift
	mount --make-rprivate /
	for d in etc var; do
		mount -t overlay overlay -o "lowerdir=/$d,upperdir=$dir/upper/$d,workdir=$dir/work/$d" "/$d"
	done
	mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$dir/upper/usrlocal,workdir=$dir/work/usrlocal" /usr/local
	# The private /run and /tmp are built aside (in the state directory,
	# still reachable), the kept host paths bound into them, and then
	# moved into place with their submounts.
	local top keep rel
	for top in run tmp; do
		mkdir -p "$dir/new$top"
		if [ $top = run ]; then
			mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir/new$top"
		else
			mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir/new$top"
		fi
		local IFS=:
		for keep in ${NS_KEEP:-}; do
			case "$keep" in /$top/?*) ;; *) continue ;; esac
			rel=${keep#/$top/}
			mkdir -p "$dir/new$top/$rel"
			mount --bind "$keep" "$dir/new$top/$rel"
		done
		unset IFS
	done
	mount -n --move "$dir/newrun" /run
	mount -n --move "$dir/newtmp" /tmp
	mount --bind /sys /sys
	mount -o remount,bind,ro /sys
	mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
	mount --bind /proc/sys /proc/sys
	mount -o remount,bind,ro /proc/sys
	mkdir -p /run/systemd/system /run/systemd/journald.conf.d
	printf '[Unit]\nDescription=Cairn test namespace (wants nothing)\n' >/run/systemd/system/cairn-test.target
	for u in "$@"; do ln -s /dev/null "/run/systemd/system/$u"; done
	printf '[Journal]\nStorage=volatile\n' >/run/systemd/journald.conf.d/cairn-test.conf
	exec env -i container=cairn-test PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		/lib/systemd/systemd --system --unit=cairn-test.target --log-target=journal-or-kmsg --show-status=no
}

# ns_poweroff shuts systemd down cleanly and waits for the namespace to end.
ns_poweroff() {
	[ -n "$NS_PID" ] || return 0
	ns systemctl poweroff --no-block >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 30))
	while kill -0 "$NS_UNSHARE" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
	if kill -0 "$NS_UNSHARE" 2>/dev/null; then
		echo "systemd-ns: systemd did not power off within 30s" >&2
		return 1
	fi
	wait "$NS_UNSHARE" 2>/dev/null || true
	echo "systemd-ns: powered off"
}

# ns_destroy ends the namespace whatever its state (SIGKILL to its PID 1
# ends every process in it), then removes its cgroup and state. Safe to
# call twice, and as an EXIT trap.
ns_destroy() {
	if ns_is_init "$NS_PID"; then
		kill -KILL "$NS_PID" 2>/dev/null || true
	fi
	if [ -n "$NS_UNSHARE" ]; then
		kill -KILL "$NS_UNSHARE" 2>/dev/null || true
		wait "$NS_UNSHARE" 2>/dev/null || true
	fi
	if [ -n "$NS_CGROUP" ] && [ -d "$NS_CGROUP" ]; then
		# Whatever is left in the namespace's cgroup (only its processes
		# can be there) goes too, even if systemd's PID was never known.
		if [ -e "$NS_CGROUP/cgroup.kill" ]; then
			echo 1 >"$NS_CGROUP/cgroup.kill" 2>/dev/null || true
		else
			find "$NS_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
		fi
		# The kernel empties a cgroup a moment after its last process dies.
		local deadline=$((SECONDS + 10))
		while grep -q '^populated 1' "$NS_CGROUP/cgroup.events" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
			sleep 0.05
		done
		find "$NS_CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null ||
			echo "systemd-ns: could not remove cgroup $NS_CGROUP" >&2
	fi
	if [ -n "$NS_DIR" ] && [ -d "$NS_DIR" ]; then
		rm -rf "$NS_DIR"
	fi
	NS_PID="" NS_UNSHARE="" NS_CGROUP="" NS_DIR=""
}
