package daemon

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/cairn-storage/cairn/block"
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
	return reply(w, http.StatusOK, d.ListDisks(), nil)
}

func (d *Daemon) handleCreateDisk(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateDiskRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	disk, err := d.CreateDisk(r.Context(), req)
	return replyAt(w, http.StatusCreated, diskPath(disk.Name), disk, err)
}

func (d *Daemon) handleGetDisk(w http.ResponseWriter, r *http.Request) error {
	disk, err := d.GetDisk(r.PathValue("name"))
	return reply(w, http.StatusOK, disk, err)
}

func (d *Daemon) handleDeleteDisk(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force", "delete_adopted")
	if err != nil {
		return err
	}
	opts := api.DeleteDiskOptions{Force: q["force"], DeleteAdopted: q["delete_adopted"]}
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
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	out, err := d.DeleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleRollback(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	task, err := d.Rollback(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
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
	return reply(w, http.StatusOK, d.tasks.list(), nil)
}

func (d *Daemon) handleGetTask(w http.ResponseWriter, r *http.Request) error {
	task, err := d.tasks.get(r.PathValue("id"))
	return reply(w, http.StatusOK, task, err)
}

func (d *Daemon) handleListExports(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.Exports(), nil)
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
