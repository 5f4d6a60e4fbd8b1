package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Machines (docs/machines.md): a VM as Cairn sees it — an ordered group of
// disks, its configuration document kept verbatim, and the socket of its
// guest agent. A disk belongs to at most one machine. Machine snapshots
// are in machine_snapshot.go, the guest agent's freeze in freeze.go.

// Limits of a machine.
const (
	MaxMachineDisks = 64
	MaxConfigBytes  = 256 << 10
)

// machine is one machine in memory; rec and snaps are guarded by
// Daemon.mu.
type machine struct {
	rec   machineRecord
	snaps map[string]*machineSnapRecord
	// reserved: names of machine snapshots being taken (guarded by
	// Daemon.mu), so two requests cannot take the same name.
	reserved map[string]bool
	// op serialises the machine's snapshots, rollbacks and snapshot
	// deletes; taken in task goroutines without Daemon.mu.
	op sync.Mutex
}

// loadMachines reads the machines and their snapshots at start, finishing
// deletes a crash interrupted.
func (d *Daemon) loadMachines() error {
	d.machines = map[string]*machine{}
	err := d.store.ListRecords(store.MachinePrefix, func(key string, raw []byte) error {
		var rec machineRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("machine record %s: %w", key, err)
		}
		m := &machine{rec: rec, snaps: map[string]*machineSnapRecord{}, reserved: map[string]bool{}}
		err := d.store.ListRecords(store.MachineSnapshotPrefix(rec.ID), func(key string, raw []byte) error {
			var s machineSnapRecord
			if err := json.Unmarshal(raw, &s); err != nil {
				return fmt.Errorf("machine snapshot record %s: %w", key, err)
			}
			m.snaps[s.Name] = &s
			return nil
		})
		if err != nil {
			return err
		}
		d.machines[rec.Name] = m
		return nil
	})
	if err != nil {
		return fmt.Errorf("load machines: %w", err)
	}
	for _, m := range d.machines {
		for _, s := range m.snaps {
			if s.Deleting {
				if err := d.finishMachineSnapshotDelete(context.Background(), m, s); err != nil {
					d.log.Warn("finishing an interrupted machine snapshot delete; retried at the next start", "machine", m.rec.Name, "snapshot", s.Name, "err", err)
				}
			}
		}
	}
	return nil
}

// machineOf returns the machine disk belongs to, or nil. Caller holds d.mu.
func (d *Daemon) machineOf(disk string) *machine {
	for _, m := range d.machines {
		if slices.Contains(m.rec.Disks, disk) {
			return m
		}
	}
	return nil
}

// lookupMachine finds a machine by the name in a request. Caller holds d.mu.
func (d *Daemon) lookupMachine(name string) (*machine, error) {
	if err := checkDiskName(fieldName, name); err != nil {
		return nil, err
	}
	m := d.machines[name]
	if m == nil {
		return nil, errorf(block.ErrNotFound, "machine %q not found", name)
	}
	return m, nil
}

// checkMachineDisks applies the rules of a machine's disk list: at least
// one, at most MaxMachineDisks, each an existing disk named once and in no
// other machine than self. Caller holds d.mu.
func (d *Daemon) checkMachineDisks(disks []string, self *machine) error {
	if len(disks) == 0 {
		return invalidField(fieldDisks, "disks: a machine has at least one disk")
	}
	if len(disks) > MaxMachineDisks {
		return invalidField(fieldDisks, "disks: %d disks is more than the limit of %d", len(disks), MaxMachineDisks)
	}
	seen := map[string]bool{}
	for _, name := range disks {
		if err := checkDiskName(fieldDisks, name); err != nil {
			return err
		}
		if seen[name] {
			return invalidField(fieldDisks, "disks: %q is listed twice", name)
		}
		seen[name] = true
		if d.disks[name] == nil {
			return fieldError(block.ErrNotFound, fieldDisks, "disks: disk %q not found (create it first: cairn disk create %s --size SIZE)", name, name)
		}
		if m := d.machineOf(name); m != nil && m != self {
			return fieldError(block.ErrInUse, fieldDisks, "disks: disk %q belongs to machine %q; a disk is in at most one machine", name, m.rec.Name)
		}
	}
	return nil
}

