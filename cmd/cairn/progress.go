package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/VividCortex/ewma"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// Long work (a task, a snapshot's copy-out) is followed by polling cairnd,
// and its progress is shown on stderr so that stdout keeps only the
// command's result. The form is chosen once per command:
//
//   - -o json: one JSON object per line (progressLine) for every update
//     that changed something, the last one the final state;
//   - a terminal: a bar redrawn in place, with the percent, the bytes done
//     of the total and the rate where the work counts bytes, the time left
//     and the work's message;
//   - otherwise (a log, a pipe): a plain line each time the work passes
//     another 10%.

// defaultPoll is how often followed work is asked for its progress. The
// API has no event stream; a few requests a second on a Unix socket cost
// cairnd nothing measurable.
const defaultPoll = 250 * time.Millisecond

// Work states as the display sees them, whatever the work calls them
// (a snapshot is "copying", then "ready").
const (
	workRunning = "running"
	workDone    = "done"
	workFailed  = "failed"
)

// status is one look at long work in progress.
type status struct {
	state      string  // workRunning, workDone or workFailed
	percent    float64 // of the work done
	doneBytes  uint64
	totalBytes uint64 // 0: the work does not count bytes
	message    string // what it is doing, if it says
	err        error  // why it failed (workFailed); not: asking about it failed
}

// display shows one piece of work's progress.
type display interface {
	update(s status) // the work as it is now, running or finished
	close()          // the work finished, or following it stopped
}

// follow shows the progress of long work until it is done or fails, and
// returns the work as it ended. first is what started it answered; fetch
// asks cairnd for it again, every a.poll; see says what a display shows
// of it. The error is the work's failure, or why it could not be
// followed: when ctx ends (Ctrl-C) the work goes on in cairnd, and the
// error says how to pick it up again (resume).
func follow[T any](ctx context.Context, a *app, label, resume string, first T, fetch func(context.Context) (T, error), see func(T) status) (T, error) {
	last, s := first, see(first)
	d := a.display(label, s)
	defer d.close()
	ticker := time.NewTicker(cmp.Or(a.poll, defaultPoll))
	defer ticker.Stop()
	for {
		switch s.state {
		case workDone:
			s.percent, s.doneBytes = 100, s.totalBytes
		case workFailed:
			if s.err == nil {
				s.err = fmt.Errorf("%s failed", label)
			}
		}
		d.update(s)
		if s.state != workRunning {
			return last, s.err
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("stopped following %s; it goes on in cairnd: %s", label, resume)
		case <-ticker.C:
		}
		now, err := fetch(ctx)
		if err != nil && ctx.Err() == nil {
			return last, err
		}
		if err == nil {
			last, s = now, see(now)
		}
	}
}

// display chooses the form of progress for this command.
func (a *app) display(label string, first status) display {
	terminal := a.terminal
	if terminal == nil {
		terminal = isTerminal
	}
	switch {
	case a.output == "json":
		return &jsonDisplay{enc: json.NewEncoder(a.stderr), label: label, start: time.Now()}
	case terminal(a.stderr):
		return newBarDisplay(a.stderr, label, first)
	}
	return &lineDisplay{w: a.stderr, label: label, lastTenth: -1}
}

// isTerminal reports whether w is a terminal with a size (a pty that has
// none, as some CI runners give, gets plain lines).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	return err == nil && ws.Col > 0
}

// progressLine is one line of -o json progress.
type progressLine struct {
	Work       string  `json:"work"`  // what is followed: "rollback vm1@monday", "snapshot vm1@monday"
	State      string  `json:"state"` // running, done or failed
	Percent    float64 `json:"percent"`
	DoneBytes  *uint64 `json:"done_bytes,omitempty"` // both absent when the work does not count bytes
	TotalBytes *uint64 `json:"total_bytes,omitempty"`
	Message    string  `json:"message,omitempty"`
	Error      string  `json:"error,omitempty"` // why it failed
	Elapsed    float64 `json:"elapsed_s"`       // seconds since cairn started following it
}

// jsonDisplay writes a progressLine for every update that changed
// something.
type jsonDisplay struct {
	enc   *json.Encoder
	label string
	start time.Time
	last  *status // the last one written
}

func (d *jsonDisplay) update(s status) {
	if d.last != nil && sameStatus(*d.last, s) {
		return
	}
	d.last = &s
	line := progressLine{Work: d.label, State: s.state, Percent: s.percent, Message: s.message,
		Elapsed: time.Since(d.start).Round(time.Millisecond).Seconds()}
	if s.totalBytes > 0 {
		line.DoneBytes, line.TotalBytes = &s.doneBytes, &s.totalBytes
	}
	if s.err != nil {
		line.Error = s.err.Error()
	}
	d.enc.Encode(line) // a lost progress line must not fail the command
}

func (d *jsonDisplay) close() {}

