package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// The events log (GET /v1/events, cairn events): every run of a policy,
// every time point skipped or missed, every automatic snapshot deleted
// (at the end of its retention or to make room) or kept past it, every
// failure. Each event is a record under store.EventKey(id), ids from the
// store's "event" sequence, so they sort by id and a client can page with
// since=ID. Events older than event_history are pruned.

// eventRecordVersion is the format of eventRecord. A record of another
// version is skipped when listed (with a warning), never misread.
const eventRecordVersion = 1

// eventRecord is one event as stored: the API's event and a version.
type eventRecord struct {
	Version int `json:"version"`
	api.Event
}

// Limits of a listing.
const (
	defaultEventLimit = 100
	maxEventLimit     = 10000
)

// eventLog writes and lists events.
type eventLog struct {
	d *Daemon

	mu         sync.Mutex // serialises pruning
	lastPruned time.Time  // guarded by mu
	warned     bool       // guarded by mu: an unreadable record was reported
}

// event records one event and logs it. A failure to record it is logged:
// the event log never stops the work it describes.
func (d *Daemon) event(e api.Event) {
	e.Time = api.At(d.clock.Now())
	attrs := []any{"kind", e.Kind}
	for k, v := range map[string]string{"policy": e.Policy, "disk": e.Disk, "machine": e.Machine, "snapshot": e.Snapshot} {
		if v != "" {
			attrs = append(attrs, k, v)
		}
	}
	switch e.Kind {
	case api.EventFailed, api.EventMissed, api.EventKept, api.EventSkipped:
		d.log.Warn(e.Message, attrs...)
	default:
		d.log.Info(e.Message, attrs...)
	}
	d.metrics.policyEvent(e)
	id, err := d.store.NextID(store.EventIDSequence)
	if err == nil {
		e.ID = id
		err = d.store.PutRecord(store.EventKey(id), eventRecord{Version: eventRecordVersion, Event: e})
	}
	if err != nil {
		d.log.Warn("could not record an event in the events log", append(attrs, "err", err)...)
	}
}

// Events lists the events f selects, oldest first: those after f.Since,
// or without it the newest f.Limit.
func (d *Daemon) Events(ctx context.Context, f api.EventFilter) ([]api.Event, error) {
	if f.Limit <= 0 {
		f.Limit = defaultEventLimit
	}
	f.Limit = min(f.Limit, maxEventLimit)
	out := []api.Event{}
	from, reverse := "", f.Since == 0
	if !reverse {
		from = store.EventKey(f.Since + 1)
	}
	err := d.store.ScanRecords(store.EventPrefix, from, reverse, func(key string, raw []byte) bool {
		e, ok := d.events.decode(key, raw)
		if ok && eventMatches(f, e) {
			out = append(out, e)
		}
		return len(out) < f.Limit && ctx.Err() == nil
	})
	if err != nil {
		return nil, err
	}
	if reverse {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, ctx.Err()
}

func (l *eventLog) decode(key string, raw []byte) (api.Event, bool) {
	var r eventRecord
	err := json.Unmarshal(raw, &r)
	if err == nil && r.Version != eventRecordVersion {
		err = fmt.Errorf("format version %d, this cairnd reads version %d (written by a newer cairnd?)", r.Version, eventRecordVersion)
	}
	if err != nil {
		l.mu.Lock()
		warn := !l.warned
		l.warned = true
		l.mu.Unlock()
		if warn {
			l.d.log.Warn("skipping events log records this cairnd cannot read", "key", key, "err", err)
		}
		return api.Event{}, false
	}
	return r.Event, true
}

func matchesField(want, got string) bool { return want == "" || want == got }

func eventMatches(f api.EventFilter, e api.Event) bool {
	return matchesField(f.Kind, e.Kind) && matchesField(f.Policy, e.Policy) && matchesField(f.Disk, e.Disk) && matchesField(f.Machine, e.Machine)
}

// pruneEvents deletes the events older than event_history, at most once
// an hour.
func (d *Daemon) pruneEvents(now time.Time) {
	l := &d.events
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastPruned) < time.Hour && !l.lastPruned.After(now) {
		return
	}
	l.lastPruned = now
	cutoff := now.Add(-time.Duration(d.cfg.EventHistory))
	var old []string
	err := d.store.ScanRecords(store.EventPrefix, "", false, func(key string, raw []byte) bool {
		var r eventRecord
		if json.Unmarshal(raw, &r) != nil || r.Version != eventRecordVersion {
			return true // not this cairnd's to judge (Events skips it too)
		}
		if !r.Time.Time.Before(cutoff) {
			return false // ids grow with time: the rest are newer
		}
		old = append(old, key)
		return len(old) < 10000
	})
	if err == nil && len(old) > 0 {
		err = d.store.Update(nil, old)
	}
	if err != nil {
		d.log.Warn("could not prune the events log", "err", err)
	}
}

// checkEventFilter validates the query of GET /v1/events.
func checkEventFilter(f api.EventFilter) error {
	kinds := []string{api.EventTaken, api.EventSkipped, api.EventMissed, api.EventFailed, api.EventExpired, api.EventEvicted, api.EventKept, api.EventDropped}
	if f.Kind != "" && !strings.Contains(","+strings.Join(kinds, ",")+",", ","+f.Kind+",") {
		return invalidField("kind", "kind %q: must be one of %s", f.Kind, strings.Join(kinds, ", "))
	}
	if f.Limit < 0 || f.Limit > maxEventLimit {
		return invalidField("limit", "limit %d: must be from 1 to %d", f.Limit, maxEventLimit)
	}
	return nil
}
