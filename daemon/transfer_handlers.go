package daemon

import (
	"net/http"

	"github.com/cairn-storage/cairn/daemon/api"
)

// The handlers of transfers (routes in http.go; transfer.go).

func (d *Daemon) handleExportDisk(w http.ResponseWriter, r *http.Request) error {
	var req api.ExportRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	out, err := d.ExportDisk(r.Context(), r.PathValue("name"), req)
	return replyTransfer(w, out, err)
}

func (d *Daemon) handleExportImage(w http.ResponseWriter, r *http.Request) error {
	out, err := d.ExportImage(r.Context(), r.PathValue("name"))
	return replyTransfer(w, out, err)
}

func (d *Daemon) handleImport(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	out, err := d.Import(r.Context(), req)
	return replyTransfer(w, out, err)
}

func (d *Daemon) handleTransferProgress(w http.ResponseWriter, r *http.Request) error {
	var req api.TransferProgress
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	t, err := d.ReportProgress(r.Context(), r.PathValue("id"), req)
	return reply(w, http.StatusOK, t, err)
}

func (d *Daemon) handleFinishTransfer(w http.ResponseWriter, r *http.Request) error {
	var req api.FinishTransfer
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	t, err := d.FinishTransfer(r.Context(), r.PathValue("id"), req)
	return reply(w, http.StatusOK, t, err)
}

// replyTransfer answers a transfer that started: 201 with its task's
// Location.
func replyTransfer(w http.ResponseWriter, out api.Transfer, err error) error {
	return replyAt(w, http.StatusCreated, "/v1/tasks/"+out.Task.ID, out, err)
}
