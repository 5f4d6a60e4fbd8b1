package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"golang.org/x/sys/unix"
)

// GrowDisk enlarges a disk. Connected clients keep the size they
// negotiated until they reconnect. The new size is durable when it
// returns.
func (d *Daemon) GrowDisk(ctx context.Context, name string, sizeText api.Size) (api.Disk, error) {
	size, err := parseSize(fieldSize, sizeText)
	if err != nil {
		return api.Disk{}, err
	}
	defer d.fuseChanged(name) // after d.mu is released: the tree calls back into the daemon
	clients := d.nbdClients() // NBD calls are made without d.mu
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
	if err := checkGrowSize(size, k.vol.Size(), k.rec.BlockSize); err != nil {
		return api.Disk{}, err
	}
	if fi, err := os.Stat(d.livePath(k.rec)); err == nil && !fi.Mode().IsRegular() {
		return api.Disk{}, errorf(block.ErrFailed, "disk %q lives on block device %s: grow the device itself", name, d.livePath(k.rec))
	}
	dir := filepath.Dir(d.livePath(k.rec))
	if err := checkFileSize(dir, size); err != nil {
		return api.Disk{}, err
	}
	if err := k.vol.Grow(size); err != nil {
		if errors.Is(err, unix.EFBIG) {
			return api.Disk{}, fileTooLarge(err, dir, size)
		}
		return api.Disk{}, fmt.Errorf("grow disk %s: %w", name, err)
	}
	rec := k.rec
	rec.Size = size
	if err := d.putRecord(rec); err != nil {
		return api.Disk{}, err // the image grew; the next start corrects the record from it
	}
	k.rec = rec
	d.log.Info("disk grown", "disk", name, "size", size)
	return d.diskToAPI(k, clients), nil
}
