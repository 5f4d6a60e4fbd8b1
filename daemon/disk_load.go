package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cairn-storage/cairn/cow"
)

// Loading the disks at start-up, and cleaning up after a crash: chains
// whose disk is gone are dropped, files no disk owns are reported.

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
		disk.vol, disk.openErr = d.openVolume(disk)
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
	d.sweepChains()
	d.warnOrphans()
	return nil
}

// openVolume opens a recorded disk's live image; an adopted one passes
// the checks of paths.go again first.
func (d *Daemon) openVolume(k *Disk) (*cow.Volume, error) {
	opts := d.volOptions(k.rec)
	if k.rec.Adopted != "" {
		f, _, err := d.openAdoptable(k.rec.Adopted, k)
		if err != nil {
			return nil, err
		}
		opts.Image = f
	}
	return cow.Open(d.livePath(k.rec), opts)
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

// warnOrphans logs the files in the disks directory that belong to no disk
// (left by a crash between creating a live image and recording its disk,
// or by a store that was replaced), saying what each is. The files cairnd
// writes for a known disk (its live image, change-tracking and side files:
// cow.TrackFile) are not warned about, whatever the disk's state. Orphans
// are kept: only an operator can tell which case it is.
func (d *Daemon) warnOrphans() {
	entries, err := os.ReadDir(d.disksDir())
	if err != nil {
		return
	}
	known := make(map[string]*Disk, len(d.disks))
	for _, disk := range d.disks {
		known[strconv.FormatUint(disk.rec.ID, 10)] = disk
	}
	for _, e := range entries {
		id, _, _ := strings.Cut(e.Name(), ".")
		what, ours := diskFile(id, e.Name())
		disk := known[id]
		switch {
		case !ours:
			d.log.Warn("file belongs to no disk; remove it if it is not needed", "path", filepath.Join(d.disksDir(), e.Name()),
				"what", "not a file cairnd writes")
		case disk == nil:
			d.log.Warn("file belongs to no disk; remove it if it is not needed", "path", filepath.Join(d.disksDir(), e.Name()),
				"what", what+" of disk id "+id+", which no disk record names")
		case what == liveImageFile && disk.rec.Adopted != "":
			d.log.Warn("file belongs to no disk; remove it if it is not needed", "path", filepath.Join(d.disksDir(), e.Name()),
				"what", "a live image for disk id "+id+", but disk "+strconv.Quote(disk.rec.Name)+" uses its adopted image "+disk.rec.Adopted)
		}
	}
}

const liveImageFile = "live image"

// diskFile says what the file called name in the disks directory is when
// it is one cairnd writes for the disk with id: its live image
// (livePath) or one of its volume's files (volOptions' TrackPrefix).
func diskFile(id, name string) (what string, ours bool) {
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		return "", false
	}
	if name == liveFileName(id) {
		return liveImageFile, true
	}
	return cow.TrackFile(trackBase(id), name)
}

// dropChain deletes the snapshot chain and change tracking of a disk that
// is gone (or was never recorded). A failure is retried at the next start.
func (d *Daemon) dropChain(rec diskRecord) {
	if err := cow.DropChain(context.Background(), d.store, rec.ID, d.volOptions(rec).TrackPrefix); err != nil {
		d.log.Warn("dropping the snapshots of a deleted disk; retried at the next start", "disk", rec.Name, "id", rec.ID, "err", err)
	}
}
