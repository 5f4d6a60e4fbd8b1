package daemon

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (d *Daemon) handleCreateSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateSnapshotRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	disk := r.PathValue("name")
	snap, err := d.CreateSnapshot(r.Context(), disk, req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/disks/"+url.PathEscape(disk)+"/snapshots/"+url.PathEscape(snap.Name))
	writeJSON(w, http.StatusAccepted, snap)
	return nil
}

func (d *Daemon) handleListSnapshots(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ListSnapshots(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleGetSnapshot(w http.ResponseWriter, r *http.Request) error {
	out, err := d.GetSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleDeleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	out, err := d.DeleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleRollback(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	task, err := d.Rollback(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/tasks/"+url.PathEscape(task.ID))
	writeJSON(w, http.StatusAccepted, task)
	return nil
}

func (d *Daemon) handleChanges(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	for key := range q {
		if key != "from" && key != "to" {
			return invalidf("unknown query parameter %q (accepted: from, to)", key)
		}
	}
	out, err := d.Changes(r.Context(), r.PathValue("name"), strings.TrimSpace(q.Get("from")), strings.TrimSpace(q.Get("to")))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleChainCapacity(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ChainCapacity(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleCapacity(w http.ResponseWriter, r *http.Request) error {
	out, err := d.Capacity(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleStoreStats(w http.ResponseWriter, r *http.Request) error {
	out, err := d.StoreStats(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) handleVerify(w http.ResponseWriter, r *http.Request) error {
	var req api.VerifyRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	task, err := d.Verify(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/tasks/"+url.PathEscape(task.ID))
	writeJSON(w, http.StatusAccepted, task)
	return nil
}

func (d *Daemon) handleListTasks(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, d.tasks.list())
	return nil
}

func (d *Daemon) handleGetTask(w http.ResponseWriter, r *http.Request) error {
	task, err := d.tasks.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, task)
	return nil
}
