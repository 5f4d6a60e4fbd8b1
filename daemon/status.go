package daemon

import (
	"errors"
	"os"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Info describes the running daemon.
func (d *Daemon) Info() api.Info {
	d.mu.Lock()
	n := len(d.disks)
	d.mu.Unlock()
	return api.Info{
		Version:       Version,
		PID:           os.Getpid(),
		Started:       api.At(d.started),
		UptimeSeconds: time.Since(d.started).Seconds(),
		DataDir:       d.cfg.DataDir,
		APISocket:     d.apiAddr(),
		NBDSocket:     d.nbdListener.Addr().String(),
		NBDListen:     d.tcpAddr(),
		MetricsListen: d.metricsAddr(),
		Disks:         n,
		Store:         d.StoreSpace(),
	}
}

// Warnings returns what an operator should act on that does not make
// cairnd unhealthy: a filling store (a restart would not help), a store
// broken by a failed write (guest I/O goes on; the operator restarts once
// the disk is healthy, the watchdog must not restart it into a failing
// disk).
func (d *Daemon) Warnings() []string {
	var out []string
	sp := d.StoreSpace()
	if sp.Broken != "" {
		out = append(out, sp.Broken)
	}
	if why := d.store.Suspect(); why != "" {
		out = append(out, why)
	}
	if sp.Warning != "" {
		out = append(out, sp.Warning)
	}
	return out
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
		if err := d.store.GetRecord(store.HealthProbeKey, &probe); err != nil && !errors.Is(err, block.ErrNotFound) {
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
