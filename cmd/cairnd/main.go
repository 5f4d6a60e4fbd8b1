// Command cairnd is Cairn's daemon: it serves the disks of one data
// directory over NBD and answers the control API (docs/config.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/cairn-storage/cairn/daemon"
)

func main() {
	raisePipeSize(os.Args[1:])
	os.Exit(run(os.Args[1:], os.Stderr))
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the daemon could not start or stopped on an error
	exitUsage = 2 // bad flags, config file or settings
)

// run is cairnd's whole life; it returns the exit code.
func run(args []string, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stderr, "cairnd", daemon.Version)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitUsage
	}
	defer startProfile(stderr)()
	logger := newLogger(cfg, stderr) // the journal under systemd (systemd.go)
	cfg.Logger = logger
	svc, err := setupService(&cfg, logger) // activated sockets, sd_notify
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d, err := daemon.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}
	stopService := svc.start(d) // status line and watchdog
	err = d.Run(ctx)
	stopService()
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}
	return exitOK
}

var errVersion = errors.New("version requested")

// parseConfig reads the config file (--config) and lets the flags that were
// given override it, then validates the result.
func parseConfig(args []string, stderr io.Writer) (daemon.Config, error) {
	fs := flag.NewFlagSet("cairnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath = fs.String("config", "", "TOML config file (docs/config.md); flags override it")
		dataDir    = fs.String("data-dir", "", "data directory (default $STATE_DIRECTORY, else /var/lib/cairn)")
		apiSocket  = fs.String("api-socket", "", "control API Unix socket (default $RUNTIME_DIRECTORY/cairn.sock, else DATA_DIR/cairn.sock)")
		nbdSocket  = fs.String("nbd-socket", "", "NBD Unix socket (default $RUNTIME_DIRECTORY/nbd.sock, else DATA_DIR/nbd.sock)")
		nbdListen  = fs.String("nbd-listen", "", "also serve NBD on this TCP host:port (loopback only until TLS exists)")
		logLevel   = fs.String("log-level", "", "debug, info, warn or error (default info)")
		logFormat  = fs.String("log-format", "", "text or json (default text)")
		timeout    = fs.Duration("shutdown-timeout", 0, "bound on a graceful shutdown (default 5s)")
		version    = fs.Bool("version", false, "print the version and exit")
		quota      = fs.Int("snapshot-quota", 0, "most snapshots per disk (default 64)")
		reserve    = fs.String("store-reserve", "", "free space the snapshot store leaves on its filesystem (default 256M)")
		share      = fs.Float64("copy-out-share", 0, "share of time snapshot copy-out may run while the disk is busy, 0.01-1 (default 0.1)")
		redirect   = fs.Bool("redirect-on-write", true, "while a snapshot copies out, redirect writes to blocks it still needs to side files; =false copies the old pages to the journal first (docs/design.md)")
		journalMax = fs.String("journal-max", "", "most space each disk's copy-before-write journal may take while snapshots copy out (default 1G)")
		fuse       = fs.Bool("fuse", true, "mount disks and snapshots as files on --fuse-dir (docs/fuse.md)")
		fuseDir    = fs.String("fuse-dir", "", "where the FUSE view is mounted (default $RUNTIME_DIRECTORY/fuse, else DATA_DIR/fuse)")
	)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: cairnd [flags]\n\nServes Cairn's disks over NBD and the control API. Flags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return daemon.Config{}, err
	}
	if *version {
		return daemon.Config{}, errVersion
	}
	if fs.NArg() > 0 {
		return daemon.Config{}, fmt.Errorf("unexpected argument %q: cairnd takes only flags (see cairnd --help)", fs.Arg(0))
	}
	var cfg daemon.Config
	if *configPath != "" {
		var err error
		if cfg, err = daemon.LoadConfigFile(*configPath); err != nil {
			return daemon.Config{}, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "data-dir":
			cfg.DataDir = *dataDir
		case "api-socket":
			cfg.APISocket = *apiSocket
		case "nbd-socket":
			cfg.NBDSocket = *nbdSocket
		case "nbd-listen":
			cfg.NBDListen = *nbdListen
		case "log-level":
			cfg.LogLevel = *logLevel
		case "log-format":
			cfg.LogFormat = *logFormat
		case "shutdown-timeout":
			cfg.ShutdownTimeout = daemon.Duration(*timeout)
		case "fuse":
			cfg.FUSE = fuse
		case "fuse-dir":
			cfg.FUSEDir = *fuseDir
		case "snapshot-quota":
			cfg.SnapshotQuota = *quota
		case "store-reserve":
			cfg.StoreReserve = *reserve
		case "copy-out-share":
			cfg.CopyOutShare = *share
		case "redirect-on-write":
			cfg.RedirectOnWrite = redirect
		case "journal-max":
			cfg.JournalMax = *journalMax
		}
	})
	if cfg.FUSE == nil {
		cfg.FUSE = fuse // on unless the config file or --fuse says otherwise
	}
	return cfg, cfg.Validate()
}
