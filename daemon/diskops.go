package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/internal/durable"
	"github.com/cairn-storage/cairn/nbd"
)

// Size rules for disks.
const (
	// SizeAlign: created and grown disks are a whole number of 4 KiB, so
	// guests with 4 KiB sectors see whole sectors.
	SizeAlign = 4 << 10
	// AdoptAlign: an adopted image must be a whole number of 512-byte
	// sectors (every image qemu-img makes is).
	AdoptAlign = 512
	// MaxDiskSize bounds a disk's size.
	MaxDiskSize = 64 << 40
	// MaxBlocks bounds size/block size: the change-tracking bitmap of a
	// disk costs one bit per block in memory (128 MiB at the bound).
	MaxBlocks = 1 << 30
	// MaxDescription bounds a description (it travels in NBD_INFO_DESCRIPTION).
	MaxDescription = 256
)

// ListDisks returns every disk, by name.
func (d *Daemon) ListDisks() []api.Disk {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Disk, 0, len(d.disks))
	for _, k := range d.sortedDisks() {
		out = append(out, d.diskToAPI(k))
	}
	return out
}

// GetDisk returns one disk.
func (d *Daemon) GetDisk(name string) (api.Disk, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := d.lookup(name)
	if err != nil {
		return api.Disk{}, err
	}
	return d.diskToAPI(k), nil
}

// lookup finds a disk by name. Caller holds d.mu.
func (d *Daemon) lookup(name string) (*Disk, error) {
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	k := d.disks[name]
	if k == nil {
		return nil, errorf(block.ErrNotFound, "disk %q not found", name)
	}
	return k, nil
}

// checkChange refuses changes once shutdown began. Caller holds d.mu.
func (d *Daemon) checkChange() error {
	if d.closing {
		return errorf(block.ErrShutdown, "cairnd is shutting down; retry when it is back")
	}
	return nil
}

// parseSize parses a size field; empty is an error naming the field.
func parseSize(field string, s api.Size) (int64, error) {
	if s == "" {
		return 0, invalidf("%s is required: a number of bytes or a number with a unit (K, M, G, T), such as 10G", field)
	}
	n, err := api.ParseSize(string(s))
	if err != nil {
		return 0, invalidf("%s: %v", field, err)
	}
	return n, nil
}

// checkDiskSize applies the size rules to a created or grown disk.
func checkDiskSize(field string, size int64, blockSize int) error {
	switch {
	case size%SizeAlign != 0:
		return invalidf("%s: %d bytes is not a multiple of 4 KiB (4096 bytes)", field, size)
	case size > MaxDiskSize:
		return invalidf("%s: %s is larger than the limit of %s", field, api.FormatSize(size), api.FormatSize(MaxDiskSize))
	}
	return checkBlocks(field, size, blockSize)
}

func checkBlocks(field string, size int64, blockSize int) error {
	if blocks := (size + int64(blockSize) - 1) / int64(blockSize); blocks > MaxBlocks {
		return invalidf("%s: %s in %s blocks is %d blocks, over the limit of %d; choose a larger block_size",
			field, api.FormatSize(size), api.FormatSize(int64(blockSize)), blocks, MaxBlocks)
	}
	return nil
}

func checkDescription(s string) error {
	if len(s) > MaxDescription {
		return invalidf("description: %d bytes is longer than the limit of %d", len(s), MaxDescription)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return invalidf("description: must be UTF-8 text without control characters")
	}
	return nil
}

