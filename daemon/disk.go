package daemon

import (
	"path/filepath"
	"sort"
	"strconv"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Disk is one virtual disk: its record, its open live image and who has
// its exports open. Every mutable field is guarded by Daemon.mu.
type Disk struct {
	rec diskRecord
	// vol is the open live image; nil when it failed to open at start-up
	// (openErr says why) and after close.
	vol     *cow.Volume
	openErr error
	// holders counts the open handles of the disk's exports (NBD
	// connections and FUSE files), by export (holders.go).
	holders map[holder]int
	// released is closed at the next release of a holder; nil until
	// someone waits for one (nextRelease).
	released chan struct{}
	// deleting is set while a delete waits for holders to go: no new
	// export opens meanwhile.
	deleting bool
	// rollingBack is set while a rollback runs: the live export refuses
	// new clients.
	rollingBack bool
	// flattening is set while a flatten task runs.
	flattening bool
}

// Volume is the disk's live volume (nil if it failed to open).
func (k *Disk) Volume() *cow.Volume { return k.vol }

// livePath is where the disk's live image is: the adopted path, or a file
// named by the disk's id (never by a client's string).
func (d *Daemon) livePath(rec diskRecord) string {
	if rec.Adopted != "" {
		return rec.Adopted
	}
	return filepath.Join(d.disksDir(), liveFileName(strconv.FormatUint(rec.ID, 10)))
}

// The names of the files cairnd writes for the disk with id in the disks
// directory: the live image of a disk not adopted, and the prefix of its
// volume's files (cow.TrackFile lists them).
func liveFileName(id string) string { return id + ".raw" }
func trackBase(id string) string    { return id + ".track" }

// volOptions are the cow options of a disk: its chain in the store and its
// change-tracking files beside the live images (named by id).
func (d *Daemon) volOptions(rec diskRecord) cow.Options {
	return cow.Options{
		BlockSize:    rec.BlockSize,
		Store:        d.store,
		DiskID:       rec.ID,
		TrackPrefix:  filepath.Join(d.disksDir(), trackBase(strconv.FormatUint(rec.ID, 10))),
		Logger:       d.log.With("disk", rec.Name),
		OnWrite:      d.fuseWriteHook(rec.Name),
		CopyOutShare: d.cfg.CopyOutShare,
		Origin:       rec.Origin,
		CopyOnRead:   rec.CopyOnRead,
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

// diskToAPI describes the disk; clients are the NBD clients by export
// (nbdClients; nil: none). Caller holds Daemon.mu.
func (d *Daemon) diskToAPI(k *Disk, clients map[string][]api.NBDClient) api.Disk {
	out := api.Disk{
		Name:        k.rec.Name,
		ID:          k.rec.ID,
		Size:        k.rec.Size,
		BlockSize:   k.rec.BlockSize,
		Description: k.rec.Description,
		Path:        d.livePath(k.rec),
		Adopted:     k.rec.Adopted != "",
		Created:     api.At(k.rec.Created),
		Export:      k.rec.Name,
		Clients:     exportClients(clients, k.rec.Name),
		State:       api.DiskReady,
		Parent:      k.rec.Parent,
		Depth:       cloneDepth(k.rec),
		Flattened:   k.rec.Flattened,
		CopyOnRead:  k.rec.CopyOnRead && len(k.rec.Origin) > 0,
		Policy:      d.policyOf(api.TargetDisk, k.rec.ID),
	}
	if k.vol != nil {
		out.Size = k.vol.Size()
		if err := k.vol.SyncError(); err != nil {
			out.Error = err.Error() // still ready: reads and writes go on
		}
	} else {
		out.State = api.DiskError
		if k.openErr != nil {
			out.Error = k.openErr.Error()
		}
	}
	return out
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

// ListDisks returns every disk, by name.
func (d *Daemon) ListDisks() []api.Disk {
	clients := d.nbdClients()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Disk, 0, len(d.disks))
	for _, k := range d.sortedDisks() {
		out = append(out, d.diskToAPI(k, clients))
	}
	return out
}

// GetDisk returns one disk.
func (d *Daemon) GetDisk(name string) (api.Disk, error) {
	clients := d.nbdClients()
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := d.lookup(name)
	if err != nil {
		return api.Disk{}, err
	}
	return d.diskToAPI(k, clients), nil
}

// lookup finds a disk by the name in a request's path. Caller holds d.mu.
func (d *Daemon) lookup(name string) (*Disk, error) {
	if err := checkDiskName(fieldName, name); err != nil {
		return nil, err
	}
	k := d.disks[name]
	if k == nil {
		return nil, errorf(block.ErrNotFound, "disk %q not found", name)
	}
	return k, nil
}

// liveDisk returns an available disk: its live image is open and it is
// not being deleted. Caller holds d.mu.
func (d *Daemon) liveDisk(name string) (*Disk, error) {
	k, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	if k.vol == nil {
		return nil, errorf(block.ErrFailed, "disk %q is unavailable: %v", name, k.openErr)
	}
	if k.deleting {
		return nil, errorf(block.ErrFailed, "disk %q is being deleted", name)
	}
	return k, nil
}

// volume returns an available disk and its volume.
func (d *Daemon) volume(name string) (*Disk, *cow.Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := d.liveDisk(name)
	if err != nil {
		return nil, nil, err
	}
	return k, k.vol, nil
}

// checkChange refuses changes once shutdown began. Caller holds d.mu.
func (d *Daemon) checkChange() error {
	if d.closing {
		return errorf(block.ErrShutdown, "cairnd is shutting down; retry when it is back")
	}
	return nil
}
