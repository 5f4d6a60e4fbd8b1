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
	cfg, warnings, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stderr, "cairnd", daemon.Version)
		return exitOK
	}
	if err != nil {
		for _, e := range unjoin(err) { // each refused setting on a line of its own
			fmt.Fprintf(stderr, "cairnd: %v\n", e)
		}
		return exitUsage
	}
	defer startProfile(stderr)()
	logger := newLogger(cfg, stderr) // the journal under systemd (systemd.go)
	cfg.Logger = logger
	for _, w := range warnings {
		logger.Warn(w)
	}
	svc, err := setupService(&cfg, logger) // activated sockets, sd_notify
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if testClock != nil {
		cfg.Clock = testClock()
	}
	d, err := daemon.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}
	stopService := svc.start(d) // status line and watchdog
	stopReload := reloadOnHangup(d)
	err = d.Run(ctx)
	stopReload()
	stopService()
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: %v\n", err)
		return exitError
	}
	return exitOK
}

var errVersion = errors.New("version requested")

// commandLine is cairnd's flags: one per daemon.Setting, and --config and
// --version.
type commandLine struct {
	fs       *flag.FlagSet
	settings *daemon.Flags
	config   *string
	version  *bool
}

func newCommandLine(stderr io.Writer) *commandLine {
	fs := flag.NewFlagSet("cairnd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &commandLine{
		fs:       fs,
		config:   fs.String("config", "", "TOML file with the settings' keys (docs/config.md); a flag given overrides it"),
		version:  fs.Bool("version", false, "print the version and exit"),
		settings: daemon.AddFlags(fs),
	}
	fs.Usage = c.usage
	return c
}

// usage lists --config, the settings in their order, and --version.
func (c *commandLine) usage() {
	w := c.fs.Output()
	fmt.Fprintf(w, "Usage: cairnd [flags]\n\nServes Cairn's disks over NBD and the control API. Flags:\n")
	show := func(name, arg string) {
		if arg != "" {
			arg = " " + arg
		}
		fmt.Fprintf(w, "  --%s%s\n    \t%s\n", name, arg, c.fs.Lookup(name).Usage)
	}
	show("config", "FILE")
	for _, s := range daemon.Settings {
		show(s.Flag, s.Arg)
	}
	show("version", "")
}

// parseConfig reads the config file (--config), lays the flags given over
// it and validates the result: flag over config file over default. It
// also returns what reading the file warned about, for the log.
func parseConfig(args []string, stderr io.Writer) (daemon.Config, []string, error) {
	c := newCommandLine(stderr)
	if err := c.fs.Parse(args); err != nil {
		return daemon.Config{}, nil, err
	}
	if *c.version {
		return daemon.Config{}, nil, errVersion
	}
	if c.fs.NArg() > 0 {
		return daemon.Config{}, nil, fmt.Errorf("unexpected argument %q: cairnd takes only flags (see cairnd --help)", c.fs.Arg(0))
	}
	var file daemon.ConfigFile
	if *c.config != "" {
		var err error
		if file, err = daemon.LoadConfigFile(*c.config); err != nil {
			return daemon.Config{}, nil, err
		}
	}
	cfg := c.settings.Over(file.Config)
	if cfg.FUSE == nil {
		on := true // cairnd's default (an embedded daemon's is off)
		cfg.FUSE = &on
	}
	err := cfg.Validate()
	// Name where each refused value came from: the flag, else the file.
	for _, e := range unjoin(err) {
		var se *daemon.SettingError
		if errors.As(e, &se) {
			se.FromFlag = c.settings.Given(se.Flag)
			if !se.FromFlag && file.Set(se.Key) {
				se.FromFile = file.Path
			}
		}
	}
	return cfg, file.Warnings, err
}

// unjoin returns the errors that errors.Join joined into err.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

// reloadOnHangup rereads the TLS files on SIGHUP (systemctl reload
// cairnd) until the returned func is called.
func reloadOnHangup(d *daemon.Daemon) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				d.ReloadTLS() // logs its outcome
			case <-done:
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}
