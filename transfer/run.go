package transfer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// ReportEvery is how often progress goes to cairnd (and renews the
// transfer's lease).
var ReportEvery = time.Second

// Progress is told how far a transfer is, in bytes.
type Progress func(done, total uint64)

// run does work for the transfer tr and finishes it with work's outcome.
// While work runs its progress goes to cairnd every ReportEvery; if cairnd
// refuses a report (the task was cancelled, or its lease ran out) work's
// context is cancelled. Interrupting ctx (Ctrl-C) fails the transfer, and
// cairnd cleans up.
func run(ctx context.Context, c *api.Client, tr api.Transfer, show Progress, work func(ctx context.Context, progress Progress) error) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var done, total uint64
	var lost error // why cairnd refused a report
	progress := func(d, t uint64) {
		mu.Lock()
		done, total = d, t
		mu.Unlock()
		if show != nil {
			show(d, t)
		}
	}
	stop := make(chan struct{})
	reporter := make(chan struct{})
	go func() {
		defer close(reporter)
		tick := time.NewTicker(ReportEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			p := api.TransferProgress{DoneBytes: done, TotalBytes: total}
			mu.Unlock()
			if _, err := c.ReportProgress(wctx, tr.Task.ID, p); err != nil && wctx.Err() == nil {
				var apiErr *api.Error
				if errors.As(err, &apiErr) {
					mu.Lock()
					lost = err
					mu.Unlock()
					cancel()
					return
				}
			}
		}
	}()
	err := work(wctx, progress)
	close(stop)
	<-reporter
	mu.Lock()
	if lost != nil {
		err = fmt.Errorf("cairnd ended the transfer (task %s): %w", tr.Task.ID, lost)
	}
	mu.Unlock()
	msg := ""
	switch {
	case err != nil && ctx.Err() != nil:
		msg = "interrupted (the client was stopped)"
		err = fmt.Errorf("interrupted: %w", err)
	case err != nil:
		msg = err.Error()
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer fcancel()
	if err == nil && total > 0 { // the last figures, which the ticker may not have sent
		c.ReportProgress(fctx, tr.Task.ID, api.TransferProgress{DoneBytes: done, TotalBytes: total})
	}
	t, ferr := c.FinishTransfer(fctx, tr.Task.ID, msg)
	switch {
	case err != nil:
		return err
	case ferr != nil:
		return fmt.Errorf("finish task %s: %w", tr.Task.ID, ferr)
	case t.State != api.TaskSucceeded:
		return fmt.Errorf("task %s %s: %s", t.ID, t.State, t.Error)
	}
	return nil
}

// nbdURI is the URI qemu opens an export of tr by.
func nbdURI(tr api.Transfer, export string) string {
	return "nbd+unix:///" + export + "?socket=" + tr.NBDSocket
}

// nbdImageOpts is qemu's --image-opts for export (raw over NBD), reading
// the meta context ctxName in place of base:allocation when not empty.
func nbdImageOpts(tr api.Transfer, export, ctxName string) string {
	opts := "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=" + escapeOpt(tr.NBDSocket) + ",file.export=" + escapeOpt(export)
	if ctxName != "" {
		opts += ",file.x-dirty-bitmap=" + escapeOpt(ctxName)
	}
	return opts
}

// escapeOpt doubles commas, as qemu's option syntax wants.
func escapeOpt(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		out = append(out, s[i])
		if s[i] == ',' {
			out = append(out, ',')
		}
	}
	return string(out)
}
