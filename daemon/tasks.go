package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Tasks: every long operation (a snapshot's copy-out, a machine snapshot,
// a rollback, a verify) runs as a task with an id unique for the data
// directory's life, a state, progress (percent, bytes, rate, ETA) and an
// error a person can act on. Tasks are records in the store: written when
// they start and end (durably) and now and then while they run, so they
// outlive a restart: one that was running resumes if its kind can
// (resumers), or ends failed saying it was interrupted. Finished tasks are
// kept for task_history.

// maxTasks bounds the tasks kept in memory and in the store.
const maxTasks = 10000

// persistEvery is how often a running task's progress is written.
const persistEvery = 5 * time.Second

// taskList is the registry of tasks: each runs in its own goroutine, owned
// by the registry, and reports progress here.
type taskList struct {
	st      *store.Store
	log     *slog.Logger
	history time.Duration

	mu    sync.Mutex
	tasks map[string]*task // guarded by mu
	wg    sync.WaitGroup   // running tasks
}

// task is one long operation; t is guarded by taskList.mu.
type task struct {
	t      api.Task
	cancel context.CancelFunc // nil once ended
	saved  time.Time          // when t was last written
	done   chan struct{}      // closed when it ends
	// unit is what progress counts: "bytes" fills DoneBytes and friends;
	// "" is a plain fraction (percent only).
	unit string
}

// progressFunc reports done of total units of a task's work (bytes for
// tasks started with unitBytes).
type progressFunc func(done, total uint64)

// Units of progress.
const (
	unitBytes  = "bytes"
	unitChunks = "chunks"
)

// taskFunc does a task's work: its error fails it (a cancelled ctx with
// a cancellable task cancels it); its result is kept as Task.Result.
type taskFunc func(ctx context.Context, progress progressFunc) (any, error)

// taskSpec describes a task to start.
type taskSpec struct {
	kind, disk, target string
	unit               string
	// cancellable: the work may be stopped at any point and left as it
	// is; otherwise cancel explains why not (notCancellable).
	cancellable bool
	// notCancellable says why a task that is not cancellable is not.
	notCancellable string
}

// load reads the tasks kept in the store. Tasks that were queued or
// running when cairnd stopped are returned for the caller to resume or
// end (resumeTasks).
func (l *taskList) load(st *store.Store, log *slog.Logger, history time.Duration) (interrupted []api.Task, err error) {
	l.st, l.log, l.history = st, log, history
	l.tasks = map[string]*task{}
	err = st.ListRecords(store.TaskPrefix, func(key string, raw []byte) error {
		var t api.Task
		if err := json.Unmarshal(raw, &t); err != nil {
			log.Warn("unreadable task record; dropping it", "key", key, "err", err)
			return st.DeleteRecord(key)
		}
		if !t.Ended() {
			interrupted = append(interrupted, t)
			return nil
		}
		done := make(chan struct{})
		close(done)
		l.tasks[t.ID] = &task{t: t, done: done}
		return nil
	})
	l.mu.Lock()
	l.pruneLocked(time.Now())
	l.mu.Unlock()
	return interrupted, err
}

// start registers a task and runs fn in a goroutine. ctx bounds the work
// (the daemon's lifetime, not the request's).
func (l *taskList) start(ctx context.Context, spec taskSpec, fn taskFunc) (api.Task, error) {
	n, err := l.st.NextID(store.TaskIDSequence)
	if err != nil {
		return api.Task{}, fmt.Errorf("allocate a task id: %w", err)
	}
	now := api.At(time.Now())
	t := api.Task{ID: spec.kind + "-" + strconv.FormatUint(n, 10), Kind: spec.kind, Disk: spec.disk, Target: spec.target,
		State: api.TaskRunning, Cancellable: spec.cancellable, Created: now, Started: &now}
	return l.run(ctx, t, spec, fn)
}

// resume runs fn for a task that was interrupted by a restart, under its
// id.
func (l *taskList) resume(ctx context.Context, t api.Task, spec taskSpec, fn taskFunc) {
	t.State, t.Error = api.TaskRunning, ""
	t.Message = "resumed after a restart of cairnd"
	if _, err := l.run(ctx, t, spec, fn); err != nil {
		l.log.Warn("could not resume a task", "task", t.ID, "err", err)
	}
}

// abandon ends a task a restart interrupted and that cannot resume.
func (l *taskList) abandon(t api.Task, why string) {
	now := api.At(time.Now())
	t.State, t.Finished = api.TaskFailed, &now
	t.Error = "interrupted by a restart of cairnd: " + why
	done := make(chan struct{})
	close(done)
	tk := &task{t: t, done: done}
	l.mu.Lock()
	l.tasks[t.ID] = tk
	l.mu.Unlock()
	l.save(tk, true)
}

func (l *taskList) run(parent context.Context, t api.Task, spec taskSpec, fn taskFunc) (api.Task, error) {
	ctx, cancel := context.WithCancel(parent)
	tk := &task{t: t, cancel: cancel, done: make(chan struct{}), unit: spec.unit}
	if !spec.cancellable {
		tk.t.Cancellable = false
	}
	if err := l.save(tk, true); err != nil {
		cancel()
		return api.Task{}, err
	}
	l.mu.Lock()
	l.tasks[t.ID] = tk
	snapshot := tk.t
	l.mu.Unlock()

	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(tk.done)
		defer cancel()
		result, err := fn(ctx, func(done, total uint64) { l.progress(tk, done, total) })
		if parent.Err() != nil && err != nil {
			// cairnd is stopping: the record stays running, and the next
			// start resumes the task or ends it saying why.
			l.save(tk, true)
			return
		}
		now := api.At(time.Now())
		l.mu.Lock()
		tk.t.Finished = &now
		tk.t.Result = result
		tk.t.ETASeconds, tk.t.Message = 0, ""
		switch {
		case err == nil:
			tk.t.State = api.TaskSucceeded
			tk.t.Progress = 100
			if tk.t.TotalBytes > 0 {
				tk.t.DoneBytes = tk.t.TotalBytes
			}
		case ctx.Err() != nil && tk.cancel == nil:
			tk.t.State = api.TaskCancelled
			tk.t.Error = "cancelled: " + err.Error()
		default:
			tk.t.State = api.TaskFailed
			tk.t.Error = err.Error()
		}
		tk.cancel = nil
		l.pruneLocked(now.Time)
		l.mu.Unlock()
		if err := l.save(tk, true); err != nil {
			l.log.Warn("could not record a task's end; after a restart it shows as interrupted", "task", tk.t.ID, "err", err)
		}
	}()
	return snapshot, nil
}

