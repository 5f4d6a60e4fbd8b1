package daemon

import (
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/daemon/api"
)

// The handlers of the routes in http.go: each decodes its request, calls
// the Daemon method that does the work, and answers with reply.

// reply answers out as JSON with status, or returns err for wrap to answer.
func reply(w http.ResponseWriter, status int, out any, err error) error {
	if err != nil {
		return err
	}
	writeJSON(w, status, out)
	return nil
}

// replyAt is reply with the Location of what the request made.
func replyAt(w http.ResponseWriter, status int, location string, out any, err error) error {
	if err == nil {
		w.Header().Set("Location", location)
	}
	return reply(w, status, out, err)
}

// replyTask answers a task the request started: 202 and its Location.
func replyTask(w http.ResponseWriter, task api.Task, err error) error {
	return replyAt(w, http.StatusAccepted, "/v1/tasks/"+url.PathEscape(task.ID), task, err)
}

func diskPath(name string) string { return "/v1/disks/" + url.PathEscape(name) }

func (d *Daemon) handleListDisks(w http.ResponseWriter, r *http.Request) error {
	out := slices.DeleteFunc(d.ListDisks(), func(k api.Disk) bool { return !d.mayRead(r, k.Name) })
	return reply(w, http.StatusOK, out, nil)
}

func (d *Daemon) handleCreateDisk(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateDiskRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	setAuditTarget(r, req.Name)
	if err := d.authorize(r, access.Operator, "disk create", req.Name); err != nil {
		return err
	}
	if req.Adopt != "" {
		if err := d.authorize(r, access.Admin, "disk create with adopt", req.Name); err != nil {
			return err
		}
	}
	disk, err := d.CreateDisk(r.Context(), req)
	return replyAt(w, http.StatusCreated, diskPath(disk.Name), disk, err)
}

func (d *Daemon) handleGetDisk(w http.ResponseWriter, r *http.Request) error {
	disk, err := d.GetDisk(r.PathValue("name"))
	return reply(w, http.StatusOK, disk, err)
}

func (d *Daemon) handleDeleteDisk(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, fieldForce, fieldDeleteAdopted, fieldWithSnapshots)
	if err != nil {
		return err
	}
	opts := api.DeleteDiskOptions{Force: q[fieldForce], DeleteAdopted: q[fieldDeleteAdopted], WithSnapshots: q[fieldWithSnapshots]}
	if err := d.DeleteDisk(r.Context(), r.PathValue("name"), opts); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleGrowDisk(w http.ResponseWriter, r *http.Request) error {
	var req api.GrowDiskRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	disk, err := d.GrowDisk(r.Context(), r.PathValue("name"), req.Size)
	return reply(w, http.StatusOK, disk, err)
}

func (d *Daemon) handleFlatten(w http.ResponseWriter, r *http.Request) error {
	var req api.FlattenRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	task, err := d.Flatten(r.Context(), r.PathValue("name"), req)
	return replyTask(w, task, err)
}

func (d *Daemon) handleListSnapshots(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ListSnapshots(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleCreateSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSnapshotRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	disk := r.PathValue("name")
	snap, err := d.CreateSnapshot(r.Context(), disk, req)
	return replyAt(w, http.StatusAccepted, diskPath(disk)+"/snapshots/"+url.PathEscape(snap.Name), snap, err)
}

func (d *Daemon) handleGetSnapshot(w http.ResponseWriter, r *http.Request) error {
	out, err := d.GetSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"))
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleDeleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, fieldForce)
	if err != nil {
		return err
	}
	out, err := d.DeleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q[fieldForce])
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleRollback(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, fieldForce)
	if err != nil {
		return err
	}
	task, err := d.Rollback(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q[fieldForce])
	return replyTask(w, task, err)
}

func (d *Daemon) handleChanges(w http.ResponseWriter, r *http.Request) error {
	q, err := queryStrings(r, "from", "to")
	if err != nil {
		return err
	}
	out, err := d.Changes(r.Context(), r.PathValue("name"), q["from"], q["to"])
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleChainCapacity(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ChainCapacity(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleCapacity(w http.ResponseWriter, r *http.Request) error {
	out, err := d.Capacity(r.Context())
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleStoreStats(w http.ResponseWriter, r *http.Request) error {
	out, err := d.StoreStats(r.Context())
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleVerify(w http.ResponseWriter, r *http.Request) error {
	var req api.VerifyRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	task, err := d.Verify(r.Context(), req)
	return replyTask(w, task, err)
}

func (d *Daemon) handleListTasks(w http.ResponseWriter, r *http.Request) error {
	q, err := queryStrings(r, "kind", "state", "disk", "target")
	if err != nil {
		return err
	}
	out := d.tasks.list(api.TaskFilter{Kind: q["kind"], State: q["state"], Disk: q["disk"], Target: q["target"]})
	out = slices.DeleteFunc(out, func(t api.Task) bool { return d.authorize(r, access.Reader, "", t.Disk) != nil })
	return reply(w, http.StatusOK, out, nil)
}

func (d *Daemon) handleGetTask(w http.ResponseWriter, r *http.Request) error {
	task, err := d.tasks.get(r.PathValue("id"))
	if err == nil {
		err = d.authorize(r, access.Reader, "task get", task.Disk)
	}
	return reply(w, http.StatusOK, task, err)
}

func (d *Daemon) handleCancelTask(w http.ResponseWriter, r *http.Request) error {
	task, err := d.CancelTask(r.Context(), r.PathValue("id"))
	return reply(w, http.StatusOK, task, err)
}

func (d *Daemon) handleListExports(w http.ResponseWriter, r *http.Request) error {
	out := slices.DeleteFunc(d.Exports(), func(e api.Export) bool { return !d.mayRead(r, e.Disk) })
	return reply(w, http.StatusOK, out, nil)
}

func (d *Daemon) handleListAttachments(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.Attachments(), nil)
}

func (d *Daemon) handleAttach(w http.ResponseWriter, r *http.Request) error {
	var req api.AttachRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	a, err := d.Attach(r.Context(), req)
	return replyAt(w, http.StatusCreated, "/v1/attachments/"+strings.TrimPrefix(a.Device, "/dev/"), a, err)
}

func (d *Daemon) handleGetAttachment(w http.ResponseWriter, r *http.Request) error {
	a, err := d.GetAttachment(r.PathValue("device"))
	return reply(w, http.StatusOK, a, err)
}

func (d *Daemon) handleDetach(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, fieldForce)
	if err != nil {
		return err
	}
	if err := d.Detach(r.Context(), r.PathValue("device"), q[fieldForce]); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleInfo(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.Info(), nil)
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if problems := d.Health(); len(problems) > 0 {
		return errorf(block.ErrShutdown, "unhealthy: %s", strings.Join(problems, "; "))
	}
	return reply(w, http.StatusOK, api.Health{Status: "ok", Warnings: d.Warnings()}, nil)
}
