package daemon

import (
	"net/http"
	"net/url"

	"github.com/cairn-storage/cairn/daemon/api"
)

// The handlers of /v1/machines (routes in http.go).

func machinePath(name string) string { return "/v1/machines/" + url.PathEscape(name) }

func (d *Daemon) handleListMachines(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.ListMachines(), nil)
}

func (d *Daemon) handleCreateMachine(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateMachineRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	m, err := d.CreateMachine(r.Context(), req)
	return replyAt(w, http.StatusCreated, machinePath(m.Name), m, err)
}

func (d *Daemon) handleGetMachine(w http.ResponseWriter, r *http.Request) error {
	m, err := d.GetMachine(r.PathValue("name"))
	return reply(w, http.StatusOK, m, err)
}

func (d *Daemon) handleUpdateMachine(w http.ResponseWriter, r *http.Request) error {
	var req api.UpdateMachineRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	m, err := d.UpdateMachine(r.Context(), r.PathValue("name"), req)
	return reply(w, http.StatusOK, m, err)
}

func (d *Daemon) handleDeleteMachine(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force", "with_snapshots", "with_disks")
	if err != nil {
		return err
	}
	opts := api.DeleteMachineOptions{Force: q["force"], WithSnapshots: q["with_snapshots"], WithDisks: q["with_disks"]}
	if err := d.DeleteMachine(r.Context(), r.PathValue("name"), opts); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (d *Daemon) handleCreateMachineSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateMachineSnapshotRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	task, err := d.CreateMachineSnapshot(r.Context(), r.PathValue("name"), req)
	return replyTask(w, task, err)
}

func (d *Daemon) handleListMachineSnapshots(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ListMachineSnapshots(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleGetMachineSnapshot(w http.ResponseWriter, r *http.Request) error {
	out, err := d.GetMachineSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"))
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleDeleteMachineSnapshot(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	out, err := d.DeleteMachineSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
	return reply(w, http.StatusOK, out, err)
}

func (d *Daemon) handleRollbackMachine(w http.ResponseWriter, r *http.Request) error {
	q, err := queryBools(r, "force")
	if err != nil {
		return err
	}
	task, err := d.RollbackMachine(r.Context(), r.PathValue("name"), r.PathValue("snapshot"), q["force"])
	return replyTask(w, task, err)
}

func imagePath(name string) string { return "/v1/images/" + url.PathEscape(name) }

func (d *Daemon) handleListImages(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, d.ListImages(r.Context()), nil)
}

func (d *Daemon) handleCreateImage(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateImageRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	task, err := d.CreateImage(r.Context(), req)
	return replyTask(w, task, err)
}

func (d *Daemon) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	im, err := d.GetImage(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, im, err)
}

func (d *Daemon) handleDeleteImage(w http.ResponseWriter, r *http.Request) error {
	out, err := d.DeleteImage(r.Context(), r.PathValue("name"))
	return reply(w, http.StatusOK, out, err)
}
