#!/usr/bin/env bash
# Installs Cairn (or removes it with --uninstall) the way a package would:
# binaries, systemd units, sysusers.d and tmpfiles.d snippets, an example
# config, the install guide. `make install` builds bin/cairnd and bin/cairn
# and runs this; `make uninstall` runs it with --uninstall.
#
# Honours, like any packaged daemon:
#   DESTDIR     staging root (packaging); nothing outside it is touched, and
#               no systemctl/sysusers/tmpfiles command runs
#   PREFIX      /usr/local by default; /usr for a distribution package
#   SYSCONFDIR  /etc by default (the config is SYSCONFDIR/cairn/cairnd.conf)
#   BINDIR, DOCDIR, UNITDIR, SYSUSERSDIR, TMPFILESDIR, SYSCTLDIR, COMPLETIONDIR
#               override single locations
#   BIN         where the built binaries are (the Makefile's BIN, ./bin)
# Without DESTDIR, on a host where systemd runs, it also creates group
# cairn, the directories, and reloads systemd; it never enables or starts
# anything (the last lines printed say how).
set -euo pipefail
cd "$(dirname "$0")/.."

uninstall=false
case "${1:-}" in
--uninstall) uninstall=true ;;
"") ;;
-h | --help)
	sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "install.sh: unknown argument $1 (use --uninstall or --help)" >&2
	exit 2
	;;
esac

DESTDIR=${DESTDIR:-}
BIN=${BIN:-bin}
PREFIX=${PREFIX:-/usr/local}
PREFIX=${PREFIX%/}
SYSCONFDIR=${SYSCONFDIR:-/etc}
BINDIR=${BINDIR:-$PREFIX/bin}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/cairn}
COMPLETIONDIR=${COMPLETIONDIR:-$PREFIX/share/bash-completion/completions}
# systemd reads units, sysusers.d and tmpfiles.d from /usr/lib and
# /usr/local/lib; any other prefix gets them in /etc, where it looks too.
case "$PREFIX" in
/usr | /usr/local) libdir=$PREFIX/lib ;;
*) libdir=$SYSCONFDIR ;;
esac
UNITDIR=${UNITDIR:-$libdir/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$libdir/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$libdir/tmpfiles.d}
SYSCTLDIR=${SYSCTLDIR:-$libdir/sysctl.d}
CONFDIR=$SYSCONFDIR/cairn

units=(cairnd.service cairnd.socket cairnd-nbd.socket)

# live: act on the running system (not when staging into DESTDIR).
live=false
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
	live=true
fi

say() { printf 'install.sh: %s\n' "$*"; }

# substitute rewrites the paths a unit names for this PREFIX/SYSCONFDIR.
substitute() {
	sed -e "s|/usr/local/bin/|$BINDIR/|g" \
		-e "s|/etc/cairn/|$CONFDIR/|g" \
		-e "s|file:///usr/local/share/doc/cairn/|file://$DOCDIR/|g" "$1"
}

do_install() {
	for b in cairnd cairn; do
		if [ ! -x "$BIN/$b" ]; then
			echo "install.sh: $BIN/$b is missing; run 'make install' (it builds first) or 'make build'" >&2
			exit 1
		fi
	done
	install -d -m 0755 "$DESTDIR$BINDIR" "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" \
		"$DESTDIR$TMPFILESDIR" "$DESTDIR$DOCDIR" "$DESTDIR$CONFDIR" "$DESTDIR$COMPLETIONDIR"
	install -m 0755 "$BIN/cairnd" "$BIN/cairn" "$DESTDIR$BINDIR/"
	for u in "${units[@]}"; do
		substitute "systemd/$u" >"$DESTDIR$UNITDIR/$u.tmp"
		chmod 0644 "$DESTDIR$UNITDIR/$u.tmp"
		mv "$DESTDIR$UNITDIR/$u.tmp" "$DESTDIR$UNITDIR/$u"
	done
	install -m 0644 systemd/sysusers.d/cairn.conf "$DESTDIR$SYSUSERSDIR/cairn.conf"
	install -m 0644 systemd/tmpfiles.d/cairn.conf "$DESTDIR$TMPFILESDIR/cairn.conf"
	install -D -m 0644 systemd/sysctl.d/60-cairn.conf "$DESTDIR$SYSCTLDIR/60-cairn.conf"
	install -m 0644 systemd/cairnd.conf.example "$DESTDIR$DOCDIR/cairnd.conf.example"
	install -m 0644 docs/install.md "$DESTDIR$DOCDIR/install.md"
	"$BIN/cairn" completion bash >"$DESTDIR$COMPLETIONDIR/cairn"
	# The config is the admin's: never overwrite one that exists.
	if [ ! -e "$DESTDIR$CONFDIR/cairnd.conf" ]; then
		install -m 0644 systemd/cairnd.conf.example "$DESTDIR$CONFDIR/cairnd.conf"
	else
		say "kept the existing $CONFDIR/cairnd.conf"
	fi
	say "installed into ${DESTDIR:-/} (PREFIX=$PREFIX)"
	if $live; then
		systemd-sysusers "$SYSUSERSDIR/cairn.conf"
		systemd-tmpfiles --create "$TMPFILESDIR/cairn.conf"
		sysctl -q -p "$SYSCTLDIR/60-cairn.conf" 2>/dev/null || say "could not apply $SYSCTLDIR/60-cairn.conf now (read-only /proc/sys?); it applies at the next boot"
		systemctl daemon-reload
		say "start it with: systemctl enable --now cairnd.socket cairnd-nbd.socket"
		say "let a user (or libvirt-qemu) use the sockets: usermod -aG cairn USER"
	fi
}

do_uninstall() {
	if $live; then
		systemctl disable --now "${units[@]}" 2>/dev/null || true
	fi
	rm -f "$DESTDIR$BINDIR/cairnd" "$DESTDIR$BINDIR/cairn"
	for u in "${units[@]}"; do rm -f "$DESTDIR$UNITDIR/$u"; done
	rm -f "$DESTDIR$SYSUSERSDIR/cairn.conf" "$DESTDIR$TMPFILESDIR/cairn.conf" "$DESTDIR$SYSCTLDIR/60-cairn.conf" \
		"$DESTDIR$DOCDIR/cairnd.conf.example" "$DESTDIR$DOCDIR/install.md" \
		"$DESTDIR$COMPLETIONDIR/cairn"
	rmdir "$DESTDIR$DOCDIR" 2>/dev/null || true
	# An unchanged config goes; an edited one stays, like a package's conffile.
	if [ -f "$DESTDIR$CONFDIR/cairnd.conf" ]; then
		if cmp -s systemd/cairnd.conf.example "$DESTDIR$CONFDIR/cairnd.conf"; then
			rm -f "$DESTDIR$CONFDIR/cairnd.conf"
		else
			say "kept $CONFDIR/cairnd.conf (edited); remove it by hand if you want"
		fi
	fi
	rmdir "$DESTDIR$CONFDIR" 2>/dev/null || true
	if $live; then
		systemctl daemon-reload
	fi
	say "removed Cairn from ${DESTDIR:-/} (PREFIX=$PREFIX)"
	if [ -z "$DESTDIR" ]; then
		say "kept the data in /var/lib/cairn and group cairn; remove them by hand to erase every disk"
	fi
}

if $uninstall; then do_uninstall; else do_install; fi
