package daemon

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/access"
)

// Setting is one of cairnd's settings, declared once in Settings: from it
// come the flag (AddFlags), the config-file key (LoadConfigFile), the
// check and the names in its error (Validate), and the row in
// docs/config.md (a test compares them).
type Setting struct {
	Flag    string // the command-line flag, without dashes
	Arg     string // what the flag's value is, as help and docs/config.md write it; "" for a bool
	Key     string // the config file's key
	Default string // as documented; "" for none (the feature is off)
	Doc     string // one line

	field func(c *Config) any  // a pointer to the setting's field of c
	check func(c Config) error // why the value (defaults filled) is refused; nil accepts any
}

// Settings are cairnd's settings, in the order docs/config.md and
// cairnd --help list them.
var Settings = []Setting{
	{Flag: "data-dir", Arg: "PATH", Key: "data_dir", Default: "$STATE_DIRECTORY, else /var/lib/cairn",
		Doc:   "data directory: the lock, the store and the live images of new disks",
		field: func(c *Config) any { return &c.DataDir }},
	{Flag: "api-socket", Arg: "PATH", Key: "api_socket", Default: "$RUNTIME_DIRECTORY/cairn.sock, else DATA_DIR/cairn.sock",
		Doc:   "the control API's Unix socket",
		field: func(c *Config) any { return &c.APISocket },
		check: func(c Config) error { return socketPathFits(c.APISocket, c.APIListener) }},
	{Flag: "nbd-socket", Arg: "PATH", Key: "nbd_socket", Default: "$RUNTIME_DIRECTORY/nbd.sock, else DATA_DIR/nbd.sock",
		Doc:   "the NBD Unix socket",
		field: func(c *Config) any { return &c.NBDSocket },
		check: func(c Config) error { return socketPathFits(c.NBDSocket, c.NBDListener) }},
	{Flag: "nbd-listen", Arg: "ADDR", Key: "nbd_listen",
		Doc:   "also serve NBD on this TCP host:port; off loopback it needs tls_cert and every client must use TLS",
		field: func(c *Config) any { return &c.NBDListen },
		check: func(c Config) error {
			if c.NBDListen == "" || c.NBDTCPListener != nil {
				return nil
			}
			return checkTCPListen(c.NBDListen, c.TLSCert != "")
		}},
	{Flag: "nbd-max-connections", Arg: "N", Key: "nbd_max_connections", Default: strconv.Itoa(DefaultNBDMaxConnections),
		Doc:   "most NBD connections at once, over every listener; more are closed at once",
		field: func(c *Config) any { return &c.NBDMaxConnections },
		check: func(c Config) error {
			if c.NBDMaxConnections < 0 {
				return errors.New("must not be negative")
			}
			return nil
		}},
	{Flag: "nbd-idle-timeout", Arg: "DURATION", Key: "nbd_idle_timeout",
		Doc:   "close an NBD connection with nothing in flight that sent no request for this long (qemu without reconnect-delay does not reconnect)",
		field: func(c *Config) any { return &c.NBDIdleTimeout },
		check: func(c Config) error {
			if c.NBDIdleTimeout < 0 {
				return errors.New("must not be negative")
			}
			return nil
		}},
	{Flag: "tls-cert", Arg: "PATH", Key: "tls_cert",
		Doc:   "the NBD server's X.509 certificate (PEM) for NBD_OPT_STARTTLS; reread on SIGHUP and when it changes",
		field: func(c *Config) any { return &c.TLSCert },
		check: func(c Config) error {
			if (c.TLSCert == "") != (c.TLSKey == "") {
				return errors.New("tls_cert and tls_key go together: give both or neither")
			}
			return nil
		}},
	{Flag: "tls-key", Arg: "PATH", Key: "tls_key",
		Doc:   "the private key (PEM) of tls_cert",
		field: func(c *Config) any { return &c.TLSKey }},
	{Flag: "tls-client-ca", Arg: "PATH", Key: "tls_client_ca",
		Doc:   "CA certificates (PEM): TLS clients must present a certificate signed by one (mutual TLS)",
		field: func(c *Config) any { return &c.TLSClientCA },
		check: func(c Config) error {
			if c.TLSClientCA != "" && c.TLSCert == "" {
				return errors.New("needs tls_cert and tls_key: mutual TLS is TLS first")
			}
			return nil
		}},
	{Flag: "tls-required", Arg: "LIST", Key: "tls_required",
		Doc:   "exports (names or patterns such as vm-* or *) a TCP client may open only over TLS",
		field: func(c *Config) any { return &c.TLSRequired },
		check: func(c Config) error {
			if len(c.TLSRequired) > 0 && c.TLSCert == "" {
				return errors.New("needs tls_cert and tls_key")
			}
			return checkPatterns(c.TLSRequired)
		}},
	{Flag: "admin", Arg: "LIST", Key: "admin",
		Doc:   "who has the admin role (uid:N, user:NAME, gid:N, group:NAME, cert:CN); root and cairnd's own user always do",
		field: func(c *Config) any { return &c.Admin },
		check: func(c Config) error { _, err := access.New(access.Config{Admin: c.Admin}); return err }},
	{Flag: "operator", Arg: "LIST", Key: "operator", Default: "group:cairn, if that group exists",
		Doc:   "who has the operator role: snapshots, rollback, verify, disk create and grow, read-write NBD",
		field: func(c *Config) any { return &c.Operator },
		check: func(c Config) error { _, err := access.New(access.Config{Operator: c.Operator}); return err }},
	{Flag: "reader", Arg: "LIST", Key: "reader",
		Doc:   "who has the reader role: list, show, changed blocks, read-only NBD",
		field: func(c *Config) any { return &c.Reader },
		check: func(c Config) error { _, err := access.New(access.Config{Reader: c.Reader}); return err }},
	{Flag: "grant", Arg: "LIST", Key: "grant",
		Doc:   "per-disk grants, each \"PRINCIPAL ROLE DISKS\" such as \"group:tenant-a operator a-*\"",
		field: func(c *Config) any { return &c.Grant },
		check: func(c Config) error { _, err := access.New(access.Config{Grant: c.Grant}); return err }},
	{Flag: "nbd-tcp-role", Arg: "ROLE", Key: "nbd_tcp_role", Default: "operator",
		Doc:   "role of an NBD client over TCP whose certificate (if any) no role or grant names: admin, operator, reader or none",
		field: func(c *Config) any { return &c.NBDTCPRole },
		check: func(c Config) error { _, err := access.ParseRole(c.NBDTCPRole); return err }},
	{Flag: "adopt-allow", Arg: "LIST", Key: "adopt_allow",
		Doc:   "directories and block devices disks may be adopted from (symlinks resolved); none: adoption is off",
		field: func(c *Config) any { return &c.AdoptAllow },
		check: func(c Config) error { return checkAdoptAllow(c.AdoptAllow) }},
	{Flag: "log-level", Arg: "LEVEL", Key: "log_level", Default: "info",
		Doc:   "debug, info, warn or error",
		field: func(c *Config) any { return &c.LogLevel },
		check: func(c Config) error { _, err := ParseLogLevel(c.LogLevel); return err }},
	{Flag: "log-format", Arg: "FORMAT", Key: "log_format", Default: "text",
		Doc:   "text or json",
		field: func(c *Config) any { return &c.LogFormat },
		check: func(c Config) error {
			if c.LogFormat != "text" && c.LogFormat != "json" {
				return errors.New("must be text or json")
			}
			return nil
		}},
	{Flag: "shutdown-timeout", Arg: "DURATION", Key: "shutdown_timeout", Default: DefaultShutdownTimeout.String(),
		Doc:   "bound on a graceful shutdown; after it NBD connections are cut",
		field: func(c *Config) any { return &c.ShutdownTimeout },
		check: func(c Config) error {
			if c.ShutdownTimeout < 0 {
				return errors.New("must not be negative")
			}
			return nil
		}},
	{Flag: "copy-out-share", Arg: "SHARE", Key: "copy_out_share", Default: strconv.FormatFloat(cow.DefaultCopyOutShare, 'g', -1, 64),
		Doc:   "share of time, 0.01 to 1, a snapshot's copy-out may run while its disk has guest I/O",
		field: func(c *Config) any { return &c.CopyOutShare },
		check: func(c Config) error {
			switch share := c.CopyOutShare; {
			case share < 0 || share > 1:
				return errors.New("must be from 0.01 to 1 (0 for the default)")
			case share > 0 && share < 0.01:
				return errors.New("must be at least 0.01, or copy-out would never finish on a busy disk")
			}
			return nil
		}},
	{Flag: "snapshot-quota", Arg: "N", Key: "snapshot_quota", Default: strconv.Itoa(DefaultSnapshotQuota),
		Doc:   "most snapshots one disk's chain may hold, 1 to 65536",
		field: func(c *Config) any { return &c.SnapshotQuota },
		check: func(c Config) error {
			if c.SnapshotQuota < 1 || c.SnapshotQuota > 65536 {
				return errors.New("must be from 1 to 65536")
			}
			return nil
		}},
	{Flag: "store-reserve", Arg: "SIZE", Key: "store_reserve", Default: "384M",
		Doc:   "the store's reserve on its filesystem (at least 96M): space only its upkeep uses; snapshots stop while less is free besides",
		field: func(c *Config) any { return &c.StoreReserve },
		check: func(c Config) error { _, err := c.storeReserve(); return err }},
	{Flag: "image-quota", Arg: "N", Key: "image_quota", Default: strconv.Itoa(DefaultImageQuota),
		Doc:   "most whole-machine images the host keeps, 1 to 65536",
		field: func(c *Config) any { return &c.ImageQuota },
		check: func(c Config) error {
			if c.ImageQuota < 1 || c.ImageQuota > 65536 {
				return errors.New("must be from 1 to 65536")
			}
			return nil
		}},
	{Flag: "task-history", Arg: "DURATION", Key: "task_history", Default: "168h0m0s",
		Doc:   "how long finished tasks are kept (cairn task list)",
		field: func(c *Config) any { return &c.TaskHistory },
		check: func(c Config) error {
			if c.TaskHistory < Duration(time.Minute) {
				return errors.New("must be at least 1m")
			}
			return nil
		}},
	{Flag: "freeze-timeout", Arg: "DURATION", Key: "freeze_timeout", Default: DefaultFreezeTimeout.String(),
		Doc:   "longest a guest's filesystems stay frozen for a machine snapshot; past it they are thawed",
		field: func(c *Config) any { return &c.FreezeTimeout },
		check: func(c Config) error {
			if c.FreezeTimeout < Duration(100*time.Millisecond) || c.FreezeTimeout > Duration(10*time.Minute) {
				return errors.New("must be from 100ms to 10m")
			}
			return nil
		}},
	{Flag: "agent-socket-dirs", Arg: "DIRS", Key: "agent_socket_dirs", Default: "$RUNTIME_DIRECTORY/agents, else DATA_DIR/agents",
		Doc:   "comma-separated directories whose sockets a machine's guest agent socket may be",
		field: func(c *Config) any { return &c.AgentSocketDirs },
		check: func(c Config) error {
			for _, d := range c.agentSocketDirs() {
				if !filepath.IsAbs(d) {
					return fmt.Errorf("%q is not an absolute path", d)
				}
			}
			return nil
		}},
	{Flag: "policy-quota", Arg: "N", Key: "policy_quota", Default: strconv.Itoa(DefaultPolicyQuota),
		Doc:   "most automatic snapshot policies, 1 to 10000",
		field: func(c *Config) any { return &c.PolicyQuota },
		check: func(c Config) error {
			if c.PolicyQuota < 1 || c.PolicyQuota > 10000 {
				return errors.New("must be from 1 to 10000")
			}
			return nil
		}},
	{Flag: "policy-grace", Arg: "DURATION", Key: "policy_grace", Default: DefaultPolicyGrace.String(),
		Doc:   "after downtime, a policy's latest missed time point is still taken if less than this old",
		field: func(c *Config) any { return &c.PolicyGrace },
		check: func(c Config) error {
			if c.PolicyGrace < 0 || c.PolicyGrace > Duration(24*time.Hour) {
				return errors.New("must be from 0s to 24h")
			}
			return nil
		}},
	{Flag: "event-history", Arg: "DURATION", Key: "event_history", Default: DefaultEventHistory.String(),
		Doc:   "how long the events log keeps an event (cairn events)",
		field: func(c *Config) any { return &c.EventHistory },
		check: func(c Config) error {
			if c.EventHistory < Duration(time.Hour) {
				return errors.New("must be at least 1h")
			}
			return nil
		}},
	{Flag: "capacity-interval", Arg: "DURATION", Key: "capacity_interval", Default: DefaultCapacityInterval.String(),
		Doc:   "how often capacity is sampled for its history (cairn snapshot capacity --history)",
		field: func(c *Config) any { return &c.CapacityInterval },
		check: func(c Config) error {
			if c.CapacityInterval < Duration(time.Minute) || c.CapacityInterval > Duration(24*time.Hour) {
				return errors.New("must be from 1m to 24h")
			}
			return nil
		}},
	{Flag: "capacity-history", Arg: "DURATION", Key: "capacity_history", Default: DefaultCapacityHistory.String(),
		Doc:   "how long capacity samples are kept",
		field: func(c *Config) any { return &c.CapacityHistory },
		check: func(c Config) error {
			if c.CapacityHistory < c.CapacityInterval {
				return errors.New("must be at least capacity_interval")
			}
			return nil
		}},
	{Flag: "metrics-listen", Arg: "ADDR", Key: "metrics_listen",
		Doc:   "also serve Prometheus metrics at http://ADDR/metrics (host:port); they are always on the API socket",
		field: func(c *Config) any { return &c.MetricsListen },
		check: func(c Config) error {
			if c.MetricsListen == "" || c.MetricsListener != nil {
				return nil
			}
			_, port, err := net.SplitHostPort(c.MetricsListen)
			if err != nil {
				return fmt.Errorf("want host:port, such as 127.0.0.1:9470: %v", err)
			}
			if _, err := net.LookupPort("tcp", port); err != nil {
				return fmt.Errorf("bad port %q", port)
			}
			return nil
		}},
	{Flag: "fuse", Key: "fuse", Default: "true",
		Doc:   "mount disks and snapshots as files on the FUSE directory (docs/fuse.md); =false runs without",
		field: func(c *Config) any { return &c.FUSE }},
	{Flag: "fuse-dir", Arg: "PATH", Key: "fuse_dir", Default: "$RUNTIME_DIRECTORY/fuse, else DATA_DIR/fuse",
		Doc:   "where the FUSE view is mounted",
		field: func(c *Config) any { return &c.FUSEDir }},
}

