package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// statuses returns a poll function that answers the given statuses in turn.
func statuses(ss ...status) func(context.Context) (status, error) {
	i := 0
	return func(context.Context) (status, error) {
		s := ss[min(i, len(ss)-1)]
		i++
		return s, nil
	}
}

// followStatuses follows work that reports itself as statuses: seq[0]
// first, then the others in turn.
func followStatuses(ctx context.Context, a *app, label, resume string, seq ...status) error {
	_, err := follow(ctx, a, label, resume, seq[0], statuses(seq[1:]...), func(s status) status { return s })
	return err
}

func running(pct float64, msg string) status {
	return status{state: workRunning, percent: pct, message: msg}
}

func copying(pct float64, done, total uint64) status {
	return status{state: workRunning, percent: pct, doneBytes: done, totalBytes: total}
}

var (
	done      = status{state: workDone}
	errFailed = errors.New("store full")
	failed    = status{state: workFailed, percent: 40, err: errFailed}
)

func TestFollow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tty    bool
		seq    []status
		err    error
		stderr string // regexp
	}{
		{"plain lines per tenth", false, []status{running(0, ""), running(3, ""), running(12, ""), running(19, ""), running(55, ""), done}, nil,
			"^work: 0%\nwork: 12%\nwork: 55%\nwork: 100%\n$"},
		{"plain lines carry the message", false, []status{running(1, "1 of 100"), running(2, "2 of 100"), {state: workDone, message: "100 of 100"}}, nil,
			"^work: 1% 1 of 100\nwork: 100% 100 of 100\n$"},
		{"plain lines carry the bytes", false, []status{copying(25, 1<<20, 4<<20), {state: workDone, totalBytes: 4 << 20}}, nil,
			`^work: 25% \(1 MiB of 4 MiB\)\nwork: 100% \(4 MiB of 4 MiB\)\n$`},
		{"plain failure", false, []status{running(40, ""), failed}, errFailed, "^work: 40%\n$"},
		// mpb draws on its own clock: what is certain is the last drawing
		// of the bar, and that it ends its line.
		{"terminal bar", true, []status{running(50, "5 of 10"), {state: workDone, message: "10 of 10"}}, nil,
			`work +100% \[=+\] +done +10 of 10 *\n$`},
		{"terminal bar with bytes", true, []status{copying(50, 2<<20, 4<<20), {state: workDone, totalBytes: 4 << 20}}, nil,
			`work +100% \[=+\] +4\.0 MiB / 4\.0 MiB +[0-9.]+ [KMG]?i?B/s +done *\n$`},
		{"terminal failure stops the bar", true, []status{running(10, ""), failed}, errFailed, `work +10% \[==?>?-+\] +stopped *\n$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := &app{stderr: &stderr, poll: time.Millisecond}
			if tc.tty {
				a.terminal = func(io.Writer) bool { return true }
			}
			err := followStatuses(context.Background(), a, "work", "cairn task wait X", tc.seq...)
			if !errors.Is(err, tc.err) || !regexp.MustCompile(tc.stderr).MatchString(stderr.String()) {
				t.Fatalf("follow: %v, stderr %q; want %v, stderr matching %q", err, stderr.String(), tc.err, tc.stderr)
			}
		})
	}
}

// jsonLines decodes every line of out as a progressLine.
func jsonLines(t *testing.T, out string) []progressLine {
	t.Helper()
	var lines []progressLine
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var p progressLine
		dec := json.NewDecoder(strings.NewReader(l))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("progress line %q is not a JSON object: %v (all: %q)", l, err, out)
		}
		lines = append(lines, p)
	}
	return lines
}

func TestFollowJSONLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		seq  []status
		err  error
		want string // state percent [done/total] [message] [error] of each line
	}{
		{"one line per change", []status{running(0, ""), running(0, ""), running(40, "4 of 10"), running(40, "4 of 10"), {state: workDone, message: "10 of 10"}}, nil,
			"running 0|running 40 4 of 10|done 100 10 of 10"},
		{"bytes when counted", []status{copying(50, 2<<20, 4<<20), {state: workDone, totalBytes: 4 << 20}}, nil,
			"running 50 2097152/4194304|done 100 4194304/4194304"},
		{"final state of a failure", []status{running(40, ""), failed}, errFailed,
			"running 40|failed 40 error=store full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := &app{stderr: &stderr, output: "json", poll: time.Millisecond}
			err := followStatuses(context.Background(), a, "work", "", tc.seq...)
			if !errors.Is(err, tc.err) {
				t.Fatalf("follow: %v, want %v", err, tc.err)
			}
			var got []string
			for _, p := range jsonLines(t, stderr.String()) {
				if p.Work != "work" || p.Elapsed < 0 {
					t.Errorf("line %+v", p)
				}
				s := p.State + " " + strconv.FormatFloat(p.Percent, 'f', -1, 64)
				if p.TotalBytes != nil {
					s += fmt.Sprintf(" %d/%d", *p.DoneBytes, *p.TotalBytes)
				}
				if p.Message != "" {
					s += " " + p.Message
				}
				if p.Error != "" {
					s += " error=" + p.Error
				}
				got = append(got, s)
			}
			if strings.Join(got, "|") != tc.want {
				t.Errorf("JSON lines say %q, want %q\n%s", strings.Join(got, "|"), tc.want, stderr.String())
			}
		})
	}
}

func TestFollowInterrupted(t *testing.T) {
	for _, tty := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // Ctrl-C while the work is under way
		a := &app{stderr: &bytes.Buffer{}, poll: time.Hour, terminal: func(io.Writer) bool { return tty }}
		_, err := follow(ctx, a, "rollback d@s1", "cairn task wait rollback-1", running(10, ""), func(context.Context) (status, error) {
			t.Fatal("polled after Ctrl-C")
			return status{}, nil
		}, func(s status) status { return s })
		if err == nil || err.Error() != "stopped following rollback d@s1; it goes on in cairnd: cairn task wait rollback-1" {
			t.Fatalf("follow after Ctrl-C (terminal %v): %v", tty, err)
		}
	}
}

func TestFollowPollError(t *testing.T) {
	a := &app{stderr: &bytes.Buffer{}, poll: time.Millisecond}
	lost := errors.New("cannot reach cairnd")
	_, err := follow(context.Background(), a, "work", "", running(0, ""), func(context.Context) (status, error) { return status{}, lost },
		func(s status) status { return s })
	if !errors.Is(err, lost) {
		t.Fatalf("follow when polling fails: %v", err)
	}
}

func TestTaskStatus(t *testing.T) {
	for _, tc := range []struct {
		task api.Task
		want string // the status's error, or its state
	}{
		{api.Task{ID: "rollback-1", Kind: api.TaskRollback, State: api.TaskRunning, Progress: 30}, "running"},
		{api.Task{ID: "rollback-1", Kind: api.TaskRollback, State: api.TaskSucceeded}, "done"},
		{api.Task{ID: "verify-2", Kind: api.TaskVerify, State: api.TaskFailed, Error: "read chunk: EIO"}, "task verify-2 (verify) failed: read chunk: EIO"},
		{api.Task{ID: "verify-3", Kind: api.TaskVerify, State: api.TaskFailed}, "task verify-3 (verify) failed: no reason given (see cairnd's log)"},
		{api.Task{ID: "verify-4", Kind: api.TaskVerify, State: api.TaskCancelled, Error: "cancelled: context canceled"}, "task verify-4 (verify) cancelled: cancelled: context canceled"},
	} {
		s := taskStatus(tc.task)
		got := s.state
		if s.err != nil {
			got = s.err.Error()
		}
		if got != tc.want {
			t.Errorf("taskStatus(%+v) = %q, want %q", tc.task, got, tc.want)
		}
	}
}

// fakeTaskAPI serves GET /v1/tasks/ID: the task running at 40%, then as
// it ended.
func fakeTaskAPI(t *testing.T, ended api.Task) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/tasks/"+ended.ID {
			http.NotFound(w, r)
			return
		}
		k := ended
		if calls.Add(1) == 1 {
			k.State, k.Progress, k.Message, k.Error = api.TaskRunning, 40, "40 of 100", ""
		}
		json.NewEncoder(w).Encode(k)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// A task that fails: task wait prints its reason and exits 1, whatever the
// form of its progress.
func TestTaskWaitFailed(t *testing.T) {
	ended := api.Task{ID: "verify-7", Kind: api.TaskVerify, State: api.TaskFailed, Progress: 40, Error: "read chunk 3f2a: input/output error"}
	reason := "cairn: task verify-7 (verify) failed: read chunk 3f2a: input/output error\n"
	t.Run("plain", func(t *testing.T) {
		out, errs, code := cli(t, fakeTaskAPI(t, ended), "task", "wait", "verify-7")
		if code != exitError || out != "" || errs != "verify: 40% 40 of 100\n"+reason {
			t.Fatalf("task wait of a failed task: exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, errs, code := cli(t, fakeTaskAPI(t, ended), "task", "wait", "verify-7", "-o", "json")
		progress, found := strings.CutSuffix(errs, reason)
		if code != exitError || out != "" || !found {
			t.Fatalf("task wait -o json of a failed task: exit %d, stdout %q, stderr %q", code, out, errs)
		}
		lines := jsonLines(t, progress)
		if last := lines[len(lines)-1]; len(lines) != 2 || last.State != workFailed || !strings.Contains(last.Error, "input/output error") {
			t.Fatalf("progress lines %+v", lines)
		}
	})
}

// Against a real cairnd: snapshot create --wait shows plain lines when
// stderr is a pipe, JSON lines with -o json, and stdout keeps the result.
func TestCreateWaitProgress(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d", "--size", "1M")

	nbdWrite(t, in, "d", "write -P 0x11 0 128k")
	out, errs, code := cli(t, sock, "snapshot", "create", "d", "plain", "--wait")
	if code != exitOK || !strings.Contains(out, "ready") ||
		!regexp.MustCompile(`^(snapshot d@plain: \d+% \([0-9.]+ [KM]?i?B of 128 KiB\)\n)*snapshot d@plain: 100% \(128 KiB of 128 KiB\)\n$`).MatchString(errs) {
		t.Errorf("create --wait: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	nbdWrite(t, in, "d", "write -P 0x22 0 64k")
	out, errs, code = cli(t, sock, "snapshot", "create", "d", "json", "--wait", "-o", "json")
	if code != exitOK {
		t.Fatalf("create --wait -o json: exit %d, %s", code, errs)
	}
	if snap := decode[api.Snapshot](t, out); snap.State != api.SnapshotReady {
		t.Errorf("create --wait -o json printed %+v", snap)
	}
	lines := jsonLines(t, errs)
	last := lines[len(lines)-1]
	if last.Work != "snapshot d@json" || last.State != workDone || last.Percent != 100 ||
		last.TotalBytes == nil || *last.TotalBytes != 64<<10 || *last.DoneBytes != 64<<10 {
		t.Errorf("last progress line %+v", last)
	}
}
