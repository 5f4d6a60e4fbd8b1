package daemon

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/fusefs"
)

// fuseSource shows the daemon's exports in the FUSE tree (docs/fuse.md):
// each disk that can be exported, and its readable snapshots. Files open
// through openExport, as NBD clients do, so a FUSE file is a holder: a
// disk with one open is not deleted or rolled back under it.
type fuseSource struct{ d *Daemon }

var _ fusefs.Source = fuseSource{}

func (s fuseSource) Disks() []fusefs.DiskEntry {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []fusefs.DiskEntry
	for x := range d.exports("") {
		if x.snap == nil {
			// Created is kept to the second: the id tells a disk created
			// again under its name (a new inode, no stale pages) from the
			// old one.
			rec := x.disk.rec
			out = append(out, fusefs.DiskEntry{Name: rec.Name, Size: x.size(), Created: rec.Created, ID: rec.ID})
		}
	}
	return out
}

func (s fuseSource) Snapshots(disk string) []fusefs.SnapEntry {
	if disk == "" {
		return nil // exports("") would be every disk's
	}
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []fusefs.SnapEntry
	for x := range d.exports(disk) {
		if x.snap != nil {
			out = append(out, fusefs.SnapEntry{Name: x.snap.Name, Size: x.size(), Created: x.snap.Created})
		}
	}
	return out
}

func (s fuseSource) OpenDisk(ctx context.Context, disk string) (block.Device, func(), error) {
	return s.open(exportName{disk: disk})
}

func (s fuseSource) OpenSnapshot(ctx context.Context, disk, snap string) (block.Device, func(), error) {
	if snap == "" {
		return nil, nil, fmt.Errorf("%w: no snapshot name", fs.ErrNotExist)
	}
	return s.open(exportName{disk, snap})
}

// open opens an export for one FUSE file.
func (s fuseSource) open(name exportName) (block.Device, func(), error) {
	exp, release, err := s.d.openExport(name, fuseFile)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", fs.ErrNotExist, err)
	}
	return s.d.metrics.io.meter(exp.Device, frontendFUSE, name.disk), release, nil
}

// mountFUSE mounts the FUSE tree when the config asks for it, detaching a
// dead one a killed cairnd left behind.
func (d *Daemon) mountFUSE() error {
	if !d.cfg.fuseOn() {
		return nil
	}
	// Read-only handles of the live disks' files keep the page cache:
	// every volume reports its writes to the tree (fuseWriteHook), which
	// drops what changed.
	// Under systemd's hardening cairnd has a mount namespace of its own;
	// the tree is then mounted in the host's, where users and `cairn
	// mount` see it (fusefs/hostns.go).
	host := fusefs.PrivateNamespace()
	opts := fusefs.Options{LiveCache: true, Logger: d.log.With("component", "fuse"), HostNamespace: host}
	tree, err := fusefs.Mount(d.cfg.FUSEDir, fuseSource{d}, opts)
	if err != nil && host {
		// An older unit without the capabilities, say: serve the view
		// where cairnd is rather than not start.
		d.log.Warn("FUSE view not mounted in the host's mount namespace; mounting it in cairnd's own, where the host does not see it (docs/security.md: the hardened unit)", "err", err)
		host, opts.HostNamespace = false, false
		tree, err = fusefs.Mount(d.cfg.FUSEDir, fuseSource{d}, opts)
	}
	if err != nil {
		return fmt.Errorf("--fuse-dir %s: %w (run with --fuse=false to do without the FUSE view)", d.cfg.FUSEDir, err)
	}
	d.fuse = tree
	d.log.Info("FUSE view mounted", "dir", tree.Dir(), "host_namespace", host)
	return nil
}

// unmountFUSE unmounts the tree; files still open keep it until cairnd
// exits (it is detached lazily). d.fuse stays set (the write hooks read it
// without a lock); an unmounted tree ignores Changed and Invalidate.
func (d *Daemon) unmountFUSE() {
	if d.fuse == nil {
		return
	}
	if err := d.fuse.Unmount(); err != nil {
		d.log.Warn("FUSE view", "err", err)
	}
}

// fuseChanged tells the FUSE tree a disk changed outside it (grown, rolled
// back, snapshots added or removed), so sizes and listings show at once.
func (d *Daemon) fuseChanged(disk string) {
	if d.fuse != nil {
		d.fuse.Invalidate(disk)
	}
}

// fuseWriteHook is a live volume's cow.Options.OnWrite: it tells the FUSE
// tree which range of disk changed (by NBD, a rollback or FUSE itself), so
// the kernel drops those cached pages of disk.raw before the write is
// acknowledged. Nil without the FUSE view. d.fuse is set before any volume
// is written and never changes afterwards.
func (d *Daemon) fuseWriteHook(disk string) func(ctx context.Context, off, length int64) {
	if !d.cfg.fuseOn() {
		return nil
	}
	return func(_ context.Context, off, length int64) {
		if t := d.fuse; t != nil {
			t.Changed(disk, off, length)
		}
	}
}
