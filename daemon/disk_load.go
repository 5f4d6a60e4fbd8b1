package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cairn-storage/cairn/cow"
)

// Loading the disks at start-up, and cleaning up after a crash: chains
// whose disk is gone are dropped, live images no disk names are reported.

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
	var tracking []string // a disk's change tracking, redirected writes, failure marks
	for _, disk := range d.disks {
		known[filepath.Base(d.livePath(disk.rec))] = true
		tracking = append(tracking, filepath.Base(d.volOptions(disk.rec).TrackPrefix)+".")
	}
	for _, e := range entries {
		if !known[e.Name()] && !slices.ContainsFunc(tracking, func(p string) bool { return strings.HasPrefix(e.Name(), p) }) {
			d.log.Warn("live image belongs to no disk; remove it if it is not needed", "path", filepath.Join(d.disksDir(), e.Name()))
		}
	}
}

// dropChain deletes the snapshot chain and change tracking of a disk that
// is gone (or was never recorded). A failure is retried at the next start.
func (d *Daemon) dropChain(rec diskRecord) {
	if err := cow.DropChain(context.Background(), d.store, rec.ID, d.volOptions(rec).TrackPrefix); err != nil {
		d.log.Warn("dropping the snapshots of a deleted disk; retried at the next start", "disk", rec.Name, "id", rec.ID, "err", err)
	}
}
