// Package systemd is cairnd's glue to the service manager: the listening
// sockets systemd passes in (socket activation), the sd_notify protocol
// (READY, STATUS, STOPPING, EXTEND_TIMEOUT_USEC, WATCHDOG) and logging to
// the journal.
//
// Everything here degrades to a no-op when cairnd runs without systemd:
// Listeners returns an empty map, a Notifier with no NOTIFY_SOCKET sends
// nothing, and the log handler writes plain text. The daemon therefore has
// one code path, and the unit files in this directory are the only place
// that knows it runs as a service.
package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// Listeners returns the listening sockets systemd passed to this process,
// keyed by their FileDescriptorName= (cairnd's socket units name them "api"
// and "nbd"). It returns an empty map, and no error, when the process was
// not socket-activated. LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are unset
// so that child processes do not believe the sockets are theirs.
//
// Only names in want are accepted. A passed descriptor with another name
// (or none), a name passed twice, or a descriptor that is not a listening
// stream socket is an error and every passed socket is closed: each means
// the unit files are wrong, and serving only some sockets would leave
// clients queued on the others forever.
func Listeners(want ...string) (map[string]net.Listener, error) {
	files := activation.Files(true)
	listeners := make(map[string]net.Listener, len(files))
	var errs []error
	for i, f := range files {
		l, err := listenerFrom(f, want)
		f.Close() // net.FileListener holds its own duplicate
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("socket activation: fd %d (%q): %w", 3+i, f.Name(), err))
		case listeners[f.Name()] != nil:
			l.Close()
			errs = append(errs, fmt.Errorf("socket activation: fd %d: name %q passed twice; give each socket unit one ListenStream= and its own FileDescriptorName=", 3+i, f.Name()))
		default:
			listeners[f.Name()] = l
		}
	}
	if len(errs) > 0 {
		for _, l := range listeners {
			l.Close()
		}
		return nil, errors.Join(errs...)
	}
	return listeners, nil
}

// listenerFrom checks that f is a listening stream socket with one of the
// wanted names and wraps it.
func listenerFrom(f *os.File, want []string) (net.Listener, error) {
	if !slices.Contains(want, f.Name()) {
		return nil, fmt.Errorf("unexpected name: set FileDescriptorName= to one of %s in the socket unit", strings.Join(want, ", "))
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var accepting int
	if cerr := raw.Control(func(fd uintptr) {
		accepting, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	}); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, fmt.Errorf("not a socket: %w", err)
	}
	if accepting != 1 {
		return nil, errors.New("not a listening stream socket: use ListenStream= and Accept=no")
	}
	return net.FileListener(f)
}