// CreateDisk creates a disk with a new sparse live image, or adopts an
// existing file or block device. The disk's record is durable when it
// returns.
func (d *Daemon) CreateDisk(ctx context.Context, req api.CreateDiskRequest) (api.Disk, error) {
	if err := checkName("name", req.Name); err != nil {
		return api.Disk{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Disk{}, err
	}
	blockSize := cow.DefaultBlockSize
	if req.BlockSize != "" {
		bs, err := parseSize("block_size", req.BlockSize)
		if err != nil {
			return api.Disk{}, err
		}
		if bs > 1<<30 || cow.ValidBlockSize(int(bs)) != nil {
			return api.Disk{}, invalidf("block_size: %d bytes: must be a power of two from 4 KiB to 4 MiB", bs)
		}
		blockSize = int(bs)
	}
	var size int64
	if req.Adopt != "" {
		if req.Size != "" {
			return api.Disk{}, invalidf("size: leave it out when adopting: the disk takes the size of %s (grow it afterwards if needed)", req.Adopt)
		}
	} else {
		var err error
		if size, err = parseSize("size", req.Size); err != nil {
			return api.Disk{}, err
		}
		if err := checkDiskSize("size", size, blockSize); err != nil {
			return api.Disk{}, err
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkChange(); err != nil {
		return api.Disk{}, err
	}
	if _, ok := d.disks[req.Name]; ok {
		return api.Disk{}, errorf(block.ErrExists, "disk %q already exists", req.Name)
	}
	rec := diskRecord{Name: req.Name, BlockSize: blockSize, Description: req.Description, Created: time.Now().UTC().Truncate(time.Second)}
	if req.Adopt != "" {
		path, err := d.checkAdopt(req.Adopt)
		if err != nil {
			return api.Disk{}, err
		}
		rec.Adopted = path
	}
	id, err := d.store.NextID(diskIDSeq)
	if err != nil {
		return api.Disk{}, fmt.Errorf("allocate disk id: %w", err)
	}
	rec.ID = id
	disk, err := d.openNewDisk(&rec, size)
	if err != nil {
		return api.Disk{}, err
	}
	if err := d.putRecord(rec); err != nil {
		disk.close()
		d.dropChain(rec)
		if rec.Adopted == "" {
			os.Remove(d.livePath(rec))
		}
		return api.Disk{}, err
	}
	d.disks[rec.Name] = disk
	d.log.Info("disk created", "disk", rec.Name, "id", rec.ID, "size", rec.Size, "block_size", rec.BlockSize, "path", d.livePath(rec))
	return d.diskToAPI(disk), nil
}

// openNewDisk creates (or, adopting, checks) the live image and opens it,
// setting rec.Size. Nothing is left behind on error.
func (d *Daemon) openNewDisk(rec *diskRecord, size int64) (*Disk, error) {
	path := d.livePath(*rec)
	if rec.Adopted == "" {
		if err := createSparse(path, size); err != nil {
			return nil, err
		}
	}
	vol, err := cow.Open(path, d.volOptions(*rec))
	if err != nil {
		if rec.Adopted != "" {
			return nil, invalidf("adopt: %v", err)
		}
		os.Remove(path)
		return nil, fmt.Errorf("open new live image: %w", err)
	}
	rec.Size = vol.Size()
	if rec.Adopted != "" {
		err := checkBlocks("adopt", rec.Size, rec.BlockSize)
		if rec.Size == 0 || rec.Size%AdoptAlign != 0 {
			err = invalidf("adopt: %s is %d bytes: an adopted image must be a non-zero multiple of 512 bytes", rec.Adopted, rec.Size)
		}
		if err != nil {
			vol.Close()
			d.dropChain(*rec)
			return nil, err
		}
	}
	return &Disk{rec: *rec, vol: vol}, nil
}

// createSparse creates a new sparse file of size bytes and makes its
// directory entry durable.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create live image: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create live image %s: %w", path, err)
	}
	return nil
}

// checkAdopt validates a path to adopt: absolute, an existing regular file
// or block device, outside the data directory, and not already a disk's
// live image. Caller holds d.mu.
func (d *Daemon) checkAdopt(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", invalidf("adopt: %q is not an absolute path", path)
	}
	path = filepath.Clean(path)
	fi, err := os.Stat(path)
	if err != nil {
		return "", invalidf("adopt: %v", err)
	}
	if !fi.Mode().IsRegular() && (fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0) {
		return "", invalidf("adopt: %s is neither a regular file nor a block device", path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", invalidf("adopt: %v", err)
	}
	dataDir, err := filepath.EvalSymlinks(d.cfg.DataDir)
	if err != nil {
		return "", fmt.Errorf("resolve data directory: %w", err)
	}
	if rel, err := filepath.Rel(dataDir, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return "", invalidf("adopt: %s is inside cairnd's data directory %s", path, d.cfg.DataDir)
	}
	for _, other := range d.disks {
		if ofi, err := os.Stat(d.livePath(other.rec)); err == nil && os.SameFile(fi, ofi) {
			return "", errorf(block.ErrInUse, "adopt: %s is already the live image of disk %q", path, other.rec.Name)
		}
	}
	return path, nil
}

// putRecord stores rec and makes it durable.
func (d *Daemon) putRecord(rec diskRecord) error {
	if err := d.store.PutRecord(diskKey(rec.Name), rec); err != nil {
		return fmt.Errorf("record disk %s: %w", rec.Name, err)
	}
	if err := d.store.Sync(); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// GrowDisk enlarges a disk. Connected clients keep the size they
// negotiated until they reconnect.
func (d *Daemon) GrowDisk(ctx context.Context, name string, sizeText api.Size) (api.Disk, error) {
	size, err := parseSize("size", sizeText)
	if err != nil {
		return api.Disk{}, err
	}
	defer d.fuseChanged(name) // after d.mu is released: the tree calls back into the daemon
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkChange(); err != nil {
		return api.Disk{}, err
	}
	k, err := d.lookup(name)
	if err != nil {
		return api.Disk{}, err
	}
	if k.vol == nil {
		return api.Disk{}, errorf(block.ErrFailed, "disk %q is unavailable: %v", name, k.openErr)
	}
	cur := k.vol.Size()
	switch {
	case size == cur:
		return api.Disk{}, invalidf("size: the disk is already %s (%d bytes); give a larger size", api.FormatSize(cur), cur)
	case size < cur:
		return api.Disk{}, invalidf("size: %s is smaller than the disk's %s: disks only grow (shrinking would lose data)", api.FormatSize(size), api.FormatSize(cur))
	}
	if err := checkDiskSize("size", size, k.rec.BlockSize); err != nil {
		return api.Disk{}, err
	}
	if fi, err := os.Stat(d.livePath(k.rec)); err == nil && !fi.Mode().IsRegular() {
		return api.Disk{}, errorf(block.ErrFailed, "disk %q lives on block device %s: grow the device itself", name, d.livePath(k.rec))
	}
	if err := k.vol.Grow(size); err != nil {
		return api.Disk{}, fmt.Errorf("grow disk %s: %w", name, err)
	}
	rec := k.rec
	rec.Size = size
	if err := d.putRecord(rec); err != nil {
		return api.Disk{}, err // the image grew; the next start corrects the record from it
	}
	k.rec = rec
	d.log.Info("disk grown", "disk", name, "size", size)
	return d.diskToAPI(k), nil
}

// DeleteDisk deletes a disk: its record, and its live image unless it was
// adopted (opts.DeleteAdopted removes an adopted regular file too). With
// connected NBD clients it fails with block.ErrInUse unless opts.Force, which
// disconnects them first (requests in flight finish).
func (d *Daemon) DeleteDisk(ctx context.Context, name string, opts api.DeleteDiskOptions) error {
	d.mu.Lock()
	if err := d.checkChange(); err != nil {
		d.mu.Unlock()
		return err
	}
	k, err := d.lookup(name)
	if err == nil && k.deleting {
		err = errorf(block.ErrInUse, "disk %q is already being deleted", name)
	}
	if err == nil && k.conns > 0 && !opts.Force {
		err = errorf(block.ErrInUse, "disk %q has %d connected NBD client(s): disconnect them, or delete with force to disconnect them", name, k.conns)
	}
	if err != nil {
		d.mu.Unlock()
		return err
	}
	k.deleting = true
	var drained chan struct{}
	if k.conns > 0 {
		k.drained = make(chan struct{})
		drained = k.drained
	}
	d.mu.Unlock()

	if drained != nil {
		if err := d.disconnectAll(ctx, name, drained); err != nil {
			d.mu.Lock()
			k.deleting, k.drained = false, nil
			d.mu.Unlock()
			return err
		}
	}
	return d.removeDisk(k, opts)
}

// forceTimeout bounds how long a forced delete waits for clients to go.
const forceTimeout = 30 * time.Second

// disconnectAll disconnects the clients of a disk's exports until drained
// is closed. A client still negotiating when Disconnect runs holds the
// export without being listed under its name yet, so Disconnect is repeated
// until every connection has released the export.
func (d *Daemon) disconnectAll(ctx context.Context, name string, drained <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	for {
		n := d.nbd.Disconnect(ctx, name)
		d.log.Info("disconnecting NBD clients to delete a disk", "disk", name, "connections", n)
		select {
		case <-drained:
			return nil
		case <-ctx.Done():
			return errorf(block.ErrInUse, "delete disk %s: its NBD clients did not disconnect: %v", name, context.Cause(ctx))
		case <-retry.C:
		}
	}
}

// removeDisk deletes a disk nobody uses any more (deleting is set).
func (d *Daemon) removeDisk(k *Disk, opts api.DeleteDiskOptions) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	name := k.rec.Name
	err := d.store.DeleteRecord(diskKey(name))
	if err == nil {
		err = d.store.Sync()
	}
	if err != nil {
		k.deleting = false
		return fmt.Errorf("delete disk %s: %w", name, err)
	}
	delete(d.disks, name)
	if k.vol != nil && k.rec.Adopted != "" {
		// The adopted file stays: it must hold every write, including
		// ones still redirected to side files for a copying snapshot
		// (which goes with the disk).
		if err := k.vol.Flatten(); err != nil {
			d.log.Warn("merging redirected writes into a deleted disk's adopted image", "disk", name, "err", err)
		}
	}
	if err := k.close(); err != nil {
		d.log.Warn("closing a deleted disk's live image", "disk", name, "err", err)
	}
	d.dropChain(k.rec)
	path := d.livePath(k.rec)
	switch {
	case k.rec.Adopted == "" || opts.DeleteAdopted && isRegular(path):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing a deleted disk's live image", "disk", name, "path", path, "err", err)
		}
	default:
		d.log.Info("kept the adopted live image of a deleted disk", "disk", name, "path", path)
	}
	d.log.Info("disk deleted", "disk", name, "id", k.rec.ID)
	return nil
}

