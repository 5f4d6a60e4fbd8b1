package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/daemon/api"
)

// defaultPoll is how often a followed task or snapshot is asked for its
// progress. The API has no event stream; a few requests a second on a Unix
// socket cost cairnd nothing measurable.
const defaultPoll = 250 * time.Millisecond

// step is one look at long work in progress.
type step struct {
	progress float64 // percent
	message  string  // what it is doing, if it says
	done     bool
	err      error // the work failed (not: asking about it failed)
}

// follow shows long work's first step (what started it answered), then
// polls it until it is done or fails, showing its progress
// on stderr: one line redrawn with \r on a terminal, a plain line each
// time it passes another 10% otherwise (logs, pipes). It returns the
// work's failure, or why it could not follow it: when ctx ends (Ctrl-C)
// the work goes on in cairnd, and the error says how to pick it up again
// (resume).
func (a *app) follow(ctx context.Context, label, resume string, s step, poll func(context.Context) (step, error)) error {
	terminal := a.terminal
	if terminal == nil {
		terminal = isTerminal
	}
	bar := &progress{w: a.stderr, tty: terminal(a.stderr), label: label, start: time.Now(), last: -1}
	every := a.poll
	if every == 0 {
		every = defaultPoll
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		if s.done {
			s.progress = 100
		}
		bar.show(s)
		if s.done || s.err != nil {
			bar.end()
			return s.err
		}
		select {
		case <-ctx.Done():
			bar.end()
			return fmt.Errorf("stopped following %s; it goes on in cairnd: %s", label, resume)
		case <-ticker.C:
		}
		next, err := poll(ctx)
		if err != nil && ctx.Err() == nil {
			bar.end()
			return err
		}
		if err == nil {
			s = next
		}
	}
}

// followTask follows a task until it finishes and returns it as it ended.
// A failed task is returned with an error stating its Error.
func (a *app) followTask(ctx context.Context, t api.Task) (api.Task, error) {
	label := t.Kind
	if t.Disk != "" {
		label += " " + t.Disk
		if t.Target != "" {
			label += "@" + t.Target
		}
	}
	last := t
	err := a.follow(ctx, label, "cairn task wait "+t.ID, taskStep(t), func(ctx context.Context) (step, error) {
		k, err := a.client.Task(ctx, t.ID)
		if err != nil {
			return step{}, err
		}
		last = k
		return taskStep(k), nil
	})
	return last, err
}

func taskStep(t api.Task) step {
	s := step{progress: t.Progress, message: t.Message}
	switch t.State {
	case api.TaskDone:
		s.done = true
	case api.TaskFailed:
		s.err = fmt.Errorf("task %s (%s) failed: %s", t.ID, t.Kind, orNoReason(t.Error))
	}
	return s
}

// progress draws one piece of work's progress.
type progress struct {
	w     io.Writer
	tty   bool
	label string
	start time.Time
	drawn bool // a \r line is on the terminal
	last  int  // the last tenth printed as a plain line, -1 for none
}

const barWidth = 30

func (p *progress) show(s step) {
	pct := min(max(s.progress, 0), 100)
	if p.tty {
		filled := int(pct / 100 * barWidth)
		line := fmt.Sprintf("%s [%s%s] %3.0f%% %s", p.label, strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled),
			pct, time.Since(p.start).Round(time.Second))
		if s.message != "" {
			line += " " + s.message
		}
		fmt.Fprintf(p.w, "\r%s\x1b[K", line) // \x1b[K clears what a longer line left
		p.drawn = true
		return
	}
	tenth := int(pct / 10)
	if tenth == p.last {
		return
	}
	p.last = tenth
	line := fmt.Sprintf("%s: %.0f%%", p.label, pct)
	if s.message != "" {
		line += " " + s.message
	}
	fmt.Fprintln(p.w, line)
}

// end finishes a terminal's \r line so that what follows starts afresh.
func (p *progress) end() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
