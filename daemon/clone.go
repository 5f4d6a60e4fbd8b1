package daemon

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Clones (docs/images.md): a disk made from a snapshot (or an image's
// disk) in milliseconds, whatever its size. Its unwritten blocks read
// through to its origin in the store (cow/clone.go); the record keeps the
// origin's layers. While a clone reads through a snapshot, that snapshot
// and its disk cannot be deleted: the refusal names the clones and how to
// flatten them.

// createClone makes disk rec a clone of from ("DISK@SNAPSHOT"). Caller
// holds d.mu and has checked rec's name.
func (d *Daemon) createClone(ctx context.Context, rec diskRecord, from string, req api.CreateDiskRequest) (*Disk, error) {
	if req.Size != "" || req.Adopt != "" || req.BlockSize != "" {
		return nil, invalidField(fieldFrom, "from: a clone takes its size and block size from its origin; leave size, block_size and adopt out (grow it afterwards if needed)")
	}
	name, ok := parseExport(from)
	if !ok || name.snap == "" {
		return nil, invalidField(fieldFrom, "from %q: name a snapshot as DISK@SNAPSHOT", from)
	}
	parent, err := d.liveDisk(name.disk)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	in, err := parent.vol.Snapshot(name.snap)
	if err != nil {
		return nil, fmt.Errorf("from: disk %q: %w", name.disk, err)
	}
	switch in.State {
	case cow.StateReady:
	case cow.StateCopying:
		return nil, fieldError(block.ErrFailed, fieldFrom, "from: snapshot %s is still copying out (%.0f%%): clone it when it is ready (cairn snapshot show %s %s)",
			name, in.Progress, name.disk, name.snap)
	default:
		return nil, fieldError(block.ErrFailed, fieldFrom, "from: snapshot %s is %s and cannot be cloned: %s", name, in.State, in.Reason)
	}
	origin := append([]store.Layer{{Disk: parent.rec.ID, Seq: in.Seq}}, parent.rec.Origin...)
	rec.Origin, rec.Parent, rec.BlockSize, rec.CopyOnRead = origin, name.String(), parent.rec.BlockSize, req.CopyOnRead
	return d.openCloneDisk(&rec, in.Size)
}

// openCloneDisk creates a clone's empty live image of size bytes and opens
// it. Nothing is left behind on error.
func (d *Daemon) openCloneDisk(rec *diskRecord, size int64) (*Disk, error) {
	path := d.livePath(*rec)
	if err := d.createSparse(path, size); err != nil {
		return nil, err
	}
	vol, err := cow.Open(path, d.volOptions(*rec))
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("open new clone: %w", err)
	}
	rec.Size = vol.Size()
	return &Disk{rec: *rec, vol: vol}, nil
}

// clonesOf names the disks and images whose origin reads chain disk as of
// seq (seq 0: any sequence of it). Caller holds d.mu.
func (d *Daemon) clonesOf(disk, seq uint64) []string {
	var out []string
	for _, k := range d.disks {
		for _, l := range k.rec.Origin {
			if l.Disk == disk && (seq == 0 || l.Seq == seq) && k.rec.ID != disk {
				out = append(out, k.rec.Name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// refuseClones is the refusal of a delete that would take what clones
// read through.
func refuseClones(what string, clones []string) error {
	return errorf(block.ErrInUse, "%s has clones that read through it: %s; flatten them first (cairn disk flatten %s), or delete them",
		what, strings.Join(clones, ", "), clones[0])
}

// Flatten starts a task that makes a clone independent of its parent:
// its origin's entries are copied into its own chain by reference
// (metadata only), and with hydrate its unwritten blocks are copied into
// its live image too, at most rate bytes per second (0: no bound). After
// it the parent's snapshot can be deleted.
func (d *Daemon) Flatten(ctx context.Context, name string, req api.FlattenRequest) (api.Task, error) {
	var rate int64
	if req.Rate != "" {
		var err error
		if rate, err = parseSize("rate", req.Rate); err != nil {
			return api.Task{}, err
		}
	}
	d.mu.Lock()
	k, err := d.liveDisk(name)
	if err == nil && len(k.rec.Origin) == 0 {
		err = errorf(block.ErrFailed, "disk %q is not a clone: there is nothing to flatten", name)
	}
	if err == nil && k.flattening {
		err = errorf(block.ErrInUse, "disk %q is already being flattened", name)
	}
	if err != nil {
		d.mu.Unlock()
		return api.Task{}, err
	}
	k.flattening = true
	vol := k.vol
	d.mu.Unlock()
	task, err := d.tasks.start(d.bg, taskSpec{kind: api.TaskFlatten, disk: name, unit: unitBytes, cancellable: true},
		func(ctx context.Context, progress progressFunc) (any, error) {
			defer func() {
				d.mu.Lock()
				k.flattening = false
				d.mu.Unlock()
			}()
			// One progress over both phases, in bytes of the disk: the
			// detach (metadata) is its first tenth when hydrating, the
			// copy of the data the rest.
			bs, size := uint64(vol.BlockSize()), uint64(vol.Size())
			detachShare := size
			if req.Hydrate {
				detachShare = size / 10
			}
			layers, err := vol.Detach(ctx, func(done, total uint64) {
				if total > 0 {
					progress(uint64(float64(done*bs)/float64(total*bs)*float64(detachShare)), size)
				}
			})
			if err != nil {
				return nil, err
			}
			d.mu.Lock()
			rec := k.rec
			rec.Origin, rec.Flattened, rec.Parent = layers, rec.Parent, ""
			d.mu.Unlock()
			if err := d.putRecord(rec); err != nil {
				return nil, err
			}
			d.mu.Lock()
			k.rec = rec
			d.mu.Unlock()
			d.log.Info("clone flattened", "disk", name, "was", rec.Flattened)
			if req.Hydrate {
				err := vol.Hydrate(ctx, rate, func(done, total uint64) {
					if total > 0 {
						progress(detachShare+uint64(float64(done)/float64(total)*float64(size-detachShare)), size)
					}
				})
				if err != nil {
					return nil, fmt.Errorf("the clone no longer depends on its parent, but copying its data into its image stopped: %w", err)
				}
			}
			return nil, nil
		})
	if err != nil {
		d.mu.Lock()
		k.flattening = false
		d.mu.Unlock()
	}
	return task, err
}

// cloneDepth is how many parents a clone has (0: not a clone).
func cloneDepth(rec diskRecord) int {
	n := 0
	for _, l := range rec.Origin {
		if l.Disk != rec.ID {
			n++
		}
	}
	return n
}