// progress records how far a task is, and writes it now and then.
func (l *taskList) progress(tk *task, done, total uint64) {
	l.mu.Lock()
	if total > 0 {
		tk.t.Progress = 100 * float64(min(done, total)) / float64(total)
	}
	switch tk.unit {
	case unitBytes:
		tk.t.DoneBytes, tk.t.TotalBytes = done, total
	case "": // percent only
	default:
		tk.t.Message = fmt.Sprintf("%d of %d %s", done, total, tk.unit)
	}
	tk.t.RateBytes, tk.t.ETASeconds = 0, 0
	if tk.t.Started != nil && done > 0 {
		elapsed := time.Since(tk.t.Started.Time).Seconds()
		rate := float64(done) / max(elapsed, 1e-3)
		if tk.unit == unitBytes {
			tk.t.RateBytes = rate
		}
		if total > done {
			tk.t.ETASeconds = float64(total-done) / rate
		}
	}
	due := time.Since(tk.saved) > persistEvery
	l.mu.Unlock()
	if due {
		l.save(tk, false)
	}
}

// save writes a task's record; durably when its state changed.
func (l *taskList) save(tk *task, durable bool) error {
	l.mu.Lock()
	t := tk.t
	tk.saved = time.Now()
	l.mu.Unlock()
	if err := l.st.PutRecord(store.TaskKey(t.ID), t); err != nil {
		return fmt.Errorf("record task %s: %w", t.ID, err)
	}
	if durable {
		return l.st.Sync()
	}
	return nil
}

// pruneLocked forgets finished tasks older than the history, and the
// oldest beyond maxTasks. Caller holds mu.
func (l *taskList) pruneLocked(now time.Time) {
	var finished []*task
	for _, tk := range l.tasks {
		if tk.t.Finished != nil {
			finished = append(finished, tk)
		}
	}
	sort.Slice(finished, func(i, j int) bool { return finished[i].t.Finished.Before(finished[j].t.Finished.Time) })
	for i, tk := range finished {
		if now.Sub(tk.t.Finished.Time) > l.history || len(finished)-i > maxTasks {
			delete(l.tasks, tk.t.ID)
			if err := l.st.DeleteRecord(store.TaskKey(tk.t.ID)); err != nil {
				l.log.Warn("could not forget an old task", "task", tk.t.ID, "err", err)
			}
		}
	}
}

// list returns the tasks f selects, newest first.
func (l *taskList) list(f api.TaskFilter) []api.Task {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]api.Task, 0, len(l.tasks))
	for _, tk := range l.tasks {
		t := tk.t
		if (f.Kind == "" || t.Kind == f.Kind) && (f.State == "" || t.State == f.State) &&
			(f.Disk == "" || t.Disk == f.Disk) && (f.Target == "" || strings.Contains(t.Target, f.Target)) {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Created.After(out[j].Created.Time) || out[i].Created.Equal(out[j].Created.Time) && out[i].ID > out[j].ID
	})
	return out
}

// get returns one task.
func (l *taskList) get(id string) (api.Task, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tk, ok := l.tasks[id]
	if !ok {
		return api.Task{}, errorf(block.ErrNotFound, "task %q not found (finished tasks are kept for task_history, %v)", id, l.history)
	}
	return tk.t, nil
}

// cancelTask stops a cancellable task and waits, bounded by ctx, for it
// to end; a task that cannot be stopped safely is refused with why.
func (l *taskList) cancelTask(ctx context.Context, id string, why func(api.Task) string) (api.Task, error) {
	l.mu.Lock()
	tk, ok := l.tasks[id]
	if !ok {
		l.mu.Unlock()
		return api.Task{}, errorf(block.ErrNotFound, "task %q not found", id)
	}
	t := tk.t
	switch {
	case t.Ended():
		l.mu.Unlock()
		return api.Task{}, errorf(block.ErrFailed, "task %s has already ended (%s)", id, t.State)
	case !t.Cancellable:
		l.mu.Unlock()
		return api.Task{}, errorf(block.ErrFailed, "task %s (%s) cannot be cancelled: %s", id, t.Kind, why(t))
	}
	cancel := tk.cancel
	tk.cancel = nil
	l.mu.Unlock()
	cancel()
	select {
	case <-tk.done:
	case <-ctx.Done():
	}
	return l.get(id)
}

// waitEnded waits, bounded by ctx, for a task to end and returns it.
func (l *taskList) waitEnded(ctx context.Context, id string) (api.Task, error) {
	l.mu.Lock()
	tk, ok := l.tasks[id]
	l.mu.Unlock()
	if !ok {
		return api.Task{}, errorf(block.ErrNotFound, "task %q not found", id)
	}
	select {
	case <-tk.done:
	case <-ctx.Done():
		return api.Task{}, ctx.Err()
	}
	return l.get(id)
}

// wait waits for running tasks (shutdown).
func (l *taskList) wait() { l.wg.Wait() }
