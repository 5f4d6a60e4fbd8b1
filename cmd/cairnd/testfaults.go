//go:build cairn_testfaults

package main

// Test-only faults, compiled in only with `-tags cairn_testfaults`
// (scripts/test/test-systemd.sh and test-policies.sh build cairnd so);
// `make build` and `make install` never include them.
//
// SIGUSR2 wedges the watchdog's health check for good, as a deadlock in
// the daemon would: the check never returns, systemd's watchdog goes
// unpetted, and systemd must kill and restart cairnd within WatchdogSec=.

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/internal/clock"
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

// CAIRN_TEST_CLOCK_FILE names a file holding a duration ("24h5m") that
// the daemon's clock runs ahead of the host's: scripts/test/test-policies.sh
// writes it to let a day pass in a second. Read at every look at the
// clock; a timer also ends early when the file changes, as a woken
// scheduler would notice a step of the host's clock.
func init() {
	path := os.Getenv("CAIRN_TEST_CLOCK_FILE")
	if path == "" {
		return
	}
	testClock = func() clock.Clock { return &offsetClock{path: path} }
}

type offsetClock struct{ path string }

func (c *offsetClock) offset() time.Duration {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return 0
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return d
}

func (c *offsetClock) Now() time.Time { return time.Now().Add(c.offset()) }

func (c *offsetClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	start := c.offset()
	go func() {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) && c.offset() == start {
			time.Sleep(min(50*time.Millisecond, time.Until(deadline)))
		}
		ch <- c.Now()
	}()
	return ch
}
