package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/nbd"
)

// Disk is one virtual disk: its record and its open live image. Every
// mutable field is guarded by Daemon.mu.
type Disk struct {
	rec diskRecord
	// vol is the open live image; nil when it failed to open at start-up
	// (openErr says why) and after close.
	vol     *cow.Volume
	openErr error
	// conns counts the NBD exports of this disk that connections hold open
	// (the live disk and its snapshots); liveConns those of the live disk.
	conns, liveConns int
	// deleting is set while a delete waits for connections to end: no new
	// export opens meanwhile.
	deleting bool
	// rollingBack is set while a rollback runs: the live export refuses
	// new clients.
	rollingBack bool
	// drained is closed when conns reaches zero while deleting.
	drained chan struct{}
}

// Volume is the disk's live volume (nil if it failed to open).
func (k *Disk) Volume() *cow.Volume { return k.vol }

// livePath is where the disk's live image is: the adopted path, or a file
// named by the disk's id (never by a client's string).
func (d *Daemon) livePath(rec diskRecord) string {
	if rec.Adopted != "" {
		return rec.Adopted
	}
	return filepath.Join(d.disksDir(), strconv.FormatUint(rec.ID, 10)+".raw")
}

// volOptions are the cow options of a disk: its chain in the store and its
// change-tracking files beside the live images (named by id).
func (d *Daemon) volOptions(rec diskRecord) cow.Options {
	return cow.Options{
		BlockSize:    rec.BlockSize,
		Store:        d.store,
		DiskID:       rec.ID,
		TrackPrefix:  filepath.Join(d.disksDir(), strconv.FormatUint(rec.ID, 10)+".track"),
		Logger:       d.log.With("disk", rec.Name),
		OnWrite:      d.fuseWriteHook(rec.Name),
		CopyOutShare: d.cfg.CopyOutShare,
	}
}

// loadDisks opens every disk recorded in the store. A live image that does
// not open leaves its disk in the error state instead of stopping cairnd.
func (d *Daemon) loadDisks() error {
	err := d.store.ListRecords(diskKeyPrefix, func(key string, raw []byte) error {
		var rec diskRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("disk record %s: %w", key, err)
		}
		disk := &Disk{rec: rec}
		path := d.livePath(rec)
		disk.vol, disk.openErr = cow.Open(path, d.volOptions(rec))
		if disk.openErr != nil {
			d.log.Error("disk unavailable: its live image does not open", "disk", rec.Name, "path", path, "err", disk.openErr)
		} else if size := disk.vol.Size(); size != rec.Size {
			d.log.Warn("live image size differs from the record; using the image's", "disk", rec.Name, "record", rec.Size, "image", size)
			disk.rec.Size = size
		}
		d.disks[rec.Name] = disk
		return nil
	})
	if err != nil {
		return fmt.Errorf("load disks: %w", err)
	}
	d.warnOrphans()
	d.sweepChains()
	return nil
}

// sweepChains drops the snapshot chains of disks that no longer exist (a
// crash between deleting a disk's record and dropping its chain).
func (d *Daemon) sweepChains() {
	ids, err := cow.Chains(d.store)
	if err != nil {
		d.log.Warn("listing snapshot chains", "err", err)
		return
	}
	live := map[uint64]bool{}
	for _, k := range d.disks {
		live[k.rec.ID] = true
	}
	for _, id := range ids {
		if !live[id] {
			d.dropChain(diskRecord{ID: id})
		}
	}
}

// warnOrphans logs live images no disk record names (left by a crash
// between creating the file and recording the disk, or by a store that was
// replaced). They are kept: only an operator can tell which case it is.
func (d *Daemon) warnOrphans() {
	entries, err := os.ReadDir(d.disksDir())
	if err != nil {
		return
	}
	known := make(map[string]bool, len(d.disks))
	for _, disk := range d.disks {
		known[filepath.Base(d.livePath(disk.rec))] = true
	}
	for _, e := range entries {
		if !known[e.Name()] {
			d.log.Warn("live image belongs to no disk; remove it if it is not needed", "path", filepath.Join(d.disksDir(), e.Name()))
		}
	}
}

// close flushes and closes the live image. Caller holds Daemon.mu.
func (k *Disk) close() error {
	if k.vol == nil {
		return nil
	}
	err := k.vol.Close()
	k.vol = nil
	return err
}

// toAPI describes the disk. Caller holds Daemon.mu.
func (d *Daemon) diskToAPI(k *Disk) api.Disk {
	out := api.Disk{
		Name:        k.rec.Name,
		ID:          k.rec.ID,
		Size:        k.rec.Size,
		BlockSize:   k.rec.BlockSize,
		Description: k.rec.Description,
		Path:        d.livePath(k.rec),
		Adopted:     k.rec.Adopted != "",
		Created:     k.rec.Created,
		Export:      k.rec.Name,
		Clients:     k.conns,
		State:       api.DiskReady,
	}
	if k.vol != nil {
		out.Size = k.vol.Size()
	} else {
		out.State = api.DiskError
		if k.openErr != nil {
			out.Error = k.openErr.Error()
		}
	}
	return out
}

// export is the NBD export of the live disk. It offers
// qemu:dirty-bitmap:SNAP for every snapshot: the blocks changed since.
func (k *Disk) export() *nbd.Export {
	vol := k.vol
	return &nbd.Export{
		Name:        k.rec.Name,
		Description: k.rec.Description,
		Device:      vol,
		MultiConn:   true,
		Contexts:    func() map[string]block.ExtentMap { return vol.DirtyBitmapContexts("") },
	}
}

// snapshotExport is the read-only export DISK@SNAP of an open view. It
// offers qemu:dirty-bitmap:EARLIER for every earlier snapshot.
func (k *Disk) snapshotExport(view *cow.View) *nbd.Export {
	vol, snap := k.vol, view.Name()
	return &nbd.Export{
		Name:        k.rec.Name + "@" + snap,
		Description: "snapshot " + snap + " of disk " + k.rec.Name,
		Device:      view,
		ReadOnly:    true,
		MultiConn:   true,
		Contexts:    func() map[string]block.ExtentMap { return vol.DirtyBitmapContexts(snap) },
	}
}

// sortedDisks returns the disks by name. Caller holds Daemon.mu.
func (d *Daemon) sortedDisks() []*Disk {
	out := make([]*Disk, 0, len(d.disks))
	for _, k := range d.disks {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Name < out[j].rec.Name })
	return out
}