// removedKeys are config-file keys of settings that no longer exist, with
// why. A file that still has one is read with a warning rather than
// refused, so that an upgrade does not stop cairnd.
var removedKeys = map[string]string{
	"journal_max":       "redirect-on-write is now the only write strategy, so there is no copy-before-write journal to bound",
	"redirect_on_write": "redirect-on-write is now the only write strategy",
}

func settingByKey(key string) (Setting, bool) {
	i := slices.IndexFunc(Settings, func(s Setting) bool { return s.Key == key })
	if i < 0 {
		return Setting{}, false
	}
	return Settings[i], true
}

// Usage is the setting's line in cairnd --help.
func (s Setting) Usage() string {
	def := ""
	if s.Default != "" {
		def = "default " + s.Default + "; "
	}
	return fmt.Sprintf("%s (%s%s in the config file)", s.Doc, def, s.Key)
}

// SettingError is a setting's value that Validate refuses. It names the
// setting's flag and key; a program that knows where the value came from
// says so (FromFlag, FromFile), and the error names only that.
type SettingError struct {
	Flag, Key string
	Value     string // as Go writes it (quoted when text)
	Err       error  // why it is refused
	FromFlag  bool   // the value was given on the command line
	FromFile  string // else: the config file that set it
}

func (e *SettingError) Error() string {
	switch {
	case e.FromFlag:
		return fmt.Sprintf("--%s %s: %v", e.Flag, e.Value, e.Err)
	case e.FromFile != "":
		return fmt.Sprintf("config file %s: %s = %s: %v", e.FromFile, e.Key, e.Value, e.Err)
	}
	return fmt.Sprintf("--%s %s (%s in the config file): %v", e.Flag, e.Value, e.Key, e.Err)
}