// checkConfig applies the rules of a configuration document.
func checkConfig(c *api.Config) error {
	if c == nil {
		return nil
	}
	if len(c.Data) > MaxConfigBytes {
		return invalidField(fieldConfig, "config: %d bytes is more than the limit of %d", len(c.Data), MaxConfigBytes)
	}
	if !utf8.ValidString(c.Data) {
		return invalidField(fieldConfig, "config: the document must be UTF-8 text")
	}
	if _, _, err := mime.ParseMediaType(c.MediaType); err != nil || !strings.Contains(c.MediaType, "/") {
		return invalidField(fieldConfig, "config: media_type %q is not a media type (such as application/xml or application/json)", c.MediaType)
	}
	return nil
}

// checkAgentSocket applies the rule of a guest agent socket: an absolute
// path inside one of the directories agent_socket_dirs allows (cairnd
// connects to it as itself, so a client must not be able to point it at
// any socket on the host). The socket itself may not exist yet.
func (d *Daemon) checkAgentSocket(path string) error {
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return invalidField(fieldAgentSocket, "agent_socket: %q must be a clean absolute path", path)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		dir = filepath.Dir(path) // not made yet: checked as written
	}
	for _, allowed := range d.cfg.agentSocketDirs() {
		if real, err := filepath.EvalSymlinks(allowed); err == nil {
			allowed = real
		}
		if dir == allowed {
			return nil
		}
	}
	return fieldError(block.ErrInvalid, fieldAgentSocket, "agent_socket: %s is not in a directory cairnd may connect to (agent_socket_dirs: %s); put the VM's agent socket there",
		path, strings.Join(d.cfg.agentSocketDirs(), ", "))
}

