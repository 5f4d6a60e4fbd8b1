package daemon

import (
	"context"
	"strings"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/store"
)

// Images as NBD exports and image exports to files (docs/export.md).
// An image's disk is served read-only as the NBD export image:NAME/DISK
// (a name no disk can have: ':' and '/' are not in NameRule). These
// exports are opened by name; they are not listed with the disks'
// (GET /v1/exports, NBD LIST, the FUSE tree). While one is open, or an
// export of the image runs, the image is not deleted.

// imageExportPrefix starts the NBD export name of an image's disk.
const imageExportPrefix = "image:"

// imageExportName is the NBD export of disk of image.
func imageExportName(image, disk string) string { return imageExportPrefix + image + "/" + disk }

// parseImageExport splits image:NAME/DISK; ok is false for other names.
func parseImageExport(s string) (image, disk string, ok bool) {
	rest, ok := strings.CutPrefix(s, imageExportPrefix)
	if !ok {
		return "", "", false
	}
	image, disk, ok = strings.Cut(rest, "/")
	return image, disk, ok && ValidName(image) && ValidName(disk)
}

// openImageExport opens an image's disk for one NBD client and counts it
// as a reader of the image until release.
func (d *Daemon) openImageExport(name, disk string) (*nbd.Export, func(), error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, nil, block.ErrShutdown
	}
	im := d.images[name]
	if im == nil || im.rec.State == api.ImageCreating {
		return nil, nil, errorf(block.ErrNotFound, "no image %q", name)
	}
	for _, disk0 := range im.rec.Disks {
		if disk0.Name != disk {
			continue
		}
		view, err := cow.NewLayerView(d.store, []store.Layer{{Disk: disk0.Chain, Seq: store.BaseSeq}}, disk0.Size, disk0.BlockSize)
		if err != nil {
			return nil, nil, err
		}
		im.readers++
		exp := &nbd.Export{Name: imageExportName(name, disk), Description: "disk " + disk + " of image " + name,
			Device: view, ReadOnly: true, MultiConn: true}
		return exp, d.releaseImage(im), nil
	}
	return nil, nil, errorf(block.ErrNotFound, "image %q has no disk %q", name, disk)
}

// releaseImage returns the release of one reader of im; calls after the
// first do nothing.
func (d *Daemon) releaseImage(im *image) func() {
	released := false
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !released {
			released = true
			im.readers--
		}
	}
}

// ExportImage starts the export of an image's disks (with its
// configuration) for the client to write as a directory.
func (d *Daemon) ExportImage(ctx context.Context, name string) (api.Transfer, error) {
	if err := checkDiskName(fieldName, name); err != nil {
		return api.Transfer{}, err
	}
	d.mu.Lock()
	im := d.images[name]
	var err error
	switch {
	case im == nil:
		err = errorf(block.ErrNotFound, "image %q not found", name)
	case im.rec.State == api.ImageCreating:
		err = errorf(block.ErrFailed, "image %q is still being made; export it when it is available (cairn image show %s)", name, name)
	default:
		im.readers++ // until the transfer ends
	}
	var rec imageRecord
	if err == nil {
		rec = im.rec
	}
	d.mu.Unlock()
	if err != nil {
		return api.Transfer{}, err
	}
	release := d.releaseImage(im)
	out, err := d.startTransfer(taskSpec{kind: api.TaskImageExport, target: name, unit: unitBytes}, transferWork{
		setup: func(ctx context.Context, id string) (api.Transfer, error) {
			out := api.Transfer{Config: rec.Config, Source: rec.Source}
			for _, disk := range rec.Disks {
				out.Disks = append(out.Disks, api.TransferDisk{Name: disk.Name, Export: imageExportName(name, disk.Name),
					Size: disk.Size, BlockSize: disk.BlockSize, Boot: disk.Boot})
			}
			return out, nil
		},
		cleanup: func(context.Context, bool) error { release(); return nil },
	})
	if err != nil {
		release()
	}
	return out, err
}
