package daemon

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// CreateDisk creates a disk with a new sparse live image, or adopts an
// existing file or block device. The disk's record is durable when it
// returns.
func (d *Daemon) CreateDisk(ctx context.Context, req api.CreateDiskRequest) (api.Disk, error) {
	if err := checkDiskName(fieldName, req.Name); err != nil {
		return api.Disk{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Disk{}, err
	}
	var blockSize int
	var size int64
	if req.CopyOnRead && req.From == "" {
		return api.Disk{}, invalidField("copy_on_read", "copy_on_read: only a clone (from) reads through to a parent")
	}
	if req.From == "" {
		var err error
		if blockSize, err = parseBlockSize(req.BlockSize); err != nil {
			return api.Disk{}, err
		}
		if size, err = parseDiskSize(req, blockSize); err != nil {
			return api.Disk{}, err
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkChange(); err != nil {
		return api.Disk{}, err
	}
	if _, ok := d.disks[req.Name]; ok {
		return api.Disk{}, fieldError(block.ErrExists, fieldName, "disk %q already exists", req.Name)
	}
	rec := diskRecord{Name: req.Name, BlockSize: blockSize, Description: req.Description, Created: time.Now().UTC().Truncate(time.Second)}
	var image *os.File // the adopted image, opened and checked (paths.go)
	var err error
	if req.Adopt != "" {
		if image, rec.Adopted, err = d.openAdoptable(req.Adopt, nil); err != nil {
			return api.Disk{}, err
		}
	}
	id, err := d.store.NextID(diskIDSeq)
	if err != nil {
		if image != nil {
			image.Close()
		}
		return api.Disk{}, fmt.Errorf("allocate disk id: %w", err)
	}
	rec.ID = id
	var disk *Disk
	if req.From != "" {
		disk, err = d.createClone(ctx, rec, req.From, req)
	} else {
		disk, err = d.openNewDisk(&rec, size, image)
	}
	if err != nil {
		return api.Disk{}, err
	}
	rec = disk.rec
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
	return d.diskToAPI(disk, nil), nil
}

// openNewDisk creates the live image and opens it, or opens the adopted
// image (already open: image), setting rec.Size. Nothing is left behind on
// error.
func (d *Daemon) openNewDisk(rec *diskRecord, size int64, image *os.File) (*Disk, error) {
	path := d.livePath(*rec)
	if rec.Adopted == "" {
		if err := d.createSparse(path, size); err != nil {
			return nil, err
		}
	}
	opts := d.volOptions(*rec)
	opts.Image = image
	vol, err := cow.Open(path, opts)
	if err != nil {
		if rec.Adopted != "" {
			return nil, invalidField(fieldAdopt, "adopt: %v", err)
		}
		os.Remove(path)
		return nil, fmt.Errorf("open new live image: %w", err)
	}
	rec.Size = vol.Size()
	if rec.Adopted != "" {
		if err := checkAdoptedSize(rec.Adopted, rec.Size, rec.BlockSize); err != nil {
			vol.Close()
			d.dropChain(*rec)
			return nil, err
		}
	}
	return &Disk{rec: *rec, vol: vol}, nil
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
