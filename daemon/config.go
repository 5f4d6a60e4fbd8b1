package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/internal/clock"
)

// Version is cairnd's version, set at link time
// (-X github.com/cairn-storage/cairn/daemon.Version=...).
var Version = "dev"

// Config configures a Daemon. The fields that Settings declare come from
// cairnd's flags and config file (docs/config.md); the rest are for
// programs that embed the daemon (cmd/cairnd, tests).
type Config struct {
	// DataDir holds the lock, the store and the live images of new disks.
	DataDir string
	// APISocket is the control API's Unix socket; "" means
	// $RUNTIME_DIRECTORY/cairn.sock when systemd sets RUNTIME_DIRECTORY,
	// else DATA_DIR/cairn.sock.
	APISocket string
	// NBDSocket is the NBD Unix socket; "" means $RUNTIME_DIRECTORY/nbd.sock
	// or DATA_DIR/nbd.sock, as for APISocket.
	NBDSocket string
	// NBDListen is an optional TCP address (host:port) for NBD. Only
	// loopback addresses are accepted until NBD over TLS exists.
	NBDListen string
	// LogLevel is debug, info, warn or error; LogFormat text or json. Used
	// by NewLogger (cmd/cairnd); the daemon itself logs to Logger.
	LogLevel  string
	LogFormat string
	// ShutdownTimeout bounds a graceful shutdown (default 5s): after it NBD
	// connections are cut.
	ShutdownTimeout Duration
	// FUSE mounts disks and snapshots as files on FUSEDir (docs/fuse.md).
	// Nil is off for an embedded daemon; cairnd sets it (default on).
	FUSE *bool
	// FUSEDir is where; "" means $RUNTIME_DIRECTORY/fuse, else DATA_DIR/fuse.
	FUSEDir string
	// SnapshotQuota is the most snapshots one disk's chain may hold
	// (default 64, as public clouds allow). A manual snapshot beyond it is
	// refused with 409 quota_exceeded.
	SnapshotQuota int
	// StoreReserve ("384M" by default, at least "96M") sizes the store's
	// reserve: a file of that size on the store's filesystem that only
	// the store's upkeep (start, stop, deletes, failure records) may use,
	// so those work on a full filesystem; and new snapshots and chunk
	// writes stop (the snapshot fails, guest writes go on) while less
	// than that is free besides.
	StoreReserve string
	// NBDMaxConnections bounds NBD connections over every listener
	// (default DefaultNBDMaxConnections); NBDIdleTimeout, when set, closes
	// a connection idle that long.
	NBDMaxConnections int
	NBDIdleTimeout    Duration
	// TLSCert and TLSKey (PEM files) turn on NBD_OPT_STARTTLS; with
	// TLSClientCA every TLS client must present a certificate signed by
	// it. TLSRequired lists the exports (path.Match patterns) a TCP client
	// may open only over TLS; a TCP listener off loopback requires TLS for
	// every export (docs/security.md).
	TLSCert, TLSKey, TLSClientCA string
	TLSRequired                  []string
	// Admin, Operator and Reader list who holds each role, and Grant
	// per-disk roles (package access); NBDTCPRole is the role of a TCP
	// client no principal names. Operator nil means group cairn when it
	// exists.
	Admin, Operator, Reader, Grant []string
	NBDTCPRole                     string
	// AdoptAllow lists the directories and block devices disks may be
	// adopted from; none turns adoption off (paths.go).
	AdoptAllow []string
	// CopyOutShare is the share of time a snapshot's copy-out may run
	// while its disk has guest I/O (default 0.1; 1 = flat out always).
	// Idle disks copy out at full speed.
	CopyOutShare float64
	// FreezeTimeout bounds how long a guest's filesystems stay frozen
	// for a machine snapshot (default 10s, as Windows VSS allows): past
	// it cairnd thaws them and the snapshot is crash-consistent (or, when
	// filesystem consistency was required, fails).
	FreezeTimeout Duration
	// ImageQuota is the most images the host keeps (default 64).
	ImageQuota int
	// TaskHistory is how long finished tasks are kept (default 7 days).
	TaskHistory Duration
	// AgentSocketDirs are the directories (comma-separated) whose Unix
	// sockets a machine's agent_socket may name; "" means
	// $RUNTIME_DIRECTORY/agents, else DATA_DIR/agents.
	AgentSocketDirs string
	// PolicyQuota is the most automatic snapshot policies (default 100).
	PolicyQuota int
	// PolicyGrace: after downtime (or a step of the host's clock) a
	// policy's latest missed time point is still taken when it is less
	// than this old (default 30m); older ones are not back-filled.
	PolicyGrace Duration
	// EventHistory is how long the events log keeps an event (default 30
	// days).
	EventHistory Duration
	// CapacityInterval is how often capacity is sampled (default 1h);
	// CapacityHistory how long samples are kept (default 90 days).
	CapacityInterval Duration
	CapacityHistory  Duration
	// MetricsListen is an optional TCP address (host:port) that serves
	// Prometheus metrics at /metrics (they are also on the API socket).
	MetricsListen string

	// Clock is the time policies, retention, events and capacity samples
	// go by; nil means the host's (tests pass a fake one).
	Clock clock.Clock
	// MetricsListener, when set, is used instead of listening on
	// MetricsListen.
	MetricsListener net.Listener
	// LoopDone, when set, is called each time the policy scheduler
	// ("policies") or the capacity sampler ("capacity") has done the work
	// due at now and is about to sleep (tests drive Clock by it).
	LoopDone func(loop string, now time.Time)

	// TransferLease is how long an export or import waits for its client's
	// next progress report before it fails and is cleaned up; 0 means
	// DefaultTransferLease (tests shorten it).
	TransferLease time.Duration

	// Logger receives the daemon's logs; nil means slog.Default().
	Logger *slog.Logger
	// APIListener, when set, is used instead of listening on APISocket
	// (socket activation, tests). The daemon closes it on shutdown.
	APIListener net.Listener
	// NBDListener, when set, is used instead of listening on NBDSocket.
	NBDListener net.Listener
	// NBDTCPListener, when set, is used instead of listening on NBDListen.
	NBDTCPListener net.Listener
	// Notify, when set, is told the daemon's state in sd_notify(3) words:
	// "READY=1" when Run starts serving every listener (the store and every
	// disk are open by then) and "STOPPING=1" when shutdown begins. It is
	// called from Run's or Shutdown's goroutine and must not block long.
	Notify func(state string)
}

