package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// Policy is an automatic snapshot policy (GET /v1/policies/{name}): when
// it takes snapshots of the disks and machines it is applied to, and how
// long it keeps them (docs/policies.md).
type Policy struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Times are local times of day ("02:00", "14:30"); EveryMinutes is
	// instead a step from 00:00. One of the two is set.
	Times        []string `json:"times,omitempty"`
	EveryMinutes int      `json:"every_minutes,omitempty"`
	// Weekdays are the days it runs on, "mon" to "sun".
	Weekdays []string `json:"weekdays"`
	// RetentionDays is how long its snapshots are kept, 1 to 65536 days,
	// or RetentionForever. Changing it applies to the snapshots it already
	// took.
	RetentionDays int    `json:"retention_days"`
	TimeZone      string `json:"time_zone"` // IANA name
	// Consistency is what its machine snapshots ask for: ConsistencyAuto
	// (the default), ConsistencyFilesystem or ConsistencyCrash.
	Consistency string `json:"consistency"`
	Created     Time   `json:"created"`
	Updated     Time   `json:"updated"`
	// NextRun is its next time point on any target (none without targets).
	NextRun *Time          `json:"next_run,omitempty"`
	Targets []PolicyTarget `json:"targets"`
}

// RetentionForever keeps a policy's snapshots until deleted by hand.
const RetentionForever = -1

// DefaultRetentionDays is a policy's retention unless given.
const DefaultRetentionDays = 30

// PolicyTarget is a disk or a machine a policy is applied to.
type PolicyTarget struct {
	Kind    string `json:"kind"` // TargetDisk or TargetMachine
	Name    string `json:"name"`
	Applied Time   `json:"applied"`
	// LastPoint is the last time point handled (taken, skipped, failed or
	// missed: LastResult says which); none before the first.
	LastPoint  *Time  `json:"last_point,omitempty"`
	LastResult string `json:"last_result,omitempty"`
	// NextRuns are its next time points (up to five).
	NextRuns []Time `json:"next_runs"`
}

// Policy target kinds.
const (
	TargetDisk    = "disk"
	TargetMachine = "machine"
)

// CreatePolicyRequest is the body of POST /v1/policies.
type CreatePolicyRequest struct {
	Name         string   `json:"name"`
	Description  string   `json:"description,omitempty"`
	Times        []string `json:"times,omitempty"`
	EveryMinutes int      `json:"every_minutes,omitempty"`
	Weekdays     []string `json:"weekdays,omitempty"` // default every day
	// RetentionDays defaults to DefaultRetentionDays.
	RetentionDays *int `json:"retention_days,omitempty"`
	// TimeZone defaults to the host's.
	TimeZone string `json:"time_zone,omitempty"`
	// Consistency of its machine snapshots; default ConsistencyAuto.
	Consistency string `json:"consistency,omitempty"`
}

// UpdatePolicyRequest is the body of PATCH /v1/policies/{name}: the
// fields given replace the policy's. Giving times clears every_minutes
// and the other way round.
type UpdatePolicyRequest struct {
	Description   *string   `json:"description,omitempty"`
	Times         *[]string `json:"times,omitempty"`
	EveryMinutes  *int      `json:"every_minutes,omitempty"`
	Weekdays      *[]string `json:"weekdays,omitempty"`
	RetentionDays *int      `json:"retention_days,omitempty"`
	TimeZone      *string   `json:"time_zone,omitempty"`
	Consistency   *string   `json:"consistency,omitempty"`
}

// PolicyTargetsRequest is the body of POST /v1/policies/{name}/apply and
// /remove: the disks and machines to apply the policy to (replacing the
// policy they had) or to remove it from (their snapshots stay).
type PolicyTargetsRequest struct {
	Disks    []string `json:"disks,omitempty"`
	Machines []string `json:"machines,omitempty"`
}

