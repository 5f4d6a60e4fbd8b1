package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/systemd"
)

// This file is cairnd's life as a systemd service (systemd/cairnd.service):
// the sockets systemd passes in, READY/STATUS/STOPPING, the watchdog, the
// stop-timeout extension while draining, and logs to the journal. Without
// systemd every part of it is inert and cairnd binds its own sockets.

// Cadence of the service's background work.
const (
	statusEvery     = 5 * time.Second  // STATUS= refresh (sent only when changed)
	extendEvery     = 5 * time.Second  // EXTEND_TIMEOUT_USEC= while draining
	extendBy        = 15 * time.Second // each extension, from the time it is sent
	drainAllowance  = 30 * time.Second // beyond shutdown_timeout: flushing, closing the store
	nbdProbeTimeout = 5 * time.Second  // bound on one self-connection to the NBD socket
)

// newLogger is the logger of cairnd: the journal (with priorities and
// fields) when stderr is journald's stream, else Config.NewLogger's.
func newLogger(cfg daemon.Config, stderr io.Writer) *slog.Logger {
	f, ok := stderr.(*os.File)
	if !ok || (cfg.LogFormat != "" && cfg.LogFormat != "text") {
		return cfg.NewLogger(stderr)
	}
	level, _ := daemon.ParseLogLevel(cfg.LogLevel) // validated by parseConfig
	return slog.New(systemd.NewLogHandler(f, &slog.HandlerOptions{Level: level}))
}

// service connects one Daemon to the service manager.
type service struct {
	notifier        *systemd.Notifier
	log             *slog.Logger
	shutdownTimeout time.Duration

	mu sync.Mutex
	d  *daemon.Daemon // set by start; guarded by mu (notify may run before)

	ctx          context.Context // ends when cairnd stops; owns every goroutine below
	cancel       context.CancelFunc
	stopWatchdog context.CancelFunc // at STOPPING=1: a draining daemon is not wedged
	draining     sync.Once
	wg           sync.WaitGroup // the goroutines started by start and notify
}

// setupService takes the sockets systemd passed (named "api" and "nbd" by
// the socket units' FileDescriptorName=) into cfg and routes the daemon's
// notifications to systemd. Call it before daemon.New.
func setupService(cfg *daemon.Config, logger *slog.Logger) (*service, error) {
	listeners, err := systemd.Listeners("api", "nbd")
	if err != nil {
		return nil, err
	}
	if l := listeners["api"]; l != nil {
		cfg.APIListener = l
	}
	if l := listeners["nbd"]; l != nil {
		cfg.NBDListener = l
	}
	if len(listeners) > 0 {
		logger.Info("using sockets passed by systemd", "count", len(listeners))
	}
	n, err := systemd.NewNotifier()
	if err != nil {
		return nil, err
	}
	s := &service{notifier: n, log: logger, shutdownTimeout: time.Duration(cfg.ShutdownTimeout)}
	if s.shutdownTimeout == 0 {
		s.shutdownTimeout = daemon.DefaultShutdownTimeout
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if n.Enabled() {
		cfg.Notify = s.notify
	}
	return s, nil
}

// start begins the status updates and the watchdog for d. The returned
// function stops them; call it when d.Run has returned.
func (s *service) start(d *daemon.Daemon) (stop func()) {
	s.mu.Lock()
	s.d = d
	s.mu.Unlock()
	if s.notifier.Enabled() {
		s.goRun(s.updateStatus)
		watchdogCtx, stopWatchdog := context.WithCancel(s.ctx)
		s.mu.Lock()
		s.stopWatchdog = stopWatchdog
		s.mu.Unlock()
		s.goRun(func() { s.notifier.RunWatchdog(watchdogCtx, s.healthy, s.log) })
	}
	return func() {
		s.cancel()
		s.wg.Wait()
	}
}

func (s *service) goRun(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// notify passes the daemon's sd_notify states on. READY=1 carries the
// first status line; STOPPING=1 also starts extending the stop timeout.
func (s *service) notify(state string) {
	var err error
	switch state {
	case "READY=1":
		err = s.notifier.Ready(s.statusText())
	case "STOPPING=1":
		err = s.notifier.Notify(state, "STATUS=stopping: draining NBD requests and flushing disks")
		s.draining.Do(func() {
			s.mu.Lock()
			if s.stopWatchdog != nil {
				s.stopWatchdog()
			}
			s.mu.Unlock()
			s.goRun(s.extendWhileDraining)
		})
	default:
		err = s.notifier.Notify(state)
	}
	if err != nil {
		s.log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}

// statusText is the line `systemctl status cairnd` shows.
func (s *service) statusText() string {
	s.mu.Lock()
	d := s.d
	s.mu.Unlock()
	if d == nil {
		return "starting"
	}
	disks := d.ListDisks()
	clients, broken := 0, 0
	for _, k := range disks {
		clients += len(k.Clients)
		if k.State != api.DiskReady {
			broken++
		}
	}
	text := fmt.Sprintf("serving %d %s, %d NBD %s", len(disks), plural(len(disks), "disk"), clients, plural(clients, "client"))
	if copying := d.SnapshotsCopying(); copying > 0 {
		text += fmt.Sprintf(", %d %s copying", copying, plural(copying, "snapshot"))
	}
	if broken > 0 {
		text += fmt.Sprintf(", %d %s in error", broken, plural(broken, "disk"))
	}
	return text
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// updateStatus sends the status line whenever it changes.
func (s *service) updateStatus() {
	tick := time.NewTicker(statusEvery)
	defer tick.Stop()
	last := ""
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		if text := s.statusText(); text != last {
			if err := s.notifier.Status(text); err != nil {
				s.log.Warn("cannot send status to systemd", "err", err)
			}
			last = text
		}
	}
}

// extendWhileDraining keeps systemd's stop timeout ahead of a drain that
// is still within its budget (shutdown_timeout plus time to flush and
// close). Past the budget it stops asking, so a hung shutdown still ends
// at TimeoutStopSec=.
func (s *service) extendWhileDraining() {
	deadline := time.Now().Add(s.shutdownTimeout + drainAllowance)
	tick := time.NewTicker(extendEvery)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if err := s.notifier.ExtendTimeout(extendBy); err != nil {
			s.log.Warn("cannot extend systemd's stop timeout", "err", err)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// testHealthFault, when set (only by a cairn_testfaults build), runs first
// in every health check so tests can wedge it.
var testHealthFault func(ctx context.Context, logger *slog.Logger)

// healthy is the watchdog's check: the daemon's own health (a store read,
// the NBD listeners serving) and a full NBD greeting on its socket, which
// proves the accept loop takes connections.
func (s *service) healthy(ctx context.Context) error {
	if testHealthFault != nil {
		testHealthFault(ctx, s.log)
	}
	s.mu.Lock()
	d := s.d
	s.mu.Unlock()
	if problems := d.Health(); len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	probeCtx, cancel := context.WithTimeout(ctx, nbdProbeTimeout)
	defer cancel()
	return probeNBD(probeCtx, d.Info().NBDSocket)
}