func isRegular(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode().IsRegular()
}

// Exports lists the NBD exports, by name, with their connected clients.
func (d *Daemon) Exports() []api.Export {
	byExport := make(map[string][]api.NBDClient)
	for _, c := range d.nbd.Connections() {
		if c.Export == "" {
			continue
		}
		byExport[c.Export] = append(byExport[c.Export], api.NBDClient{ID: c.ID, Remote: c.Remote, Since: c.Since, ReadOnly: c.ReadOnly})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.Export
	for _, k := range d.sortedDisks() {
		if k.vol == nil || k.deleting {
			continue
		}
		clients := byExport[k.rec.Name]
		if clients == nil {
			clients = []api.NBDClient{}
		}
		out = append(out, api.Export{Name: k.rec.Name, Disk: k.rec.Name, Size: k.vol.Size(), Description: k.rec.Description, Clients: clients})
		for _, s := range k.vol.Snapshots() {
			if !s.Readable() {
				continue
			}
			name := k.rec.Name + "@" + s.Name
			clients := byExport[name]
			if clients == nil {
				clients = []api.NBDClient{}
			}
			out = append(out, api.Export{Name: name, Disk: k.rec.Name, ReadOnly: true, Size: s.Size, Description: "snapshot " + s.Name, Clients: clients})
		}
	}
	return out
}

// exporter resolves NBD export names to disks for the nbd server.
type exporter struct{ d *Daemon }

var _ nbd.Exporter = exporter{}

// Open resolves "DISK" (the live disk, read-write). "DISK@SNAPSHOT" is
// reserved for snapshot exports.
func (e exporter) Open(ctx context.Context, name string) (*nbd.Export, func(), error) {
	d := e.d
	diskName, snapshot, isSnapshot := strings.Cut(name, "@")
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, nil, block.ErrShutdown
	}
	k := d.disks[diskName]
	if k == nil || k.vol == nil || k.deleting || !ValidName(diskName) {
		return nil, nil, fmt.Errorf("%w: no disk %q", nbd.ErrUnknownExport, diskName)
	}
	var exp *nbd.Export
	var view *cow.View
	if isSnapshot {
		var err error
		if view, err = k.vol.OpenView(snapshot); err != nil {
			return nil, nil, fmt.Errorf("%w: disk %q has no readable snapshot %q (%v)", nbd.ErrUnknownExport, diskName, snapshot, err)
		}
		exp = k.snapshotExport(view)
	} else {
		if k.rollingBack {
			return nil, nil, fmt.Errorf("%w: disk %q is being rolled back; connect when the rollback task is done", nbd.ErrUnknownExport, diskName)
		}
		exp = k.export()
		k.liveConns++
	}
	k.conns++
	var once bool
	release := func() {
		if view != nil {
			view.Close()
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if once {
			return
		}
		once = true
		k.conns--
		if view == nil {
			k.liveConns--
		}
		if k.conns == 0 && k.drained != nil {
			close(k.drained)
			k.drained = nil
		}
	}
	return exp, release, nil
}

// List names every exportable disk.
func (e exporter) List(ctx context.Context) []nbd.ExportInfo {
	d := e.d
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []nbd.ExportInfo
	for _, k := range d.sortedDisks() {
		if k.vol != nil && !k.deleting {
			out = append(out, nbd.ExportInfo{Name: k.rec.Name, Description: k.rec.Description})
			for _, s := range k.vol.Snapshots() {
				if s.Readable() {
					out = append(out, nbd.ExportInfo{Name: k.rec.Name + "@" + s.Name, Description: "snapshot " + s.Name + " of disk " + k.rec.Name})
				}
			}
		}
	}
	return out
}

// dropChain deletes the snapshot chain and change tracking of a disk that
// is gone (or was never recorded). A failure is retried at the next start.
func (d *Daemon) dropChain(rec diskRecord) {
	if err := cow.DropChain(context.Background(), d.store, rec.ID, d.volOptions(rec).TrackPrefix); err != nil {
		d.log.Warn("dropping the snapshots of a deleted disk; retried at the next start", "disk", rec.Name, "id", rec.ID, "err", err)
	}
}
