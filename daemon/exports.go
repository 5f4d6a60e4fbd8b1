package daemon

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/nbd"
)

// Exports: the names under which disks and snapshots are served, and the
// one way they are listed and opened. NBD (LIST, GO/EXPORT_NAME), the FUSE
// view and GET /v1/exports all go through here, so they agree on what
// exists; every open handle is counted on its disk (holders.go), which is
// how a disk with clients is not deleted or rolled back under them.

// exportName is an NBD export name: "DISK" is the live disk (read-write),
// "DISK@SNAPSHOT" a snapshot (read-only). A disk name cannot hold '@'
// (NameRule), so the first '@' separates the two.
type exportName struct {
	disk string
	snap string // "" for the live disk
}

// parseExport parses an export name; ok is false for a name no export can
// have (a bad disk name, or an '@' with no snapshot after it).
func parseExport(s string) (e exportName, ok bool) {
	disk, snap, isSnap := strings.Cut(s, "@")
	if !ValidName(disk) || isSnap && snap == "" {
		return exportName{}, false
	}
	return exportName{disk, snap}, true
}

func (e exportName) String() string {
	if e.snap == "" {
		return e.disk
	}
	return e.disk + "@" + e.snap
}

// exportDescription is what NBD clients and the API say about the export
// of the live disk (snap "") or of one of its snapshots.
func (k *Disk) exportDescription(snap string) string {
	if snap == "" {
		return k.rec.Description
	}
	return "snapshot " + snap + " of disk " + k.rec.Name
}

// exportable reports whether the disk's exports can be opened: its live
// image is open and it is not being deleted. Caller holds d.mu.
func (k *Disk) exportable() bool { return k.vol != nil && !k.deleting }

// export is one export that can be opened now.
type export struct {
	name exportName
	disk *Disk
	snap *cow.SnapshotInfo // nil for the live disk
}

func (x export) description() string { return x.disk.exportDescription(x.name.snap) }

// size is what a client that opens the export sees.
func (x export) size() int64 {
	if x.snap != nil {
		return x.snap.Size
	}
	return x.disk.vol.Size()
}

// exports yields every export that can be opened now, by disk name: each
// exportable disk's live export, followed by its readable snapshots',
// oldest first. With only set, just that disk's. This is the one list:
// NBD's LIST, GET /v1/exports and the FUSE tree all read it. Caller holds
// d.mu for the whole iteration.
func (d *Daemon) exports(only string) iter.Seq[export] {
	return func(yield func(export) bool) {
		disks := d.sortedDisks()
		if only != "" {
			disks = nil
			if k := d.disks[only]; k != nil {
				disks = []*Disk{k}
			}
		}
		for _, k := range disks {
			if !k.exportable() {
				continue
			}
			if !yield(export{name: exportName{disk: k.rec.Name}, disk: k}) {
				return
			}
			for _, s := range k.vol.Snapshots() {
				if s.Readable() && !yield(export{name: exportName{k.rec.Name, s.Name}, disk: k, snap: &s}) {
					return
				}
			}
		}
	}
}

// Exports lists the NBD exports, by name, with their connected clients.
func (d *Daemon) Exports() []api.Export {
	clients := d.nbdClients()
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.Export
	for x := range d.exports("") {
		name := x.name.String()
		out = append(out, api.Export{Name: name, Disk: x.disk.rec.Name, ReadOnly: x.snap != nil, Size: x.size(), Description: x.description(),
			Clients: exportClients(clients, name)})
	}
	return out
}

// exportClients is the clients of one export, never nil (JSON: []).
func exportClients(clients map[string][]api.NBDClient, export string) []api.NBDClient {
	if c := clients[export]; c != nil {
		return c
	}
	return []api.NBDClient{}
}

// nbdClients lists the connected NBD clients by the export they opened.
// Clients still negotiating have no export yet and are left out.
func (d *Daemon) nbdClients() map[string][]api.NBDClient {
	out := make(map[string][]api.NBDClient)
	for _, c := range d.nbd.Connections() {
		if c.Export != "" {
			out[c.Export] = append(out[c.Export], api.NBDClient{ID: c.ID, Remote: c.Remote, Since: api.At(c.Since), ReadOnly: c.ReadOnly})
		}
	}
	return out
}

