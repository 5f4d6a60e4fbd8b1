package api

// Task is a long operation (GET /v1/tasks/{id}).
type Task struct {
	ID       string  `json:"id"`
	Kind     string  `json:"kind"` // TaskRollback, TaskVerify
	Disk     string  `json:"disk,omitempty"`
	Target   string  `json:"target,omitempty"` // e.g. the snapshot rolled back to
	State    string  `json:"state"`            // TaskRunning, TaskDone, TaskFailed
	Progress float64 `json:"progress"`         // percent
	Message  string  `json:"message,omitempty"`
	Error    string  `json:"error,omitempty"`
	Created  Time    `json:"created"`
	Finished *Time   `json:"finished,omitempty"`
	// Result is kind specific: VerifyResult for TaskVerify.
	Result any `json:"result,omitempty"`
}

// Task kinds and states.
const (
	TaskRollback = "rollback"
	TaskVerify   = "verify"
	TaskRunning  = "running"
	TaskDone     = "done"
	TaskFailed   = "failed"
)

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
