//go:build cairn_testfaults

package main

// Test-only faults, compiled in only with `-tags cairn_testfaults`
// (scripts/test/test-systemd.sh builds cairnd so); `make build` and
// `make install` never include them.
//
// SIGUSR2 wedges the watchdog's health check for good, as a deadlock in
// the daemon would: the check never returns, systemd's watchdog goes
// unpetted, and systemd must kill and restart cairnd within WatchdogSec=.

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

func init() {
	var wedged atomic.Bool
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		for range usr2 {
			wedged.Store(true)
		}
	}()
	testHealthFault = func(_ context.Context, logger *slog.Logger) {
		if wedged.Load() {
			logger.Warn("test fault: SIGUSR2 wedged the health check (cairn_testfaults build)")
			select {} // deliberately ignores ctx: a real deadlock would
		}
	}
}
