package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// steps returns a poll function that answers the given steps in turn.
func steps(ss ...step) func(context.Context) (step, error) {
	i := 0
	return func(context.Context) (step, error) {
		s := ss[min(i, len(ss)-1)]
		i++
		return s, nil
	}
}

func TestFollow(t *testing.T) {
	failed := errors.New("store full")
	for _, tc := range []struct {
		name   string
		tty    bool
		steps  []step
		err    error
		stderr string // regexp
	}{
		{"plain lines per tenth", false, []step{{progress: 0}, {progress: 3}, {progress: 12}, {progress: 19}, {progress: 55}, {done: true}}, nil,
			"^work: 0%\nwork: 12%\nwork: 55%\nwork: 100%\n$"},
		{"plain lines carry the message", false, []step{{progress: 1, message: "1 of 100"}, {progress: 2, message: "2 of 100"}, {done: true, message: "100 of 100"}}, nil,
			"^work: 1% 1 of 100\nwork: 100% 100 of 100\n$"},
		{"plain failure", false, []step{{progress: 40}, {progress: 40, err: failed}}, failed, "^work: 40%\n$"},
		{"terminal redraws one line", true, []step{{progress: 50, message: "5 of 10"}, {done: true}}, nil,
			`^\rwork \[#{15}\.{15}\]  50% 0s 5 of 10\x1b\[K\rwork \[#{30}\] 100% 0s\x1b\[K\n$`},
		{"terminal failure ends the line", true, []step{{progress: 10}, {err: failed}}, failed, `^\rwork \[###\.{27}\]  10% 0s\x1b\[K\rwork .*\x1b\[K\n$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := &app{stderr: &stderr, poll: time.Millisecond}
			if tc.tty {
				a.terminal = func(io.Writer) bool { return true }
			}
			err := a.follow(context.Background(), "work", "cairn task wait X", tc.steps[0], steps(tc.steps[1:]...))
			if !errors.Is(err, tc.err) || !regexp.MustCompile(tc.stderr).MatchString(stderr.String()) {
				t.Fatalf("follow: %v, stderr %q; want %v, stderr matching %q", err, stderr.String(), tc.err, tc.stderr)
			}
		})
	}
}

func TestFollowInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Ctrl-C while the work is under way
	a := &app{stderr: &bytes.Buffer{}, poll: time.Hour}
	err := a.follow(ctx, "rollback d@s1", "cairn task wait rollback-1", step{progress: 10}, func(context.Context) (step, error) {
		t.Fatal("polled after Ctrl-C")
		return step{}, nil
	})
	if err == nil || err.Error() != "stopped following rollback d@s1; it goes on in cairnd: cairn task wait rollback-1" {
		t.Fatalf("follow after Ctrl-C: %v", err)
	}
}

func TestFollowPollError(t *testing.T) {
	a := &app{stderr: &bytes.Buffer{}, poll: time.Millisecond}
	lost := errors.New("cannot reach cairnd")
	err := a.follow(context.Background(), "work", "", step{}, func(context.Context) (step, error) { return step{}, lost })
	if !errors.Is(err, lost) {
		t.Fatalf("follow when polling fails: %v", err)
	}
}

func TestTaskStep(t *testing.T) {
	for _, tc := range []struct {
		task api.Task
		want string // the step's error, or "done"/"running"
	}{
		{api.Task{ID: "rollback-1", Kind: api.TaskRollback, State: api.TaskRunning, Progress: 30}, "running"},
		{api.Task{ID: "rollback-1", Kind: api.TaskRollback, State: api.TaskDone}, "done"},
		{api.Task{ID: "verify-2", Kind: api.TaskVerify, State: api.TaskFailed, Error: "read chunk: EIO"}, "task verify-2 (verify) failed: read chunk: EIO"},
		{api.Task{ID: "verify-3", Kind: api.TaskVerify, State: api.TaskFailed}, "task verify-3 (verify) failed: no reason given (see cairnd's log)"},
	} {
		s := taskStep(tc.task)
		got := "running"
		switch {
		case s.err != nil:
			got = s.err.Error()
		case s.done:
			got = "done"
		}
		if got != tc.want {
			t.Errorf("taskStep(%+v) = %q, want %q", tc.task, got, tc.want)
		}
	}
}

func TestFormatHold(t *testing.T) {
	for us, want := range map[float64]string{1.444: "1.4µs", 312.4: "312µs", 1500: "1.50ms", 2.5e6: "2.50s"} {
		if got := formatHold(us); got != want {
			t.Errorf("formatHold(%v) = %q, want %q", us, got, want)
		}
	}
	if !strings.Contains(ratio(300, 100), "3.00x") || ratio(1, 0) != "" {
		t.Errorf("ratio: %q %q", ratio(300, 100), ratio(1, 0))
	}
}
