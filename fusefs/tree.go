// Package fusefs is Cairn's FUSE view of disks and snapshots, for host
// tools that want a file: loop devices, qemu-img, dd, backup agents, and
// people restoring one file from an old snapshot.
//
// The tree is
//
//	/<disk>/disk.raw                 the live disk, read-write
//	/<disk>/snapshots/<snap>.raw     each readable snapshot, read-only (0444)
//	/<disk>/scratch/<snap>.raw       the same snapshots, writable (0644): each
//	                                 open gets a private copy-on-write
//	                                 overlay, thrown away on close
//
// Scratch files let a filesystem on a crash-consistent snapshot replay its
// journal (a loop device over a scratch file, mounted read-only) without
// changing the snapshot; they are what `cairn mount DISK@SNAP` uses.
//
// It is a view of a Source (the daemon): every lookup and listing asks the
// Source, and the kernel does not cache the names of disks and snapshots,
// so they appear and disappear as the Source changes. Attributes (a size
// after a grow) are cached for a second; Tree.Invalidate drops them at
// once. Data goes through the device the Source
// opens (for a live disk the same cow.Volume as NBD, so change tracking and
// copy-on-write see FUSE writes exactly as NBD writes).
//
// Page cache: snapshot files keep the kernel page cache across opens (their
// content never changes). The live disk is opened with direct I/O unless
// Options.LiveCache is set; with LiveCache its read-only handles keep the
// page cache across opens too (writable ones still use direct I/O), and
// the daemon reports every change of the live disk (NBD writes, trims,
// zeroes, rollback, FUSE writes) to Tree.Changed before acknowledging it,
// which drops those pages, so readers never see stale ones (invalidate.go
// explains why none survives).
package fusefs

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Names inside a disk's directory.
const (
	liveName       = "disk.raw"
	snapDirName    = "snapshots"
	scratchDirName = "scratch"
	snapSuffix     = ".raw"
)

// Modes of the tree's entries. Only the mounting user (root) can reach the
// tree unless Options.AllowOther; the modes say what the files are for.
const (
	dirMode     = 0o755
	liveMode    = 0o644
	snapMode    = 0o444
	scratchMode = 0o644
)

// node is embedded by every node type: the go-fuse inode and the tree.
type node struct {
	fs.Inode
	t *Tree
}

var _ = (fs.NodeStatfser)((*node)(nil))

// Statfs reports the disks' total size as used space and nothing free: the
// tree holds no space of its own.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	var bytes int64
	files := uint64(1)
	for _, d := range n.t.src.Disks() {
		bytes += d.Size
		files += 3 + uint64(len(n.t.src.Snapshots(d.Name)))
	}
	*out = fuse.StatfsOut{
		Blocks:  uint64(bytes+bsize-1) / bsize,
		Files:   files,
		Bsize:   bsize,
		Frsize:  bsize,
		NameLen: 255,
	}
	return 0
}

// dirAttr fills the attributes of a directory dated t.
func dirAttr(a *fuse.Attr, t time.Time) {
	a.Mode = syscall.S_IFDIR | dirMode
	a.Nlink = 1 // "unknown" to find(1): do not count subdirectories
	setTimes(a, t, t)
}

func setTimes(a *fuse.Attr, mtime, ctime time.Time) {
	a.SetTimes(&mtime, &mtime, &ctime)
}

// rootNode is "/": one directory per disk.
type rootNode struct{ node }

var (
	_ = (fs.NodeLookuper)((*rootNode)(nil))
	_ = (fs.NodeReaddirer)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
)

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	dirAttr(&out.Attr, r.t.mounted)
	return 0
}

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d, ok := r.t.disk(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	dirAttr(&out.Attr, d.Created)
	if ch := r.GetChild(name); ch != nil {
		if dn, ok := ch.Operations().(*diskNode); ok && d.is(dn.created, dn.id) {
			return ch, 0
		}
	}
	dn := &diskNode{node: node{t: r.t}, disk: name, created: d.Created, id: d.ID}
	return r.NewInode(ctx, dn, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	disks := r.t.src.Disks()
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		if validName(d.Name) {
			names = append(names, d.Name)
		}
	}
	return dirList(names, syscall.S_IFDIR), 0
}

func dirList(names []string, mode uint32) fs.DirStream {
	slices.Sort(names)
	list := make([]fuse.DirEntry, len(names))
	for i, n := range names {
		list[i] = fuse.DirEntry{Name: n, Mode: mode}
	}
	return fs.NewListDirStream(list)
}

// validName reports whether a Source name can be a file name in the tree.
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// diskNode is /<disk>: disk.raw and snapshots/.
type diskNode struct {
	node
	disk    string
	created time.Time // with id, which of the disks named disk
	id      uint64
}

var (
	_ = (fs.NodeLookuper)((*diskNode)(nil))
	_ = (fs.NodeReaddirer)((*diskNode)(nil))
	_ = (fs.NodeGetattrer)((*diskNode)(nil))
)

