package systemd

import (
	"context"
	"log/slog"
	"time"
)

// HealthCheck reports whether the daemon does its work: nil when it does.
// It must return promptly when ctx is done; a check that hangs counts as a
// failure (the watchdog goes unpetted, which is what a hang deserves).
type HealthCheck func(ctx context.Context) error

// RunWatchdog pets the service manager's watchdog for as long as healthy
// keeps succeeding, and stops petting the moment it fails or hangs, so that
// systemd kills and restarts a wedged cairnd within WatchdogSec=. It checks
// every half interval (as sd_watchdog_enabled(3) advises), gives each check
// a half interval to finish, and logs each failure. It returns when ctx is
// done, or at once when the watchdog is off.
func (n *Notifier) RunWatchdog(ctx context.Context, healthy HealthCheck, logger *slog.Logger) {
	if n.watchdog <= 0 || n.socket == nil {
		return
	}
	every := n.watchdog / 2
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		n.checkAndPet(ctx, every, healthy, logger)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// checkAndPet runs one health check and pets the watchdog if it passed.
func (n *Notifier) checkAndPet(ctx context.Context, limit time.Duration, healthy HealthCheck, logger *slog.Logger) {
	checkCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := healthy(checkCtx)
	if ctx.Err() != nil {
		return // shutting down: the result means nothing
	}
	if err != nil {
		logger.Warn("health check failed; not petting the systemd watchdog", "err", err, "watchdog", n.watchdog)
		return
	}
	if err := n.Watchdog(); err != nil {
		logger.Warn("cannot pet the systemd watchdog", "err", err)
	}
}