// Event is one entry of the events log (GET /v1/events): something a
// policy did or could not do.
type Event struct {
	// ID increases with every event; GET /v1/events?since=ID returns
	// the events after it.
	ID       uint64 `json:"id"`
	Time     Time   `json:"time"`
	Kind     string `json:"kind"`
	Policy   string `json:"policy,omitempty"`
	Disk     string `json:"disk,omitempty"`
	Machine  string `json:"machine,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Message  string `json:"message"`
}

// Event kinds.
const (
	EventTaken   = "taken"   // a policy took an automatic snapshot
	EventSkipped = "skipped" // a time point skipped: the previous automatic snapshot still copies
	EventMissed  = "missed"  // time points passed while cairnd was down or the clock stepped, not back-filled
	EventFailed  = "failed"  // a policy's snapshot failed (the quota is all manual snapshots, an error)
	EventExpired = "expired" // an automatic snapshot deleted at the end of its retention
	EventEvicted = "evicted" // the oldest automatic snapshot deleted to make room at the quota
	EventKept    = "kept"    // an expired snapshot kept because a clone, an image or a reader needs it
	EventDropped = "dropped" // a policy's target went away (its disk or machine was deleted)
)

// EventFilter selects events (GET /v1/events query parameters).
type EventFilter struct {
	Since   uint64 // only events after this id (0: the newest Limit)
	Limit   int    // at most this many (0: 100)
	Kind    string
	Policy  string
	Disk    string
	Machine string
}

// CapacityHistory is a series of capacity samples (GET
// /v1/disks/{name}/capacity/history, /v1/machines/{name}/capacity/history
// and /v1/capacity/history), oldest first.
type CapacityHistory struct {
	// Target is the disk or machine name; "" for the whole store.
	Target   string           `json:"target,omitempty"`
	Kind     string           `json:"kind"`             // TargetDisk, TargetMachine or "store"
	Interval int64            `json:"interval_seconds"` // the sampling interval
	Samples  []CapacitySample `json:"samples"`
}

// CapacitySample is one sample. For a disk: its chain; for a machine: the
// sum of its disks' chains; for the store: the whole store.
type CapacitySample struct {
	Time      Time `json:"time"`
	Snapshots int  `json:"snapshots"`
	// LogicalBytes: what the snapshots hold without sharing, dedup or
	// compression (a chain: the bytes its entries name; the store: every
	// reference counted).
	LogicalBytes uint64 `json:"logical_bytes"`
	// UniqueBytes: after dedup (a chain: the distinct chunks it names).
	UniqueBytes uint64 `json:"unique_bytes"`
	// StoredBytes: after dedup and compression.
	StoredBytes uint64 `json:"stored_bytes"`
	// PerSnapshot (disks only): what each snapshot alone holds.
	PerSnapshot []SnapshotUnique `json:"per_snapshot,omitempty"`
}

// SnapshotUnique is one snapshot's unique bytes in a sample.
type SnapshotUnique struct {
	Name        string `json:"name"`
	UniqueBytes uint64 `json:"unique_bytes"`
}

func policyPath(name string) string { return "/v1/policies/" + url.PathEscape(name) }

// Policies lists the policies.
func (c *Client) Policies(ctx context.Context) ([]Policy, error) {
	return get[[]Policy](ctx, c, "/v1/policies")
}

// Policy describes one policy.
func (c *Client) Policy(ctx context.Context, name string) (Policy, error) {
	return get[Policy](ctx, c, policyPath(name))
}

// CreatePolicy creates a policy.
func (c *Client) CreatePolicy(ctx context.Context, req CreatePolicyRequest) (Policy, error) {
	return call[Policy](ctx, c, http.MethodPost, "/v1/policies", req)
}

// UpdatePolicy changes a policy.
func (c *Client) UpdatePolicy(ctx context.Context, name string, req UpdatePolicyRequest) (Policy, error) {
	return call[Policy](ctx, c, http.MethodPatch, policyPath(name), req)
}

// DeletePolicy deletes a policy; its snapshots stay.
func (c *Client) DeletePolicy(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, policyPath(name), nil, nil)
}

// ApplyPolicy applies a policy to disks and machines.
func (c *Client) ApplyPolicy(ctx context.Context, name string, req PolicyTargetsRequest) (Policy, error) {
	return call[Policy](ctx, c, http.MethodPost, policyPath(name)+"/apply", req)
}

// RemovePolicy removes a policy from disks and machines.
func (c *Client) RemovePolicy(ctx context.Context, name string, req PolicyTargetsRequest) (Policy, error) {
	return call[Policy](ctx, c, http.MethodPost, policyPath(name)+"/remove", req)
}

// Events lists events, oldest first.
func (c *Client) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	q := url.Values{}
	if f.Since > 0 {
		q.Set("since", strconv.FormatUint(f.Since, 10))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	for k, v := range map[string]string{"kind": f.Kind, "policy": f.Policy, "disk": f.Disk, "machine": f.Machine} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return get[[]Event](ctx, c, withQuery("/v1/events", q))
}

// CapacityHistory returns the capacity samples of a disk (kind
// TargetDisk), a machine (TargetMachine) or the store ("store", name "")
// taken in [since, until] (zero: unbounded).
func (c *Client) CapacityHistory(ctx context.Context, kind, name string, since, until Time) (CapacityHistory, error) {
	path := "/v1/capacity/history"
	switch kind {
	case TargetDisk:
		path = diskPath(name) + "/capacity/history"
	case TargetMachine:
		path = machinePath(name) + "/capacity/history"
	}
	q := url.Values{}
	if !since.IsZero() {
		q.Set("since", since.UTC().Format(TimeLayout))
	}
	if !until.IsZero() {
		q.Set("until", until.UTC().Format(TimeLayout))
	}
	return get[CapacityHistory](ctx, c, withQuery(path, q))
}
