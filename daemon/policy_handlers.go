package daemon

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// The handlers of policies, the events log and the capacity history.

func policyPath(name string) string { return "/v1/policies/" + url.PathEscape(name) }

func (d *Daemon) handleListPolicies(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.ListPolicies(r.Context()), nil)
}

func (d *Daemon) handleCreatePolicy(w http.ResponseWriter, r *http.Request) error {
	var req api.CreatePolicyRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	p, err := d.CreatePolicy(r.Context(), req)
	return replyAt(w, http.StatusCreated, policyPath(p.Name), p, err)
}

func (d *Daemon) handleGetPolicy(w http.ResponseWriter, r *http.Request) error {
	p, err := d.GetPolicy(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, p, err)
}

func (d *Daemon) handleUpdatePolicy(w http.ResponseWriter, r *http.Request) error {
	var req api.UpdatePolicyRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	p, err := d.UpdatePolicy(r.Context(), r.PathValue("name"), req)
	return reply(w, http.StatusOK, p, err)
}

func (d *Daemon) handleDeletePolicy(w http.ResponseWriter, r *http.Request) error {
	if err := d.DeletePolicy(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleApplyPolicy(w http.ResponseWriter, r *http.Request) error {
	var req api.PolicyTargetsRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	p, err := d.ApplyPolicy(r.Context(), r.PathValue("name"), req)
	return reply(w, http.StatusOK, p, err)
}

func (d *Daemon) handleRemovePolicy(w http.ResponseWriter, r *http.Request) error {
	var req api.PolicyTargetsRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	p, err := d.RemovePolicy(r.Context(), r.PathValue("name"), req)
	return reply(w, http.StatusOK, p, err)
}

func (d *Daemon) handleEvents(w http.ResponseWriter, r *http.Request) error {
	q, err := queryStrings(r, "since", "limit", "kind", "policy", "disk", "machine")
	if err != nil {
		return err
	}
	f := api.EventFilter{Kind: q["kind"], Policy: q["policy"], Disk: q["disk"], Machine: q["machine"]}
	if s := q["since"]; s != "" {
		if f.Since, err = strconv.ParseUint(s, 10, 64); err != nil {
			return invalidField("since", "since %q: must be an event id (a whole number)", s)
		}
	}
	if s := q["limit"]; s != "" {
		if f.Limit, err = strconv.Atoi(s); err != nil || f.Limit < 1 {
			return invalidField("limit", "limit %q: must be a whole number from 1 to %d", s, maxEventLimit)
		}
	}
	if err := checkEventFilter(f); err != nil {
		return err
	}
	events, err := d.Events(r.Context(), f)
	return reply(w, http.StatusOK, events, err)
}

// historyRange parses the since and until query parameters (RFC 3339).
func historyRange(r *http.Request) (since, until time.Time, err error) {
	q, err := queryStrings(r, "since", "until")
	if err != nil {
		return since, until, err
	}
	for _, p := range []struct {
		name string
		into *time.Time
	}{{"since", &since}, {"until", &until}} {
		if s := q[p.name]; s != "" {
			if *p.into, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return since, until, invalidField(p.name, "%s %q: must be an RFC 3339 time, such as 2026-11-23T14:00:00Z", p.name, s)
			}
		}
	}
	return since, until, nil
}

func (d *Daemon) handleDiskCapacityHistory(w http.ResponseWriter, r *http.Request) error {
	return d.replyHistory(w, r, api.TargetDisk, r.PathValue("name"))
}

func (d *Daemon) handleMachineCapacityHistory(w http.ResponseWriter, r *http.Request) error {
	return d.replyHistory(w, r, api.TargetMachine, r.PathValue("name"))
}

func (d *Daemon) handleCapacityHistory(w http.ResponseWriter, r *http.Request) error {
	return d.replyHistory(w, r, capacityStore, "")
}

func (d *Daemon) replyHistory(w http.ResponseWriter, r *http.Request, kind, name string) error {
	since, until, err := historyRange(r)
	if err != nil {
		return err
	}
	h, err := d.CapacityHistory(r.Context(), kind, name, since, until)
	return reply(w, http.StatusOK, h, err)
}
