package daemon

import (
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

func (d *Daemon) handleListDisks(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, d.ListDisks())
	return nil
}

func (d *Daemon) handleCreateDisk(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateDiskRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	disk, err := d.CreateDisk(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/disks/"+url.PathEscape(disk.Name))
	writeJSON(w, http.StatusCreated, disk)
	return nil
}

func (d *Daemon) handleGetDisk(w http.ResponseWriter, r *http.Request) error {
	disk, err := d.GetDisk(r.PathValue("name"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, disk)
	return nil
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
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, disk)
	return nil
}

func (d *Daemon) handleListExports(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, d.Exports())
	return nil
}

func (d *Daemon) handleInfo(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, d.Info())
	return nil
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if problems := d.Health(); len(problems) > 0 {
		return errorf(block.ErrShutdown, "unhealthy: %s", strings.Join(problems, "; "))
	}
	writeJSON(w, http.StatusOK, api.Health{Status: "ok"})
	return nil
}

// Info describes the running daemon.
func (d *Daemon) Info() api.Info {
	d.mu.Lock()
	n := len(d.disks)
	d.mu.Unlock()
	return api.Info{
		Version:       Version,
		PID:           os.Getpid(),
		Started:       d.started.UTC(),
		UptimeSeconds: time.Since(d.started).Seconds(),
		DataDir:       d.cfg.DataDir,
		APISocket:     d.apiAddr(),
		NBDSocket:     d.nbdListener.Addr().String(),
		NBDListen:     d.tcpAddr(),
		Disks:         n,
	}
}

// Health returns what is wrong, or nothing: the store answers, the NBD
// listeners serve and the NBD socket file is still there.
func (d *Daemon) Health() []string {
	var problems []string
	d.mu.Lock()
	if d.closing {
		problems = append(problems, "cairnd is shutting down")
	}
	if d.nbdErr != nil {
		problems = append(problems, d.nbdErr.Error())
	}
	d.mu.Unlock()
	if len(problems) == 0 {
		var probe struct{}
		if err := d.store.GetRecord("health/probe", &probe); err != nil && !errors.Is(err, block.ErrNotFound) {
			problems = append(problems, "store: "+err.Error())
		}
	}
	if d.cfg.NBDListener == nil {
		if _, err := os.Stat(d.cfg.NBDSocket); err != nil {
			problems = append(problems, "nbd socket: "+err.Error())
		}
	}
	return problems
}