func (e *SettingError) Unwrap() error { return e.Err }

// checkSettings runs every setting's check on c (defaults filled).
func checkSettings(c Config) []error {
	var errs []error
	for _, s := range Settings {
		if s.check == nil {
			continue
		}
		if err := s.check(c); err != nil {
			errs = append(errs, &SettingError{Flag: s.Flag, Key: s.Key, Value: fieldValue{s.field(&c)}.quoted(), Err: err})
		}
	}
	return errs
}

// Flags are the settings' flags on one flag.FlagSet.
type Flags struct {
	fs    *flag.FlagSet
	given Config // what the flags given say
}

// AddFlags defines a flag on fs for every setting. After fs.Parse, Over
// lays the flags given over a config file's values.
func AddFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	for _, s := range Settings {
		fs.Var(fieldValue{s.field(&f.given)}, s.Flag, s.Usage())
	}
	return f
}

// Over returns cfg with the value of every setting whose flag was given
// in place of cfg's: flag over config file over default.
func (f *Flags) Over(cfg Config) Config {
	for _, s := range Settings {
		if f.Given(s.Flag) {
			// Both are pointers to the same field type.
			reflect.ValueOf(s.field(&cfg)).Elem().Set(reflect.ValueOf(s.field(&f.given)).Elem())
		}
	}
	return cfg
}

