package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Images (docs/images.md): a named, independent artifact holding the
// content of every disk of a machine (or of one disk) at one instant, as
// chunk references: making one costs metadata, not copies. Each image
// disk is a chain of its own in the store whose base holds the snapshot's
// view (store.CopyView); it outlives its source disks and machine. New
// machines are provisioned from it as instant clones of those chains.

// DefaultImageQuota is the most images a host keeps unless configured.
const DefaultImageQuota = 64

// image is one image in memory (guarded by Daemon.mu).
type image struct {
	rec imageRecord
	// readers: open NBD exports of its disks and exports to files in
	// progress (transfer_image.go); it is not deleted while any.
	readers int
	// reading are the snapshots its creation copies from, until it ends
	// (guarded by Daemon.mu): a policy does not delete them meanwhile.
	reading []exportName
}

// loadImages reads the images; one a stop interrupted while it was being
// made is dropped (its task says so).
func (d *Daemon) loadImages() error {
	d.images = map[string]*image{}
	var unfinished []imageRecord
	err := d.store.ListRecords(store.ImagePrefix, func(key string, raw []byte) error {
		var rec imageRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("image record %s: %w", key, err)
		}
		if rec.State == api.ImageCreating {
			unfinished = append(unfinished, rec)
			return nil
		}
		d.images[rec.Name] = &image{rec: rec}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load images: %w", err)
	}
	for _, rec := range unfinished {
		d.log.Warn("dropping an image whose creation a stop interrupted; create it again", "image", rec.Name)
		if err := d.dropImage(context.Background(), rec); err != nil {
			d.log.Warn("dropping an unfinished image; retried at the next start", "image", rec.Name, "err", err)
		}
	}
	return nil
}

// imageSource is one disk an image is made from.
type imageSource struct {
	disk      string
	snapshot  string
	layers    []store.Layer
	size      int64
	blockSize int
}