// CreateMachine groups existing disks into a machine. Its record is
// durable when it returns.
func (d *Daemon) CreateMachine(ctx context.Context, req api.CreateMachineRequest) (api.Machine, error) {
	if err := checkDiskName(fieldName, req.Name); err != nil {
		return api.Machine{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Machine{}, err
	}
	if err := checkConfig(req.Config); err != nil {
		return api.Machine{}, err
	}
	if err := d.checkAgentSocket(req.AgentSocket); err != nil {
		return api.Machine{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkChange(); err != nil {
		return api.Machine{}, err
	}
	if d.machines[req.Name] != nil {
		return api.Machine{}, fieldError(block.ErrExists, fieldName, "machine %q already exists", req.Name)
	}
	rec := machineRecord{Name: req.Name, Disks: slices.Clone(req.Disks), Config: req.Config,
		AgentSocket: req.AgentSocket, Description: req.Description, Created: time.Now().UTC()}
	var created []*Disk
	if req.FromImage != "" {
		if len(req.Disks) > 0 || req.Config != nil {
			return api.Machine{}, invalidField(fieldFromImage, "from_image: the machine takes its disks and configuration from the image; leave disks and config out")
		}
		prov, disks, err := d.provisionFromImage(ctx, req.Name, req.FromImage)
		if err != nil {
			return api.Machine{}, err
		}
		rec.Disks, rec.Config, created = prov.Disks, prov.Config, disks
	} else if err := d.checkMachineDisks(req.Disks, nil); err != nil {
		return api.Machine{}, err
	}
	undo := func() { d.unprovision(created) }
	id, err := d.store.NextID(store.MachineIDSequence)
	if err != nil {
		undo()
		return api.Machine{}, fmt.Errorf("allocate machine id: %w", err)
	}
	rec.ID = id
	if err := d.putDurable(store.MachineKey(rec.Name), rec); err != nil {
		undo()
		return api.Machine{}, err
	}
	m := &machine{rec: rec, snaps: map[string]*machineSnapRecord{}, reserved: map[string]bool{}}
	d.machines[rec.Name] = m
	d.log.Info("machine created", "machine", rec.Name, "disks", rec.Disks)
	return d.machineToAPI(m), nil
}

// UpdateMachine changes a machine's disks, configuration, agent socket or
// description. Its snapshots keep the disks and configuration they had.
func (d *Daemon) UpdateMachine(ctx context.Context, name string, req api.UpdateMachineRequest) (api.Machine, error) {
	if req.Description != nil {
		if err := checkDescription(*req.Description); err != nil {
			return api.Machine{}, err
		}
	}
	if req.Config != nil && req.Config.Data != "" {
		if err := checkConfig(req.Config); err != nil {
			return api.Machine{}, err
		}
	}
	if req.AgentSocket != nil {
		if err := d.checkAgentSocket(*req.AgentSocket); err != nil {
			return api.Machine{}, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkChange(); err != nil {
		return api.Machine{}, err
	}
	m, err := d.lookupMachine(name)
	if err != nil {
		return api.Machine{}, err
	}
	rec := m.rec
	if req.Disks != nil {
		if err := d.checkMachineDisks(*req.Disks, m); err != nil {
			return api.Machine{}, err
		}
		rec.Disks = slices.Clone(*req.Disks)
	}
	if req.Config != nil {
		rec.Config = req.Config
		if req.Config.Data == "" {
			rec.Config = nil
		}
	}
	if req.AgentSocket != nil {
		rec.AgentSocket = *req.AgentSocket
	}
	if req.Description != nil {
		rec.Description = *req.Description
	}
	if err := d.putDurable(store.MachineKey(rec.Name), rec); err != nil {
		return api.Machine{}, err
	}
	m.rec = rec
	d.log.Info("machine changed", "machine", rec.Name, "disks", rec.Disks)
	return d.machineToAPI(m), nil
}

// ListMachines returns every machine, by name.
func (d *Daemon) ListMachines() []api.Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Machine, 0, len(d.machines))
	for _, m := range d.machines {
		out = append(out, d.machineToAPI(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// GetMachine describes one machine.
func (d *Daemon) GetMachine(name string) (api.Machine, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.lookupMachine(name)
	if err != nil {
		return api.Machine{}, err
	}
	return d.machineToAPI(m), nil
}

// DeleteMachine deletes a machine's record. Its machine snapshots go with
// it only with opts.WithSnapshots (their member snapshots are deleted);
// its disks stay unless opts.WithDisks, and then their own snapshots go
// too only with opts.WithSnapshots. Every refusal comes before anything
// is deleted.
func (d *Daemon) DeleteMachine(ctx context.Context, name string, opts api.DeleteMachineOptions) error {
	d.mu.Lock()
	m, err := d.lookupMachine(name)
	if err == nil {
		err = d.checkChange()
	}
	if err == nil && len(m.snaps)+len(m.reserved) > 0 && !opts.WithSnapshots {
		err = errorf(block.ErrInUse, "machine %q has %d machine snapshot(s): delete them first (cairn machine snapshot delete %s NAME), or delete the machine with --with-snapshots", name, len(m.snaps)+len(m.reserved), name)
	}
	diskOpts := api.DeleteDiskOptions{Force: opts.Force, WithSnapshots: opts.WithSnapshots}
	if err == nil && opts.WithDisks {
		// Every disk must be deletable before anything is: a refusal
		// half-way would leave the machine gone and some disks not.
		for _, disk := range m.rec.Disks {
			if k := d.disks[disk]; k != nil {
				if err = d.refuseDiskDelete(k, diskOpts, m); err != nil {
					err = fmt.Errorf("machine %q is kept: %w", name, err)
					break
				}
			}
		}
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	m.op.Lock()
	defer m.op.Unlock()
	d.mu.Lock()
	snaps := make([]*machineSnapRecord, 0, len(m.snaps))
	for _, s := range m.snaps {
		snaps = append(snaps, s)
	}
	d.mu.Unlock()
	for _, s := range snaps {
		if err := d.deleteMachineSnapshot(ctx, m, s, opts.Force); err != nil {
			return err
		}
	}
	if err := d.deleteDurable(store.MachineKey(name)); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.machines, name)
	disks := m.rec.Disks
	d.mu.Unlock()
	d.log.Info("machine deleted", "machine", name, "with_disks", opts.WithDisks)
	if opts.WithDisks {
		for _, disk := range disks {
			if err := d.DeleteDisk(ctx, disk, diskOpts); err != nil {
				return fmt.Errorf("machine %q deleted; deleting its disk %q: %w", name, disk, err)
			}
		}
	}
	return nil
}

// machineToAPI describes a machine. Caller holds d.mu.
func (d *Daemon) machineToAPI(m *machine) api.Machine {
	return api.Machine{Name: m.rec.Name, Disks: slices.Clone(m.rec.Disks), Config: m.rec.Config,
		AgentSocket: m.rec.AgentSocket, Description: m.rec.Description, Created: api.At(m.rec.Created), Snapshots: len(m.snaps),
		Policy: d.policyOf(api.TargetMachine, m.rec.ID)}
}

// putDurable stores a record and makes it durable.
func (d *Daemon) putDurable(key string, v any) error {
	if err := d.store.PutRecord(key, v); err != nil {
		return fmt.Errorf("record %s: %w", key, err)
	}
	if err := d.store.Sync(); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// deleteDurable deletes a record durably.
func (d *Daemon) deleteDurable(key string) error {
	if err := d.store.DeleteRecord(key); err != nil {
		return fmt.Errorf("delete record %s: %w", key, err)
	}
	if err := d.store.Sync(); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// isSocket reports whether path is a Unix socket itself (not a link to one).
func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