// Given reports whether the flag was on the command line.
func (f *Flags) Given(name string) bool {
	given := false
	f.fs.Visit(func(fl *flag.Flag) { given = given || fl.Name == name })
	return given
}

// fieldValue is a flag.Value over one of Config's fields (a pointer).
type fieldValue struct{ p any }

func (v fieldValue) Set(s string) error {
	switch p := v.p.(type) {
	case *string:
		*p = s
	case *int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return errors.New("not a whole number")
		}
		*p = n
	case *float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number")
		}
		*p = f
	case *Duration:
		return p.UnmarshalText([]byte(s))
	case *[]string:
		// A list: comma-separated, and the flag may be given again to add.
		for _, item := range strings.Split(s, ",") {
			if item = strings.TrimSpace(item); item != "" {
				*p = append(*p, item)
			}
		}
	case **bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("not true or false")
		}
		*p = &b
	default:
		panic(fmt.Sprintf("daemon: setting of type %T has no flag", v.p))
	}
	return nil
}

// String is the value, "" when it is its type's zero (flag's help then
// prints no default of its own: Usage has the documented one).
func (v fieldValue) String() string {
	if v.p == nil || reflect.ValueOf(v.p).Elem().IsZero() {
		return ""
	}
	return v.text()
}

// text is the value as Go writes it.
func (v fieldValue) text() string {
	if p, ok := v.p.(**bool); ok {
		if *p == nil {
			return "unset"
		}
		return strconv.FormatBool(**p)
	}
	if p, ok := v.p.(*[]string); ok {
		return strings.Join(*p, ",")
	}
	return fmt.Sprint(reflect.ValueOf(v.p).Elem().Interface())
}

