package systemd

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// Notifier speaks the sd_notify protocol (sd_notify(3)) to the service
// manager that started cairnd. Each call sends one datagram to the socket
// named by NOTIFY_SOCKET; with no NOTIFY_SOCKET every call does nothing and
// returns nil, so callers never need to ask whether they run under systemd.
//
// The unit runs with NotifyAccess=main: only the main process may send.
// A Notifier is safe for concurrent use.
type Notifier struct {
	socket   *net.UnixAddr // nil when not started by systemd (or when told so)
	watchdog time.Duration // WATCHDOG_USEC, 0 when the watchdog is off
}

// NewNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID and unsets
// them, so that processes cairnd starts do not talk to systemd in its name.
func NewNotifier() (*Notifier, error) {
	n := &Notifier{}
	if path := os.Getenv("NOTIFY_SOCKET"); path != "" {
		// A leading '@' names an abstract socket; Go's net package maps it.
		n.socket = &net.UnixAddr{Name: path, Net: "unixgram"}
	}
	os.Unsetenv("NOTIFY_SOCKET")
	interval, err := sddaemon.SdWatchdogEnabled(true)
	if err != nil {
		return n, fmt.Errorf("systemd watchdog: %w (check WatchdogSec= in cairnd.service)", err)
	}
	n.watchdog = interval
	return n, nil
}

// Enabled reports whether a service manager listens for notifications.
func (n *Notifier) Enabled() bool { return n.socket != nil }

// WatchdogInterval is the service's WatchdogSec= (0 when the watchdog is
// off, or when WATCHDOG_PID names another process). The service manager
// kills cairnd when it goes this long without a Watchdog call.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog }

// Ready tells the service manager that start-up is complete: the store is
// open and every socket accepts. For Type=notify units systemd holds back
// units ordered after cairnd until then. status, when not empty, is sent in
// the same datagram as the first STATUS= line.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.Notify(sddaemon.SdNotifyReady)
	}
	return n.Notify(sddaemon.SdNotifyReady, statusLine(status))
}

// Status sets the one-line text `systemctl status cairnd` shows, such as
// "serving 3 disks, 2 snapshots copying".
func (n *Notifier) Status(status string) error { return n.Notify(statusLine(status)) }

// Stopping tells the service manager that a clean shutdown has begun.
func (n *Notifier) Stopping() error { return n.Notify(sddaemon.SdNotifyStopping) }

// ExtendTimeout asks the service manager to wait d longer (from now) for
// the start-up or shutdown in progress before it gives up (TimeoutStopSec=).
// A long drain calls it repeatedly, each time before the last extension
// runs out.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	return n.Notify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", d.Microseconds()))
}

// Watchdog pets the watchdog. Call it only from a loop that has just
// checked that the daemon works (see RunWatchdog): petting from a timer
// alone keeps a wedged daemon alive.
func (n *Notifier) Watchdog() error { return n.Notify(sddaemon.SdNotifyWatchdog) }

// Notify sends assignments such as "READY=1" in one datagram.
func (n *Notifier) Notify(assignments ...string) error {
	if n.socket == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.socket)
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", n.socket.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(assignments, "\n"))); err != nil {
		return fmt.Errorf("sd_notify %s: %w", n.socket.Name, err)
	}
	return nil
}

// statusLine makes STATUS=text. A newline would end the assignment and let
// the rest of the text (a disk name, an error) be read as another one.
func statusLine(text string) string {
	return "STATUS=" + strings.NewReplacer("\n", " ", "\r", " ").Replace(text)
}