func sameStatus(a, b status) bool {
	return a.state == b.state && a.percent == b.percent && a.doneBytes == b.doneBytes &&
		a.totalBytes == b.totalBytes && a.message == b.message
}

// lineDisplay writes a plain line each time the work passes another 10%,
// so that a log of a long task stays short.
type lineDisplay struct {
	w         io.Writer
	label     string
	lastTenth int // -1 before the first line
}

func (d *lineDisplay) update(s status) {
	if s.state == workFailed {
		return // the reason follows, as the command's error
	}
	pct := min(max(s.percent, 0), 100)
	tenth := int(pct / 10)
	if tenth == d.lastTenth {
		return
	}
	d.lastTenth = tenth
	line := fmt.Sprintf("%s: %.0f%%", d.label, pct)
	if s.totalBytes > 0 {
		line += fmt.Sprintf(" (%s of %s)", formatBytes(s.doneBytes), formatBytes(s.totalBytes))
	}
	if s.message != "" {
		line += " " + s.message
	}
	fmt.Fprintln(d.w, line)
}

func (d *lineDisplay) close() {}

// Bar layout.
const (
	barWidth = 30
	// percentUnits is what a bar counts for work that does not count
	// bytes: hundredths of a percent.
	percentUnits = 100 * 100
)

// barDisplay draws a bar with mpb, which redraws it on its own goroutine
// (so the time left moves between polls) and fits it to the terminal's
// width.
type barDisplay struct {
	p        *mpb.Progress
	bar      *mpb.Bar
	bytes    bool                   // the bar counts bytes, else percentUnits
	message  atomic.Pointer[string] // read by mpb's goroutine
	last     time.Time              // of the last update, for the rate; zero before the first
	measured atomic.Bool            // the work has moved while followed: the rate and time left mean something
}

func newBarDisplay(w io.Writer, label string, first status) *barDisplay {
	d := &barDisplay{bytes: first.totalBytes > 0}
	d.message.Store(&first.message)
	// Rate and time left are moving averages of the updates. A plain EWMA
	// (no age given) has no warm-up: it has a value from the first
	// update that moves the work.
	left := decor.MovingAverageETA(decor.ET_STYLE_GO, ewma.NewMovingAverage(), nil, decor.WCSyncSpace)
	after := []decor.Decorator{
		decor.OnAbort(decor.OnComplete(d.onceMeasured(left, "%s left"), "done"), "stopped"),
		decor.Any(func(decor.Statistics) string { return *d.message.Load() }, decor.WCSyncSpace),
	}
	total := int64(percentUnits)
	if d.bytes {
		total = int64(first.totalBytes)
		rate := decor.MovingAverageSpeed(decor.SizeB1024(0), "% .1f", ewma.NewMovingAverage(), decor.WCSyncSpace)
		after = append([]decor.Decorator{
			decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace),
			d.onceMeasured(rate, "%s"),
		}, after...)
	}
	// The work runs in cairnd, not here: the bar's container lives until
	// close, not until the command's ctx ends, so Ctrl-C leaves the bar
	// drawn as it was.
	d.p = mpb.New(mpb.WithOutput(w), mpb.WithAutoRefresh())
	d.bar = d.p.New(total, mpb.BarStyle(),
		mpb.BarWidth(barWidth),
		mpb.PrependDecorators(
			decor.Name(label, decor.WCSyncSpaceR),
			decor.NewPercentage("%.0f", decor.WC{W: 5}),
		),
		mpb.AppendDecorators(after...),
	)
	return d
}

// onceMeasured shows what dec draws, formatted, once the work has moved
// while followed, and nothing before.
func (d *barDisplay) onceMeasured(dec decor.Decorator, format string) decor.Decorator {
	return decor.Meta(dec, func(s string) string {
		if !d.measured.Load() {
			return ""
		}
		return fmt.Sprintf(format, s)
	})
}

// current is what the bar counts of s.
func (d *barDisplay) current(s status) int64 {
	if d.bytes {
		return int64(s.doneBytes)
	}
	return int64(min(max(s.percent, 0), 100) * percentUnits / 100)
}

func (d *barDisplay) update(s status) {
	d.message.Store(&s.message)
	if s.state == workFailed {
		d.bar.Abort(false) // stays drawn where it stopped; the reason follows
		return
	}
	now, cur := time.Now(), d.current(s)
	switch {
	case d.last.IsZero():
		d.bar.SetCurrent(cur) // what was done before cairn looked is no rate
	default:
		if cur > d.bar.Current() {
			d.measured.Store(true)
		}
		d.bar.EwmaSetCurrent(cur, now.Sub(d.last))
	}
	d.last = now
}

// close stops the bar where it is unless the work completed it, and
// waits until mpb has drawn it for the last time.
func (d *barDisplay) close() {
	d.bar.Abort(false) // nothing once complete
	d.p.Wait()
}
