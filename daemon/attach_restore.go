package daemon

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/cairn-storage/cairn/nbd/kernel"
	"github.com/cairn-storage/cairn/store"
)

// Start-up: every attachment the previous cairnd recorded is served
// again. A device whose configuration outlived that cairnd (it was
// stopped, killed or restarted; I/O has been waiting) gets new sockets
// with NBD_CMD_RECONFIGURE; one whose configuration is gone (the host
// rebooted, or the module was reloaded) is connected afresh at the same
// index. An attachment that cannot be served is listed as failed with
// the reason, keeps its record (the next start tries again) and holds
// nothing; detaching it forgets it.

// restoreAttachments reconnects the recorded attachments. Run calls it
// before it tells systemd it is ready.
func (d *Daemon) restoreAttachments() {
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	var recs []attachRecord
	err := d.store.ListRecords(store.AttachPrefix, func(key string, raw []byte) error {
		rec, err := decodeAttachRecord(key, raw)
		if err != nil {
			d.failAttachment(rec, err)
			return nil
		}
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		d.log.Error("reading the kernel attachments' records; none is reconnected", "err", err)
		return
	}
	if len(recs) == 0 {
		return
	}
	if err := d.kernelReady(); err != nil {
		for _, rec := range recs {
			d.failAttachment(rec, err)
		}
		return
	}
	for _, rec := range recs {
		if err := d.restoreAttachment(rec); err != nil {
			d.failAttachment(rec, err)
		}
	}
}

// decodeAttachRecord decodes the record under key; a record of another
// version is refused, never read. The index comes from the key, so even
// a refused record can be listed and detached.
func decodeAttachRecord(key string, raw []byte) (attachRecord, error) {
	index, err := strconv.Atoi(strings.TrimPrefix(key, store.AttachPrefix))
	if err != nil || index < 0 {
		return attachRecord{Index: -1}, fmt.Errorf("attachment record %q: the key names no device", key)
	}
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return attachRecord{Index: index}, fmt.Errorf("attachment record of %s is not JSON: %v", kernel.DevicePath(index), err)
	}
	if v.Version != attachRecordVersion {
		return attachRecord{Index: index}, fmt.Errorf("attachment record of %s has version %d, and this cairnd reads version %d only: run the cairnd that wrote it, or detach %s to forget it",
			kernel.DevicePath(index), v.Version, attachRecordVersion, kernel.DevicePath(index))
	}
	var rec attachRecord
	if err := json.Unmarshal(raw, &rec); err != nil || rec.Index != index {
		return attachRecord{Index: index}, fmt.Errorf("attachment record of %s is malformed (%v): detach %s to forget it", kernel.DevicePath(index), err, kernel.DevicePath(index))
	}
	return rec, nil
}

// restoreAttachment serves one recorded attachment again.
func (d *Daemon) restoreAttachment(rec attachRecord) error {
	name := exportName{rec.Disk, rec.Snapshot}
	d.mu.Lock()
	k := d.disks[rec.Disk]
	d.mu.Unlock()
	if k == nil || k.rec.ID != rec.DiskID {
		return fmt.Errorf("disk %q (id %d) of the attachment is gone", rec.Disk, rec.DiskID)
	}
	a, err := d.openAttachment(name, rec)
	if err != nil {
		return err
	}
	s, ok, err := d.kernel.Status(rec.Index)
	fresh := err == nil && (!ok || !s.Connected)
	if err == nil && !fresh {
		// No backend file: a kernel before 5.16, which cannot tell.
		backend, berr := d.kernel.Backend(rec.Index)
		if berr == nil && backend != "" && backend != rec.Backend {
			err = fmt.Errorf("%s is connected to another backend (%q) now", kernel.DevicePath(rec.Index), backend)
		}
	}
	if err == nil {
		err = d.connectAttachment(a, fresh)
	}
	if err != nil {
		d.dropAttachment(a)
		return err
	}
	how := "reconnected"
	if fresh {
		how = "connected afresh (its configuration was gone)"
	}
	d.log.Info("kernel attachment "+how, "device", a.device(), "export", name.String(), "connections", rec.Connections)
	return nil
}

// failAttachment lists an attachment that could not be served, with
// why; it holds nothing.
func (d *Daemon) failAttachment(rec attachRecord, why error) {
	d.log.Error("a kernel attachment could not be reconnected; it is listed as failed (cairn disk attachments): fix the cause and restart cairnd, or detach it", "device", kernel.DevicePath(rec.Index), "err", why)
	if rec.Index < 0 {
		return
	}
	a := &attachment{rec: rec, name: exportName{rec.Disk, rec.Snapshot}, failed: true, err: why,
		ready: make(chan struct{}), stop: make(chan struct{})}
	close(a.ready)
	a.cfg.Index = rec.Index
	d.mu.Lock()
	a.halt()
	d.attachments[rec.Index] = a
	d.mu.Unlock()
}