// CreateImage starts a task that makes an image.
func (d *Daemon) CreateImage(ctx context.Context, req api.CreateImageRequest) (api.Task, error) {
	if err := checkDiskName(fieldName, req.Name); err != nil {
		return api.Task{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Task{}, err
	}
	switch {
	case req.Machine != "" && req.Disk != "":
		return api.Task{}, invalidField(fieldDisk, "disk: give a machine or a disk to make the image of, not both")
	case req.Machine == "" && (req.Disk == "" || req.Snapshot == ""):
		return api.Task{}, invalidField(fieldDisk, "an image is made of a machine (machine, optionally machine_snapshot) or of a disk's snapshot (disk and snapshot)")
	case req.Machine != "" && req.Snapshot != "":
		return api.Task{}, invalidField("snapshot", "snapshot: for a machine give machine_snapshot")
	}
	d.mu.Lock()
	err := d.checkChange()
	if err == nil && d.images[req.Name] != nil {
		err = fieldError(block.ErrExists, fieldName, "image %q already exists", req.Name)
	}
	if err == nil && len(d.images) >= d.cfg.ImageQuota {
		err = errorf(block.ErrQuota, "there are already %d images, the quota (image_quota = %d): delete images no longer needed (cairn image delete NAME)", len(d.images), d.cfg.ImageQuota)
	}
	if err != nil {
		d.mu.Unlock()
		return api.Task{}, err
	}
	im := &image{rec: imageRecord{Name: req.Name, Description: req.Description, Created: time.Now().UTC(), State: api.ImageCreating}}
	d.images[req.Name] = im
	d.mu.Unlock()
	forget := func() {
		d.mu.Lock()
		delete(d.images, req.Name)
		d.mu.Unlock()
	}
	task, err := d.tasks.start(d.bg, taskSpec{kind: api.TaskImageCreate, target: req.Name, unit: unitBytes,
		notCancellable: "an image half made is dropped; delete it when it is done"}, func(ctx context.Context, progress progressFunc) (any, error) {
		out, err := d.makeImage(ctx, im, req, progress)
		if err != nil {
			forget()
			d.log.Error("image creation failed", "image", req.Name, "err", err)
			return nil, err
		}
		return out, nil
	})
	if err != nil {
		forget()
	}
	return task, err
}

// makeImage resolves the sources (taking a machine snapshot if asked),
// records the image as creating, copies every source's view into a chain
// of its own, and records it available.
func (d *Daemon) makeImage(ctx context.Context, im *image, req api.CreateImageRequest, progress progressFunc) (api.Image, error) {
	sources, config, source, cleanup, err := d.imageSources(ctx, req)
	if cleanup != nil {
		defer cleanup()
	}
	if err != nil {
		return api.Image{}, err
	}
	d.mu.Lock()
	for _, s := range sources {
		im.reading = append(im.reading, exportName{s.disk, s.snapshot})
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		im.reading = nil
		d.mu.Unlock()
	}()
	rec := im.rec
	rec.Source, rec.Config = source, config
	var total uint64
	for i, s := range sources {
		chain, err := d.store.NextID(diskIDSeq)
		if err != nil {
			return api.Image{}, fmt.Errorf("allocate an image chain: %w", err)
		}
		rec.Disks = append(rec.Disks, imageDisk{Name: s.disk, Chain: chain, Size: s.size, BlockSize: s.blockSize, Boot: i == 0})
		total += uint64(s.size)
	}
	// Recorded before any chain is written: a stop part-way leaves a
	// record the next start drops with its chains.
	if err := d.putDurable(store.ImageKey(rec.Name), rec); err != nil {
		return api.Image{}, err
	}
	var done uint64
	for i, s := range sources {
		nblocks := uint64((s.size + int64(s.blockSize) - 1) / int64(s.blockSize))
		base := done
		err := d.store.CopyView(ctx, s.layers, rec.Disks[i].Chain, nblocks, func(n, _ uint64) {
			progress(base+n*uint64(s.blockSize), total)
		})
		if err != nil {
			d.dropImage(context.Background(), rec)
			return api.Image{}, fmt.Errorf("image %q: copy disk %q: %w", rec.Name, s.disk, err)
		}
		done += uint64(s.size)
	}
	rec.State = api.ImageAvailable
	if err := d.putDurable(store.ImageKey(rec.Name), rec); err != nil {
		d.dropImage(context.Background(), rec)
		return api.Image{}, err
	}
	d.mu.Lock()
	im.rec = rec
	d.mu.Unlock()
	d.log.Info("image created", "image", rec.Name, "source", rec.Source, "disks", len(rec.Disks))
	return d.GetImage(ctx, rec.Name)
}

// imageSources resolves what an image is made of, waiting for snapshots
// still copying out. cleanup (when not nil) deletes the machine snapshot
// taken for the image.
func (d *Daemon) imageSources(ctx context.Context, req api.CreateImageRequest) (sources []imageSource, config *api.Config, source string, cleanup func(), err error) {
	if req.Disk != "" {
		s, err := d.snapshotSource(ctx, req.Disk, req.Snapshot)
		if err != nil {
			return nil, nil, "", nil, err
		}
		return []imageSource{s}, nil, exportName{req.Disk, req.Snapshot}.String(), nil, nil
	}
	msnap := req.MachineSnapshot
	if msnap == "" {
		msnap = "img-" + req.Name + "-" + time.Now().UTC().Format("20060102T150405")
		task, err := d.CreateMachineSnapshot(ctx, req.Machine, api.CreateMachineSnapshotRequest{Name: msnap,
			Description: "taken for image " + req.Name, Consistency: req.Consistency})
		if err != nil {
			return nil, nil, "", nil, err
		}
		if t, err := d.tasks.waitEnded(ctx, task.ID); err != nil || t.State != api.TaskSucceeded {
			if err == nil {
				err = errors.New(t.Error)
			}
			return nil, nil, "", nil, fmt.Errorf("the machine snapshot for the image: %w", err)
		}
		cleanup = func() {
			if _, err := d.DeleteMachineSnapshot(context.Background(), req.Machine, msnap, true); err != nil {
				d.log.Warn("could not delete the machine snapshot taken for an image", "machine", req.Machine, "snapshot", msnap, "err", err)
			}
		}
	}
	m, s, err := d.machineSnapshot(req.Machine, msnap)
	if err != nil {
		return nil, nil, "", cleanup, err
	}
	for _, mem := range s.Members {
		src, err := d.snapshotSource(ctx, mem.Disk, mem.Snapshot)
		if err != nil {
			return nil, nil, "", cleanup, err
		}
		sources = append(sources, src)
	}
	return sources, s.Config, m.rec.Name + "@" + s.Name, cleanup, nil
}

// snapshotSource is one disk snapshot as an image source, once it is
// ready.
func (d *Daemon) snapshotSource(ctx context.Context, disk, snap string) (imageSource, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return imageSource{}, err
	}
	if err := vol.WaitReady(ctx, snap); err != nil {
		return imageSource{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	in, err := vol.Snapshot(snap)
	if err != nil {
		return imageSource{}, err
	}
	d.mu.Lock()
	origin := k.rec.Origin
	d.mu.Unlock()
	return imageSource{disk: disk, snapshot: snap, layers: append([]store.Layer{{Disk: k.rec.ID, Seq: in.Seq}}, origin...),
		size: in.Size, blockSize: vol.BlockSize()}, nil
}

// ListImages returns every image, by name.
func (d *Daemon) ListImages(ctx context.Context) []api.Image {
	d.mu.Lock()
	names := make([]string, 0, len(d.images))
	for name := range d.images {
		names = append(names, name)
	}
	d.mu.Unlock()
	sort.Strings(names)
	out := make([]api.Image, 0, len(names))
	for _, n := range names {
		if im, err := d.GetImage(ctx, n); err == nil {
			out = append(out, im)
		}
	}
	return out
}

// GetImage describes one image.
func (d *Daemon) GetImage(ctx context.Context, name string) (api.Image, error) {
	d.mu.Lock()
	im := d.images[name]
	if im == nil {
		d.mu.Unlock()
		return api.Image{}, errorf(block.ErrNotFound, "image %q not found", name)
	}
	rec := im.rec
	clones := 0
	for _, disk := range rec.Disks {
		clones += len(d.clonesOf(disk.Chain, 0))
	}
	d.mu.Unlock()
	out := api.Image{Name: rec.Name, Description: rec.Description, Created: api.At(rec.Created), State: rec.State,
		Source: rec.Source, Config: rec.Config, Clones: clones}
	for _, disk := range rec.Disks {
		out.Disks = append(out.Disks, api.ImageDisk{Name: disk.Name, Size: disk.Size, BlockSize: disk.BlockSize, Boot: disk.Boot})
		if rec.State != api.ImageCreating {
			_, logical, err := d.store.ChainUnique(ctx, disk.Chain)
			if err != nil {
				return api.Image{}, err
			}
			out.UniqueBytes += logical
		}
	}
	if out.Disks == nil {
		out.Disks = []api.ImageDisk{}
	}
	return out, nil
}

// DeleteImage deletes an image and frees what only it holds; refused
// while disks read through it (flatten them first).
func (d *Daemon) DeleteImage(ctx context.Context, name string) (api.DeleteSnapshotResult, error) {
	d.mu.Lock()
	im := d.images[name]
	var err error
	switch {
	case im == nil:
		err = errorf(block.ErrNotFound, "image %q not found", name)
	case im.rec.State == api.ImageCreating:
		err = errorf(block.ErrInUse, "image %q is being made; delete it when it is done", name)
	case im.readers > 0:
		err = errorf(block.ErrInUse, "image %q is being read (%d NBD export(s) of its disks open or exports to files running); delete it when they are done", name, im.readers)
	}
	var clones []string
	if err == nil {
		for _, disk := range im.rec.Disks {
			clones = append(clones, d.clonesOf(disk.Chain, 0)...)
		}
		if len(clones) > 0 {
			err = refuseClones(fmt.Sprintf("image %q", name), clones)
		}
	}
	if err != nil {
		d.mu.Unlock()
		return api.DeleteSnapshotResult{}, err
	}
	rec := im.rec
	delete(d.images, name)
	d.mu.Unlock()
	var freed uint64
	for _, disk := range rec.Disks {
		if _, logical, err := d.store.ChainUnique(ctx, disk.Chain); err == nil {
			freed += logical
		}
	}
	if err := d.dropImage(ctx, rec); err != nil {
		return api.DeleteSnapshotResult{}, fmt.Errorf("delete image %q: %w (delete it again to finish)", name, err)
	}
	d.kickGC()
	d.log.Info("image deleted", "image", name, "freed", freed)
	return api.DeleteSnapshotResult{FreedBytes: freed}, nil
}

// dropImage drops an image's chains, then its record.
func (d *Daemon) dropImage(ctx context.Context, rec imageRecord) error {
	for _, disk := range rec.Disks {
		if err := d.store.DropDisk(ctx, disk.Chain); err != nil {
			return err
		}
	}
	if err := d.store.Sync(); err != nil {
		return err
	}
	return d.deleteDurable(store.ImageKey(rec.Name))
}

// provisionFromImage creates machine name's disks as instant clones of an
// image's disks and returns the machine's record with the image's
// configuration, its disk names rewritten for the new disks. The disks of
// the image named X become NAME-X (or, when X starts with the image's
// source machine's name, that prefix becomes NAME). Caller holds d.mu.
func (d *Daemon) provisionFromImage(ctx context.Context, name, imageName string) (rec machineRecord, created []*Disk, err error) {
	im := d.images[imageName]
	if im == nil {
		return rec, nil, fieldError(block.ErrNotFound, fieldFromImage, "from_image: image %q not found", imageName)
	}
	if im.rec.State == api.ImageCreating {
		return rec, nil, fieldError(block.ErrFailed, fieldFromImage, "from_image: image %q is still being made", imageName)
	}
	srcMachine, _, _ := strings.Cut(im.rec.Source, "@")
	renames := map[string]string{}
	for _, disk := range im.rec.Disks {
		newName := name + "-" + disk.Name
		if rest, ok := strings.CutPrefix(disk.Name, srcMachine+"-"); ok && srcMachine != "" {
			newName = name + "-" + rest
		}
		if err := checkDiskName(fieldName, newName); err != nil {
			return rec, nil, err
		}
		if d.disks[newName] != nil {
			return rec, nil, fieldError(block.ErrExists, fieldName, "disk %q, for the image's disk %q, already exists: choose another machine name", newName, disk.Name)
		}
		renames[disk.Name] = newName
	}
	undo := func() { d.unprovision(created) }
	for _, disk := range im.rec.Disks {
		id, err := d.store.NextID(diskIDSeq)
		if err != nil {
			undo()
			return rec, nil, fmt.Errorf("allocate disk id: %w", err)
		}
		drec := diskRecord{ID: id, Name: renames[disk.Name], BlockSize: disk.BlockSize, Created: time.Now().UTC().Truncate(time.Second),
			Description: "from image " + imageName, Origin: []store.Layer{{Disk: disk.Chain, Seq: store.BaseSeq}},
			Parent: imageName + "/" + disk.Name}
		k, err := d.openCloneDisk(&drec, disk.Size)
		if err == nil {
			err = d.putRecord(drec)
			if err != nil {
				k.close()
				d.dropChain(drec)
			}
		}
		if err != nil {
			undo()
			return rec, nil, fmt.Errorf("provision disk %q from image %q: %w", drec.Name, imageName, err)
		}
		d.disks[drec.Name] = k
		created = append(created, k)
	}
	for _, disk := range im.rec.Disks {
		rec.Disks = append(rec.Disks, renames[disk.Name])
	}
	if im.rec.Config != nil {
		cfg := *im.rec.Config
		cfg.Data = renameDisks(cfg.Data, renames)
		rec.Config = &cfg
	}
	return rec, created, nil
}

// unprovision removes disks a failed provision created. Caller holds
// d.mu.
func (d *Daemon) unprovision(created []*Disk) {
	for _, k := range created {
		k.close()
		d.dropChain(k.rec)
		delete(d.disks, k.rec.Name)
		d.deleteDurable(diskKey(k.rec.Name))
		os.Remove(d.livePath(k.rec))
	}
}

// renameDisks replaces each disk name in a configuration document by its
// new name, where it stands as a whole name (not inside a longer one).
func renameDisks(doc string, renames map[string]string) string {
	olds := make([]string, 0, len(renames))
	for o := range renames {
		olds = append(olds, regexp.QuoteMeta(o))
	}
	if len(olds) == 0 {
		return doc
	}
	sort.Slice(olds, func(i, j int) bool { return len(olds[i]) > len(olds[j]) })
	re := regexp.MustCompile(`(^|[^A-Za-z0-9._-])(` + strings.Join(olds, "|") + `)($|[^A-Za-z0-9._-])`)
	// Adjacent names share a separator: replace until nothing changes.
	for {
		next := re.ReplaceAllStringFunc(doc, func(m string) string {
			sub := re.FindStringSubmatch(m)
			return sub[1] + renames[sub[2]] + sub[3]
		})
		if next == doc {
			return doc
		}
		doc = next
	}
}