// Duration is a time.Duration written as "5s" in the config file.
type Duration time.Duration

// UnmarshalText parses a Go duration ("5s", "1m30s").
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// String writes the duration as the config file does ("5s").
func (d Duration) String() string { return time.Duration(d).String() }

// DefaultNBDMaxConnections bounds NBD connections unless configured.
const DefaultNBDMaxConnections = 1024

// DefaultSnapshotQuota is the most snapshots per chain unless configured.
const DefaultSnapshotQuota = 64

// minStoreReserve is the smallest store_reserve: with it Badger's files
// shrink to fit (a 16 MiB value log; store.logSizes); smaller would not
// hold a start on a full filesystem and the deletes after it.
const minStoreReserve = 96 << 20

// storeReserve parses StoreReserve (0: the store's default).
func (c Config) storeReserve() (uint64, error) {
	if c.StoreReserve == "" {
		return 0, nil
	}
	n, err := api.ParseSize(c.StoreReserve)
	if err != nil {
		return 0, err
	}
	if n != 0 && n < minStoreReserve {
		return 0, fmt.Errorf("%s: must be at least 96M (a start on a full filesystem and the deletes after it need that much)", c.StoreReserve)
	}
	return uint64(n), nil
}

// fuseOn reports whether the FUSE view is wanted.
func (c Config) fuseOn() bool { return c.FUSE != nil && *c.FUSE }