// openExport opens the export name for one client of kind (an NBD
// connection, a FUSE file, a kernel attachment) and counts the client as
// a holder of the disk. release, to be called once when the client is done, closes the
// snapshot's view and wakes those who wait for the disk's holders. The
// error is block.ErrShutdown while cairnd stops and block.ErrNotFound for
// anything else that does not open.
func (d *Daemon) openExport(name exportName, kind holderKind) (exp *nbd.Export, release func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return nil, nil, block.ErrShutdown
	}
	k := d.disks[name.disk]
	if k == nil || !k.exportable() {
		return nil, nil, errorf(block.ErrNotFound, "no disk %q", name.disk)
	}
	var view *cow.View
	if name.snap != "" {
		if view, err = k.vol.OpenView(name.snap); err != nil {
			return nil, nil, errorf(block.ErrNotFound, "disk %q has no readable snapshot %q (%v)", name.disk, name.snap, err)
		}
	} else if k.rollingBack {
		return nil, nil, errorf(block.ErrNotFound, "disk %q is being rolled back; connect when the rollback task is done", name.disk)
	}
	h := holder{snap: name.snap, kind: kind}
	k.hold(h)
	return k.nbdExport(view), d.releaseFunc(k, h, view), nil
}

// exporter resolves NBD export names to disks for the nbd server.
type exporter struct{ d *Daemon }

var _ nbd.Exporter = exporter{}

// Open opens "DISK" (the live disk, read-write), "DISK@SNAPSHOT" (a
// readable snapshot, read-only) or "image:IMAGE/DISK" (an image's disk,
// read-only: transfer_image.go) for the client of ctx, as its role allows
// (nbdaccess.go): a reader gets the live disk read-only.
func (e exporter) Open(ctx context.Context, s string) (*nbd.Export, func(), error) {
	if image, disk, ok := parseImageExport(s); ok {
		// An image's disk is read-only: any role on it (the name as a
		// whole, for grants) opens it.
		if _, err := e.d.nbdAccess(ctx, exportName{disk: s}); err != nil {
			return nil, nil, err
		}
		exp, release, err := e.d.openImageExport(image, disk)
		if err != nil && !errors.Is(err, block.ErrShutdown) {
			err = fmt.Errorf("%w: %v", nbd.ErrUnknownExport, err)
		}
		return exp, release, err
	}
	name, ok := parseExport(s)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %q is not an export name (DISK or DISK@SNAPSHOT)", nbd.ErrUnknownExport, s)
	}
	readOnly, err := e.d.nbdAccess(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	exp, release, err := e.d.openExport(name, nbdClient)
	switch {
	case errors.Is(err, block.ErrShutdown):
		return nil, nil, err
	case err != nil:
		return nil, nil, fmt.Errorf("%w: %v", nbd.ErrUnknownExport, err)
	}
	if readOnly {
		exp.ReadOnly = true
	}
	exp.Observer = e.d.metrics.io.observeNBD(name.disk)
	return exp, release, nil
}

// List names every export that opens now and the client may open.
func (e exporter) List(ctx context.Context) []nbd.ExportInfo {
	d := e.d
	who := nbdCaller(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []nbd.ExportInfo
	for x := range d.exports("") {
		if d.policy.RoleOn(who, x.name.disk) >= access.Reader {
			out = append(out, nbd.ExportInfo{Name: x.name.String(), Description: x.description()})
		}
	}
	return out
}

// nbdExport is the export of the live disk (view nil) or of an open
// snapshot view, as NBD serves it and FUSE reads it. The live export
// offers qemu:dirty-bitmap:SNAP for every snapshot (the blocks changed
// since); a snapshot's offers it for every earlier snapshot. Caller holds
// d.mu.
func (k *Disk) nbdExport(view *cow.View) *nbd.Export {
	vol := k.vol
	exp := &nbd.Export{Name: k.rec.Name, Description: k.exportDescription(""), Device: vol, MultiConn: true}
	snap := ""
	if view != nil {
		snap = view.Name()
		exp.Name = exportName{k.rec.Name, snap}.String()
		exp.Description = k.exportDescription(snap)
		exp.Device, exp.ReadOnly = view, true
	}
	exp.Contexts = func() map[string]block.ExtentMap { return vol.DirtyBitmapContexts(snap) }
	return exp
}