// current returns the disk's entry if this node still stands for it.
func (d *diskNode) current() (DiskEntry, bool) {
	e, ok := d.t.disk(d.disk)
	return e, ok && e.is(d.created, d.id)
}

func (d *diskNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if _, ok := d.current(); !ok {
		return syscall.ENOENT
	}
	dirAttr(&out.Attr, d.created)
	return 0
}

func (d *diskNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	e, ok := d.current()
	if !ok {
		return nil, syscall.ENOENT
	}
	out.SetEntryTimeout(staticEntryTimeout) // these names live as long as the disk
	switch name {
	case liveName:
		liveAttr(&out.Attr, e, 0, e.Size)
		if ch := d.GetChild(name); ch != nil {
			return ch, 0
		}
		fn := &fileNode{node: node{t: d.t}, kind: liveFile, disk: d.disk, created: e.Created, diskID: e.ID}
		return d.NewInode(ctx, fn, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	case snapDirName, scratchDirName:
		dirAttr(&out.Attr, d.created)
		if ch := d.GetChild(name); ch != nil {
			return ch, 0
		}
		kind := snapFile
		if name == scratchDirName {
			kind = scratchFile
		}
		sd := &snapDirNode{node: node{t: d.t}, disk: d.disk, created: d.created, id: d.id, kind: kind}
		return d.NewInode(ctx, sd, fs.StableAttr{Mode: syscall.S_IFDIR}), 0
	}
	return nil, syscall.ENOENT
}

func (d *diskNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if _, ok := d.current(); !ok {
		return nil, syscall.ENOENT
	}
	return fs.NewListDirStream([]fuse.DirEntry{
		{Name: liveName, Mode: syscall.S_IFREG},
		{Name: scratchDirName, Mode: syscall.S_IFDIR},
		{Name: snapDirName, Mode: syscall.S_IFDIR},
	}), 0
}

// snapDirNode is /<disk>/snapshots or /<disk>/scratch: one file per
// readable snapshot.
type snapDirNode struct {
	node
	disk    string
	created time.Time // the disk's, with its id
	id      uint64
	kind    fileKind // of the files inside: snapFile or scratchFile
}

var (
	_ = (fs.NodeLookuper)((*snapDirNode)(nil))
	_ = (fs.NodeReaddirer)((*snapDirNode)(nil))
	_ = (fs.NodeGetattrer)((*snapDirNode)(nil))
)

func (s *snapDirNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if e, ok := s.t.disk(s.disk); !ok || !e.is(s.created, s.id) {
		return syscall.ENOENT
	}
	newest := s.created
	for _, sn := range s.t.src.Snapshots(s.disk) {
		if sn.Created.After(newest) {
			newest = sn.Created
		}
	}
	dirAttr(&out.Attr, newest)
	return 0
}

func (s *snapDirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	snap, ok := strings.CutSuffix(name, snapSuffix)
	if !ok {
		return nil, syscall.ENOENT
	}
	e, ok := s.t.snapshot(s.disk, snap)
	if !ok {
		return nil, syscall.ENOENT
	}
	snapAttr(&out.Attr, s.kind, e, e.Size)
	if ch := s.GetChild(name); ch != nil {
		if fn, ok := ch.Operations().(*fileNode); ok && fn.created.Equal(e.Created) {
			return ch, 0
		}
	}
	fn := &fileNode{node: node{t: s.t}, kind: s.kind, disk: s.disk, snap: snap, created: e.Created}
	return s.NewInode(ctx, fn, fs.StableAttr{Mode: syscall.S_IFREG}), 0
}

func (s *snapDirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	snaps := s.t.src.Snapshots(s.disk)
	names := make([]string, 0, len(snaps))
	for _, sn := range snaps {
		if validName(sn.Name + snapSuffix) {
			names = append(names, sn.Name+snapSuffix)
		}
	}
	return dirList(names, syscall.S_IFREG), 0
}

// liveAttr fills the attributes of a live disk file; lastWrite is the
// last write through the tree (unix nanoseconds, 0 for none).
func liveAttr(a *fuse.Attr, e DiskEntry, lastWrite int64, size int64) {
	a.Mode = syscall.S_IFREG | liveMode
	a.Nlink = 1
	a.Size = uint64(size)
	mtime := e.Modified
	if mtime.IsZero() {
		mtime = e.Created
	}
	if w := time.Unix(0, lastWrite); lastWrite != 0 && w.After(mtime) {
		mtime = w
	}
	setTimes(a, mtime, mtime)
}

// snapAttr fills the attributes of a snapshot or scratch file.
func snapAttr(a *fuse.Attr, kind fileKind, e SnapEntry, size int64) {
	a.Mode = syscall.S_IFREG | snapMode
	if kind == scratchFile {
		a.Mode = syscall.S_IFREG | scratchMode
	}
	a.Nlink = 1
	a.Size = uint64(size)
	setTimes(a, e.Created, e.Created)
}