// quoted is the value as an error shows it: text quoted.
func (v fieldValue) quoted() string {
	switch p := v.p.(type) {
	case *string:
		return strconv.Quote(*p)
	case *[]string:
		return fmt.Sprintf("%q", *p)
	}
	return v.text()
}

// IsBoolFlag lets a bool setting's flag stand alone (--fuse).
func (v fieldValue) IsBoolFlag() bool {
	_, ok := v.p.(**bool)
	return ok
}

// ConfigFile is what a config file said.
type ConfigFile struct {
	Config   Config
	Path     string
	Keys     []string // the settings it set, in its order
	Warnings []string // about keys it has that are ignored
}

// Set reports whether the file set the setting with this key.
func (f ConfigFile) Set(key string) bool { return slices.Contains(f.Keys, key) }

// LoadConfigFile reads a TOML config file. A key that is no setting is an
// error, except the keys of removed settings, which are ignored with a
// warning.
func LoadConfigFile(path string) (ConfigFile, error) {
	f := ConfigFile{Path: path}
	var raw map[string]toml.Primitive
	md, err := toml.DecodeFile(path, &raw)
	if err != nil {
		return f, fmt.Errorf("config file %s: %w", path, err)
	}
	var unknown []string
	for _, k := range md.Keys() {
		if len(k) > 1 {
			continue // inside a table: the table itself is unknown
		}
		key := k[0]
		s, ok := settingByKey(key)
		switch {
		case ok:
			if err := md.PrimitiveDecode(raw[key], s.field(&f.Config)); err != nil {
				return f, fmt.Errorf("config file %s: %s: %w", path, key, err)
			}
			f.Keys = append(f.Keys, key)
		case removedKeys[key] != "":
			f.Warnings = append(f.Warnings, fmt.Sprintf("config file %s: %s was removed and is ignored: %s", path, key, removedKeys[key]))
		default:
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 {
		return f, fmt.Errorf("config file %s: unknown key(s) %s (see docs/config.md)", path, strings.Join(unknown, ", "))
	}
	return f, nil
}

// maxSocketPath is the room in sockaddr_un.sun_path (108 bytes less the NUL).
const maxSocketPath = 107

// socketPathFits checks a socket path that cairnd will listen on (not
// when it was given a listener).
func socketPathFits(path string, given net.Listener) error {
	if given == nil && len(path) > maxSocketPath {
		return fmt.Errorf("a Unix socket path is limited to %d bytes; choose a shorter path", maxSocketPath)
	}
	return nil
}

// checkTCPListen accepts host:port addresses. NBD over TCP carries disk
// contents, so an address that is not loopback (127.0.0.0/8, ::1 or
// "localhost") needs TLS, which that listener then requires of every client.
func checkTCPListen(addr string, tls bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, such as 127.0.0.1:10809: %v", err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("bad port %q", port)
	}
	if tls || isLoopback(host) {
		return nil
	}
	return errors.New("an address that is not loopback (127.0.0.1, [::1] or localhost) carries disk contents over the network: " +
		"set --tls-cert and --tls-key (tls_cert, tls_key in the config file; every client of that listener must then use TLS), or listen on loopback")
}

// isLoopbackAddr reports whether a listener's address is loopback.
func isLoopbackAddr(a net.Addr) bool {
	host, _, err := net.SplitHostPort(a.String())
	return err == nil && isLoopback(host)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// checkPatterns checks export-name patterns (path.Match syntax).
func checkPatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("%q is not a pattern (use names, * ? and [...])", p)
		}
	}
	return nil
}

// checkAdoptAllow checks the adoption allow-list: absolute paths.
func checkAdoptAllow(list []string) error {
	for _, p := range list {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		if filepath.Clean(p) == "/" {
			return errors.New(`"/" would allow every file cairnd can open; name the directories that hold disk images`)
		}
	}
	return nil
}
