package systemd

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunWatchdogPetsOnlyWhenHealthy(t *testing.T) {
	tests := []struct {
		name    string
		results []error // what successive health checks return
	}{
		{"always healthy", []error{nil, nil, nil}},
		{"wedged then recovered", []error{nil, errWedged, errWedged, nil}},
		{"wedged from the start", []error{errWedged, errWedged}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
			t.Setenv("WATCHDOG_USEC", "2000") // a check every millisecond
			n, err := NewNotifier()
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))

			// Each check takes the next result from the test, so the test
			// knows exactly which checks passed. Checks ignore their own
			// deadline (a hung check must simply go unpetted).
			results := make(chan error)
			stop := make(chan struct{})
			health := func(ctx context.Context) error {
				if _, ok := ctx.Deadline(); !ok {
					t.Error("health check runs without a deadline")
				}
				select {
				case err := <-results:
					return err
				case <-stop:
					return errors.New("test over")
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				n.RunWatchdog(ctx, health, logger)
			}()
			for _, r := range tt.results {
				results <- r
			}
			// Every fed check has completed once the loop returns.
			cancel()
			close(stop)
			<-done

			healthy, wedged := 0, 0
			for _, r := range tt.results {
				if r == nil {
					healthy++
				} else {
					wedged++
				}
			}
			for range healthy {
				if got := nextDatagram(t, conn); got != "WATCHDOG=1" {
					t.Errorf("sent %q, want WATCHDOG=1", got)
				}
			}
			noDatagram(t, conn)
			if got := strings.Count(logs.String(), errWedged.Error()); got != wedged {
				t.Errorf("logged %d failed checks, want %d:\n%s", got, wedged, logs.String())
			}
		})
	}
}

func TestRunWatchdogOff(t *testing.T) {
	notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	t.Setenv("WATCHDOG_USEC", "")
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	// Returns at once without checking: nobody would act on the result.
	n.RunWatchdog(context.Background(), func(context.Context) error {
		t.Error("health checked with the watchdog off")
		return nil
	}, slog.Default())
}