// DefaultTaskHistory is how long finished tasks are kept unless configured.
const DefaultTaskHistory = 7 * 24 * time.Hour

// DefaultFreezeTimeout bounds a guest's freeze unless configured.
const DefaultFreezeTimeout = 10 * time.Second

// agentSocketDirs lists AgentSocketDirs (defaults filled).
func (c Config) agentSocketDirs() []string {
	var out []string
	for _, d := range strings.Split(c.AgentSocketDirs, ",") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, filepath.Clean(d))
		}
	}
	return out
}

// DefaultShutdownTimeout bounds a graceful shutdown unless configured.
const DefaultShutdownTimeout = 5 * time.Second

// DefaultDataDir is the data directory when neither the flag nor the
// config file names one: $STATE_DIRECTORY (systemd's StateDirectory=) or
// /var/lib/cairn.
func DefaultDataDir() string {
	if d := firstPath(os.Getenv("STATE_DIRECTORY")); d != "" {
		return d
	}
	return "/var/lib/cairn"
}

// firstPath returns the first of systemd's colon-separated directories.
func firstPath(list string) string {
	first, _, _ := strings.Cut(list, ":")
	return first
}

// withDefaults fills the empty fields and makes paths absolute.
func (c Config) withDefaults() (Config, error) {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if c.SnapshotQuota == 0 {
		c.SnapshotQuota = DefaultSnapshotQuota
	}
	var err error
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return c, fmt.Errorf("--data-dir: %w", err)
	}
	sockDir := c.DataDir
	if d := firstPath(os.Getenv("RUNTIME_DIRECTORY")); d != "" {
		sockDir = d
	}
	if c.APISocket == "" {
		c.APISocket = filepath.Join(sockDir, "cairn.sock")
	}
	if c.NBDSocket == "" {
		c.NBDSocket = filepath.Join(sockDir, "nbd.sock")
	}
	if c.FUSEDir == "" {
		c.FUSEDir = filepath.Join(sockDir, "fuse")
	}
	if c.AgentSocketDirs == "" {
		c.AgentSocketDirs = filepath.Join(sockDir, "agents")
	}
	for _, p := range []*string{&c.APISocket, &c.NBDSocket, &c.FUSEDir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return c, err
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = Duration(DefaultShutdownTimeout)
	}
	if c.FreezeTimeout == 0 {
		c.FreezeTimeout = Duration(DefaultFreezeTimeout)
	}
	if c.ImageQuota == 0 {
		c.ImageQuota = DefaultImageQuota
	}
	if c.TaskHistory == 0 {
		c.TaskHistory = Duration(DefaultTaskHistory)
	}
	if c.NBDMaxConnections == 0 {
		c.NBDMaxConnections = DefaultNBDMaxConnections
	}
	if c.NBDTCPRole == "" {
		c.NBDTCPRole = "operator"
	}
	if c.Operator == nil {
		if _, err := user.LookupGroup("cairn"); err == nil {
			c.Operator = []string{"group:cairn"}
		}
	}
	c = c.policyDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Validate checks every setting and names the flag and config key of
// each one that is wrong (SettingError).
func (c Config) Validate() error {
	c, err := c.withDefaults()
	if err != nil {
		return err
	}
	errs := checkSettings(c)
	if c.APIListener == nil && c.NBDListener == nil && c.APISocket == c.NBDSocket {
		errs = append(errs, fmt.Errorf("--api-socket and --nbd-socket (api_socket and nbd_socket in the config file) are both %s: they must differ", c.APISocket))
	}
	return errors.Join(errs...)
}

// ParseLogLevel parses debug, info, warn or error.
func ParseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug":
		l = slog.LevelDebug
	case "info", "":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return 0, errors.New("must be debug, info, warn or error")
	}
	return l, nil
}

// NewLogger builds the logger cmd/cairnd uses from LogLevel and LogFormat
// (already validated).
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	level, _ := ParseLogLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
