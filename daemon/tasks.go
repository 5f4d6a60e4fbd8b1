package daemon

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// keepFinished is how many finished tasks are remembered for GET /v1/tasks.
const keepFinished = 100

// taskList is the registry of long operations: each runs in its own
// goroutine, owned by the registry, and reports progress here.
type taskList struct {
	// nextID numbers tasks (durably, from the store's task sequence, so
	// an id is never reused for the data directory's lifetime).
	nextID func() (uint64, error)
	mu     sync.Mutex
	tasks  map[string]*task // guarded by mu
	wg     sync.WaitGroup   // running tasks
}

// task is one long operation; its fields are guarded by taskList.mu.
type task struct {
	t api.Task
}

// nextTaskID takes the next task number from the store's task sequence and
// makes it durable, so no restart or power cut ever hands it out again.
func (d *Daemon) nextTaskID() (uint64, error) {
	n, err := d.store.NextID(taskIDSeq)
	if err == nil {
		err = d.store.Sync()
	}
	return n, err
}

// progressFunc reports done of total units of a task's work.
type progressFunc func(done, total uint64)

// start registers a task and runs fn in a goroutine. fn's error fails the
// task; its result is kept as Task.Result. ctx bounds the work (the
// daemon's lifetime, not the request's). It fails, running nothing, if no
// id can be had from the store.
func (l *taskList) start(ctx context.Context, kind, disk, target string, fn func(ctx context.Context, progress progressFunc) (any, error)) (api.Task, error) {
	n, err := l.nextID()
	if err != nil {
		return api.Task{}, fmt.Errorf("start %s task: number it: %w", kind, err)
	}
	id := kind + "-" + strconv.FormatUint(n, 10)
	l.mu.Lock()
	if l.tasks == nil {
		l.tasks = map[string]*task{}
	}
	tk := &task{t: api.Task{ID: id, Kind: kind, Disk: disk, Target: target, State: api.TaskRunning, Created: api.At(time.Now())}}
	l.tasks[id] = tk
	snapshot := tk.t
	l.mu.Unlock()

	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		progress := func(done, total uint64) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if total > 0 {
				tk.t.Progress = 100 * float64(done) / float64(total)
			}
			tk.t.Message = fmt.Sprintf("%d of %d", done, total)
		}
		result, err := fn(ctx, progress)
		now := time.Now().UTC()
		l.mu.Lock()
		defer l.mu.Unlock()
		finished := api.At(now)
		tk.t.Finished = &finished
		tk.t.Result = result
		if err != nil {
			tk.t.State = api.TaskFailed
			tk.t.Error = err.Error()
		} else {
			tk.t.State = api.TaskDone
			tk.t.Progress = 100
		}
		l.pruneLocked()
	}()
	return snapshot, nil
}

// pruneLocked forgets the oldest finished tasks beyond keepFinished.
func (l *taskList) pruneLocked() {
	var finished []*task
	for _, tk := range l.tasks {
		if tk.t.Finished != nil {
			finished = append(finished, tk)
		}
	}
	if len(finished) <= keepFinished {
		return
	}
	sort.Slice(finished, func(i, j int) bool { return finished[i].t.Finished.Before(finished[j].t.Finished.Time) })
	for _, tk := range finished[:len(finished)-keepFinished] {
		delete(l.tasks, tk.t.ID)
	}
}

// list returns every remembered task, newest first.
func (l *taskList) list() []api.Task {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]api.Task, 0, len(l.tasks))
	for _, tk := range l.tasks {
		out = append(out, tk.t)
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
		return api.Task{}, errorf(block.ErrNotFound, "task %q not found (finished tasks are forgotten after %d newer ones finish, and at restart; ids are never reused)", id, keepFinished)
	}
	return tk.t, nil
}

// wait waits for running tasks (shutdown).
func (l *taskList) wait() { l.wg.Wait() }
