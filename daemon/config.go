package daemon

import (
	"github.com/cairn-storage/cairn/daemon/api"

	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Version is cairnd's version, set at link time
// (-X github.com/cairn-storage/cairn/daemon.Version=...).
var Version = "dev"

// Config configures a Daemon. The fields with a toml tag can come from the
// config file (docs/config.md); cmd/cairnd's flags override them. The rest
// are for programs that embed the daemon (cmd/cairnd, tests).
type Config struct {
	// DataDir holds the lock, the store and the live images of new disks.
	DataDir string `toml:"data_dir"`
	// APISocket is the control API's Unix socket; "" means
	// $RUNTIME_DIRECTORY/cairn.sock when systemd sets RUNTIME_DIRECTORY,
	// else DATA_DIR/cairn.sock.
	APISocket string `toml:"api_socket"`
	// NBDSocket is the NBD Unix socket; "" means $RUNTIME_DIRECTORY/nbd.sock
	// or DATA_DIR/nbd.sock, as for APISocket.
	NBDSocket string `toml:"nbd_socket"`
	// NBDListen is an optional TCP address (host:port) for NBD. Only
	// loopback addresses are accepted until NBD over TLS exists.
	NBDListen string `toml:"nbd_listen"`
	// LogLevel is debug, info, warn or error; LogFormat text or json. Used
	// by NewLogger (cmd/cairnd); the daemon itself logs to Logger.
	LogLevel  string `toml:"log_level"`
	LogFormat string `toml:"log_format"`
	// ShutdownTimeout bounds a graceful shutdown (default 5s): after it NBD
	// connections are cut.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// FUSE mounts disks and snapshots as files on FUSEDir (docs/fuse.md).
	// Nil is off for an embedded daemon; cairnd sets it (default on).
	FUSE *bool `toml:"fuse"`
	// FUSEDir is where; "" means $RUNTIME_DIRECTORY/fuse, else DATA_DIR/fuse.
	FUSEDir string `toml:"fuse_dir"`
	// SnapshotQuota is the most snapshots one disk's chain may hold
	// (default 64, as public clouds allow). A manual snapshot beyond it is
	// refused with 409 quota_exceeded.
	SnapshotQuota int `toml:"snapshot_quota"`
	// StoreReserve ("384M" by default, at least "96M") sizes the store's
	// reserve: a file of that size on the store's filesystem that only
	// the store's upkeep (start, stop, deletes, failure records) may use,
	// so those work on a full filesystem; and new snapshots and chunk
	// writes stop (the snapshot fails, guest writes go on) while less
	// than that is free besides.
	StoreReserve string `toml:"store_reserve"`
	// CopyOutShare is the share of time a snapshot's copy-out may run
	// while its disk has guest I/O (default 0.1; 1 = flat out always).
	// Idle disks copy out at full speed.
	CopyOutShare float64 `toml:"copy_out_share"`
	// RedirectOnWrite sends guest writes to blocks a copying snapshot
	// still needs to side files instead of over the live image
	// (docs/design.md, "Redirect-on-write"): no read of the old data and
	// no sync per first write. Nil means on; false makes such writes copy
	// the old pages to the copy-before-write journal first.
	RedirectOnWrite *bool `toml:"redirect_on_write"`
	// JournalMax bounds each disk's copy-before-write journal ("1G" by
	// default): while snapshots copy out, the old content of pages the
	// guest overwrites goes there; past the bound, writes store their
	// blocks directly, which is several times slower. The space is given
	// back when nothing copies. Larger keeps a busy guest faster during a
	// long copy-out (docs/performance.md, "Snapshots", section 2).
	JournalMax string `toml:"journal_max"`

	// Logger receives the daemon's logs; nil means slog.Default().
	Logger *slog.Logger `toml:"-"`
	// APIListener, when set, is used instead of listening on APISocket
	// (socket activation, tests). The daemon closes it on shutdown.
	APIListener net.Listener `toml:"-"`
	// NBDListener, when set, is used instead of listening on NBDSocket.
	NBDListener net.Listener `toml:"-"`
	// NBDTCPListener, when set, is used instead of listening on NBDListen.
	NBDTCPListener net.Listener `toml:"-"`
	// Notify, when set, is told the daemon's state in sd_notify(3) words:
	// "READY=1" when Run starts serving every listener (the store and every
	// disk are open by then) and "STOPPING=1" when shutdown begins. It is
	// called from Run's or Shutdown's goroutine and must not block long.
	Notify func(state string) `toml:"-"`
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

// DefaultSnapshotQuota is the most snapshots per chain unless configured.
const DefaultSnapshotQuota = 64

// minStoreReserve is the smallest store_reserve: with it Badger's files
// shrink to fit (a 16 MiB value log; store.logSizes); smaller would not
// hold a start on a full filesystem and the deletes after it.
const minStoreReserve = 96 << 20

// storeReserve parses StoreReserve (0: the store's default).
func (c Config) storeReserve() (uint64, error) {
	n, err := sizeSetting("--store-reserve / store_reserve", c.StoreReserve)
	if err == nil && n != 0 && n < minStoreReserve {
		err = fmt.Errorf("--store-reserve / store_reserve: %s: must be at least 96M (a start on a full filesystem and the deletes after it need that much)", c.StoreReserve)
	}
	return uint64(n), err
}

// sizeSetting parses the size setting named names ("" is 0).
func sizeSetting(names, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := api.ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", names, err)
	}
	return int64(n), nil
}

// minJournalMax is the smallest journal_max allowed: room for a few
// records past the journal's own header.
const minJournalMax = 16 << 20

// journalMax parses JournalMax (0: the volume's default).
func (c Config) journalMax() (int64, error) {
	n, err := sizeSetting("--journal-max / journal_max", c.JournalMax)
	if err == nil && n != 0 && n < minJournalMax {
		err = fmt.Errorf("--journal-max / journal_max: %s: must be at least 16M", c.JournalMax)
	}
	return n, err
}

// redirectOn reports whether redirect-on-write is wanted (the default).
func (c Config) redirectOn() bool { return c.RedirectOnWrite == nil || *c.RedirectOnWrite }

// fuseOn reports whether the FUSE view is wanted.
func (c Config) fuseOn() bool { return c.FUSE != nil && *c.FUSE }

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

// LoadConfigFile reads a TOML config file. Unknown keys are an error.
func LoadConfigFile(path string) (Config, error) {
	var cfg Config
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return Config{}, fmt.Errorf("config file %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		keys := make([]string, len(undec))
		for i, k := range undec {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config file %s: unknown key(s) %s (see docs/config.md)", path, strings.Join(keys, ", "))
	}
	return cfg, nil
}

// maxSocketPath is the room in sockaddr_un.sun_path (108 bytes less the NUL).
const maxSocketPath = 107

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
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Validate checks every setting and names the flag (and config key) of
// the first one that is wrong.
func (c Config) Validate() error {
	c, err := c.withDefaults()
	if err != nil {
		return err
	}
	var errs []error
	if c.CopyOutShare < 0 || c.CopyOutShare > 1 {
		errs = append(errs, fmt.Errorf("--copy-out-share / copy_out_share: %g: must be from 0.01 to 1 (0 for the default, 0.1)", c.CopyOutShare))
	} else if c.CopyOutShare > 0 && c.CopyOutShare < 0.01 {
		errs = append(errs, fmt.Errorf("--copy-out-share / copy_out_share: %g: must be at least 0.01, or copy-out would never finish on a busy disk", c.CopyOutShare))
	}
	if c.SnapshotQuota < 1 || c.SnapshotQuota > 65536 {
		errs = append(errs, fmt.Errorf("--snapshot-quota / snapshot_quota: %d: must be from 1 to 65536", c.SnapshotQuota))
	}
	if _, err := c.storeReserve(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.journalMax(); err != nil {
		errs = append(errs, err)
	}
	if c.APIListener == nil {
		errs = append(errs, checkSocketPath("--api-socket", "api_socket", c.APISocket))
	}
	if c.NBDListener == nil {
		errs = append(errs, checkSocketPath("--nbd-socket", "nbd_socket", c.NBDSocket))
	}
	if c.APIListener == nil && c.NBDListener == nil && c.APISocket == c.NBDSocket {
		errs = append(errs, fmt.Errorf("--api-socket and --nbd-socket are both %s: they must differ", c.APISocket))
	}
	if c.NBDListen != "" && c.NBDTCPListener == nil {
		errs = append(errs, CheckLoopback(c.NBDListen))
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q (log_format in the config file): must be text or json", c.LogFormat))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout %v (shutdown_timeout in the config file): must not be negative", time.Duration(c.ShutdownTimeout)))
	}
	return errors.Join(errs...)
}

func checkSocketPath(flag, key, path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("%s %s (%s in the config file): a Unix socket path is limited to %d bytes; choose a shorter path", flag, path, key, maxSocketPath)
	}
	return nil
}

// CheckLoopback accepts host:port addresses whose host is a loopback IP
// or "localhost". NBD over TCP carries disk contents in clear text and
// unauthenticated until TLS is implemented, so nothing else may listen.
func CheckLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--nbd-listen %q (nbd_listen in the config file): want host:port, such as 127.0.0.1:10809: %v", addr, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("--nbd-listen %q (nbd_listen in the config file): bad port %q", addr, port)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("--nbd-listen %q (nbd_listen in the config file): NBD over TLS is not implemented yet, so only a loopback address (127.0.0.1, [::1] or localhost) is allowed", addr)
	}
	return nil
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
		return 0, fmt.Errorf("--log-level %q (log_level in the config file): must be debug, info, warn or error", s)
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
