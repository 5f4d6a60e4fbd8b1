package api

// Task is a long operation (GET /v1/tasks/{id}): a snapshot's copy-out, a
// machine snapshot, a rollback, a verify. Its id is unique for the life of
// the data directory; tasks outlive a restart of cairnd (one that was
// running resumes, or ends failed saying so) and finished ones are kept
// for task_history.
type Task struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`             // TaskCopyOut, TaskRollback, TaskVerify, TaskMachineSnapshot, TaskMachineRollback
	Disk   string `json:"disk,omitempty"`   // the disk it works on, if one
	Target string `json:"target,omitempty"` // what it works on: a snapshot, MACHINE@SNAPSHOT
	// State is TaskQueued, TaskRunning, TaskSucceeded, TaskFailed or
	// TaskCancelled.
	State    string  `json:"state"`
	Progress float64 `json:"progress"` // percent
	// DoneBytes and TotalBytes: how far, in bytes, for work measured so;
	// RateBytes is bytes per second since it started; ETASeconds is the
	// time left at that rate (0 when unknown).
	DoneBytes  uint64  `json:"done_bytes,omitempty"`
	TotalBytes uint64  `json:"total_bytes,omitempty"`
	RateBytes  float64 `json:"rate_bytes,omitempty"`
	ETASeconds float64 `json:"eta_seconds,omitempty"`
	Message    string  `json:"message,omitempty"`
	Error      string  `json:"error,omitempty"` // why it failed or was cancelled, and what to do
	// Cancellable: POST /v1/tasks/{id}/cancel stops it safely; otherwise
	// the refusal says why.
	Cancellable bool  `json:"cancellable"`
	Created     Time  `json:"created"`
	Started     *Time `json:"started,omitempty"`
	Finished    *Time `json:"finished,omitempty"`
	// Result is kind specific: VerifyResult for TaskVerify,
	// MachineSnapshot for TaskMachineSnapshot.
	Result any `json:"result,omitempty"`
}

// Task kinds and states.
const (
	TaskCopyOut  = "copy-out"
	TaskRollback = "rollback"
	TaskVerify   = "verify"
	TaskFlatten  = "flatten"

	TaskQueued    = "queued"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
)

// Ended reports whether the task has ended (succeeded, failed or
// cancelled).
func (t Task) Ended() bool {
	return t.State == TaskSucceeded || t.State == TaskFailed || t.State == TaskCancelled
}

// TaskFilter selects tasks (GET /v1/tasks?kind=&state=&disk=&target=):
// empty fields match any.
type TaskFilter struct {
	Kind, State, Disk, Target string
}

// VerifyRequest is the body of POST /v1/verify.
type VerifyRequest struct {
	Disk string `json:"disk,omitempty"` // empty: the whole store
}

// VerifyResult is a finished verify task's Result.
type VerifyResult struct {
	ChunksChecked  uint64   `json:"chunks_checked"`
	EntriesChecked uint64   `json:"entries_checked"`
	Faults         []string `json:"faults"`
}
