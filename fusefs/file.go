package fusefs

import (
	"context"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fileKind says which of the tree's files a fileNode is.
type fileKind uint8

const (
	liveFile    fileKind = iota // /<disk>/disk.raw
	snapFile                    // /<disk>/snapshots/<snap>.raw
	scratchFile                 // /<disk>/scratch/<snap>.raw
)

// fileNode is one of the tree's files.
type fileNode struct {
	node
	kind    fileKind
	disk    string
	snap    string // "" for liveFile
	created time.Time
	diskID  uint64 // liveFile: DiskEntry.ID
	// lastWrite is when this tree last wrote the file (unix nanoseconds),
	// so mtime moves with FUSE writes even before the Source knows.
	lastWrite atomic.Int64
}

var (
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
)

func (n *fileNode) live() bool { return n.kind == liveFile }

// attr fills out from the Source's entry; size is the open file's size or
// -1 to take the entry's.
func (n *fileNode) attr(out *fuse.Attr, size int64) syscall.Errno {
	if n.live() {
		e, ok := n.t.disk(n.disk)
		if !ok || !e.is(n.created, n.diskID) {
			return syscall.ENOENT
		}
		if size < 0 {
			size = e.Size
		}
		liveAttr(out, e, n.lastWrite.Load(), size)
		return 0
	}
	e, ok := n.t.snapshot(n.disk, n.snap)
	if !ok || !e.Created.Equal(n.created) {
		return syscall.ENOENT
	}
	if size < 0 {
		size = e.Size
	}
	snapAttr(out, n.kind, e, size)
	return 0
}

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := int64(-1)
	if h, ok := fh.(*handle); ok {
		size = h.f.Size()
		// An open file outlives its entry (a deleted disk or snapshot):
		// fstat still answers from the handle.
		if errno := n.attr(&out.Attr, size); errno == syscall.ENOENT {
			if n.live() {
				liveAttr(&out.Attr, DiskEntry{Created: n.created}, n.lastWrite.Load(), size)
			} else {
				snapAttr(&out.Attr, n.kind, SnapEntry{Created: n.created}, size)
			}
		}
		return 0
	}
	return n.attr(&out.Attr, size)
}

// Setattr accepts only what leaves the content alone: timestamps on a
// writable file (ignored; they come from the data) and truncation to the
// current size. A disk is resized through the API, never by truncate.
func (n *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	const harmless = fuse.FATTR_FH | fuse.FATTR_LOCKOWNER | fuse.FATTR_ATIME | fuse.FATTR_MTIME |
		fuse.FATTR_ATIME_NOW | fuse.FATTR_MTIME_NOW | fuse.FATTR_CTIME | fuse.FATTR_KILL_SUIDGID
	if n.kind == snapFile {
		return syscall.EROFS
	}
	size := int64(-1)
	if h, ok := fh.(*handle); ok {
		size = h.f.Size()
	}
	if errno := n.attr(&out.Attr, size); errno != 0 {
		return errno
	}
	if in.Valid&fuse.FATTR_SIZE != 0 && in.Size != out.Attr.Size {
		n.t.log.Info("refused to truncate a live disk file; resize the disk through the API",
			"disk", n.disk, "size", out.Attr.Size, "requested", in.Size)
		return syscall.EPERM
	}
	if in.Valid&^(harmless|fuse.FATTR_SIZE) != 0 {
		return syscall.EPERM
	}
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	writable := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	switch n.kind {
	case snapFile:
		if writable {
			return nil, 0, syscall.EROFS
		}
		f, release, err := n.t.src.OpenSnapshot(ctx, n.disk, n.snap)
		if err != nil {
			return nil, 0, n.t.errno("open snapshot", n.disk+"@"+n.snap, err)
		}
		// A snapshot never changes: the page cache stays valid across opens.
		return &handle{n: n, f: f, release: release}, fuse.FOPEN_KEEP_CACHE, 0
	case scratchFile:
		return n.openScratch(ctx, writable)
	}
	f, release, err := n.t.src.OpenDisk(ctx, n.disk)
	if err != nil {
		return nil, 0, n.t.errno("open disk", n.disk, err)
	}
	h := &handle{n: n, f: f, release: release, writable: writable}
	if !n.t.opts.LiveCache {
		return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
	}
	// Changed keeps the page cache coherent while the file is watched
	// (invalidate.go). Writable handles are watched too: a private mapping
	// of one fills the page cache as well.
	h.watched = true
	n.t.cache.opened(n)
	if writable {
		// Writes reach the File at once, and through it Changed, which
		// drops what read-only handles cached.
		return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
	}
	// Read-only: the page cache stays across opens.
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

// openScratch opens a snapshot through a private overlay. Every handle
// has its own content, so none of it may sit in the inode's page cache.
func (n *fileNode) openScratch(ctx context.Context, writable bool) (fs.FileHandle, uint32, syscall.Errno) {
	base, release, err := n.t.src.OpenSnapshot(ctx, n.disk, n.snap)
	if err != nil {
		return nil, 0, n.t.errno("open snapshot", n.disk+"@"+n.snap, err)
	}
	h := &handle{n: n, f: base, release: release}
	if writable {
		ov, err := newOverlay(base, n.t.opts.ScratchDir)
		if err != nil {
			release()
			return nil, 0, n.t.errno("open scratch", n.disk+"@"+n.snap, err)
		}
		h.f, h.writable = ov, true
		h.release = func() {
			ov.Close()
			release()
		}
	}
	return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

// handle is one open file: the File the Source opened for it.
type handle struct {
	n        *fileNode
	f        block.Device
	release  func()
	writable bool
	watched  bool // a live handle with LiveCache: counted in Tree.cache
}

var (
	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
	_ = (fs.FileAllocater)((*handle)(nil))
	_ = (fs.FileLseeker)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
)

func (h *handle) name() string {
	if h.n.live() {
		return h.n.disk
	}
	return h.n.disk + "@" + h.n.snap
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := h.f.Size()
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	p := dest[:min(int64(len(dest)), size-off)]
	if b, ok := h.f.(block.Backed); ok {
		if fd, fdOff, ok := b.Backing(off, int64(len(p))); ok {
			return fuse.ReadResultFd(fd, fdOff, len(p)), 0
		}
	}
	if err := h.f.ReadAt(ctx, p, off); err != nil {
		return nil, h.n.t.errno("read", h.name(), err)
	}
	return fuse.ReadResultData(p), 0
}

// Write writes inside the disk only: a disk has a fixed size, so a write
// at the end fails with ENOSPC like a block device's, and one that crosses
// it is short.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if !h.writable {
		return 0, syscall.EBADF
	}
	size := h.f.Size()
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= size {
		if len(data) == 0 {
			return 0, 0
		}
		return 0, syscall.ENOSPC
	}
	p := data[:min(int64(len(data)), size-off)]
	if err := h.f.WriteAt(ctx, p, off, false); err != nil {
		return 0, h.n.t.errno("write", h.name(), err)
	}
	h.n.lastWrite.Store(time.Now().UnixNano())
	return uint32(len(p)), 0
}

// Fsync makes every write completed before it durable (FLUSH).
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if !h.writable {
		return 0
	}
	return h.n.t.errno("fsync", h.name(), h.f.Flush(ctx))
}

// Flush is close(2): nothing to do; durability is fsync's job.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	if h.release != nil {
		h.release()
	}
	if h.watched {
		h.n.t.cache.closed(h.n)
	}
	return 0
}

// Allocate maps fallocate: PUNCH_HOLE to Trim, ZERO_RANGE to Zero (when
// the File can), anything else EOPNOTSUPP. The file never grows.
func (h *handle) Allocate(ctx context.Context, off, length uint64, mode uint32) syscall.Errno {
	if !h.writable {
		return syscall.EBADF
	}
	size := uint64(h.f.Size())
	keepSize := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	mode &^= unix.FALLOC_FL_KEEP_SIZE
	if mode != unix.FALLOC_FL_PUNCH_HOLE && mode != unix.FALLOC_FL_ZERO_RANGE {
		return syscall.EOPNOTSUPP
	}
	if off+length < off || off > 1<<62 {
		return syscall.EINVAL
	}
	if off+length > size {
		if !keepSize {
			return syscall.EFBIG
		}
		length = size - min(off, size)
	}
	if length == 0 {
		return 0
	}
	var err error
	if mode == unix.FALLOC_FL_PUNCH_HOLE {
		err = h.f.Trim(ctx, int64(off), int64(length), false)
	} else {
		err = h.f.Zero(ctx, int64(off), int64(length), block.ZeroNoHole)
	}
	if err != nil {
		return h.n.t.errno("fallocate", h.name(), err)
	}
	h.n.lastWrite.Store(time.Now().UnixNano())
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the File's extents (the kernel
// handles the other whences itself).
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != unix.SEEK_DATA && whence != unix.SEEK_HOLE {
		return 0, syscall.EINVAL
	}
	pos, err := seekExtent(ctx, h.f, int64(min(off, 1<<62)), whence == unix.SEEK_DATA)
	if err != nil {
		return 0, h.n.t.errno("lseek", h.name(), err)
	}
	return uint64(pos), 0
}

// seekExtent returns the first offset at or after off that is data
// (wantData) or a hole; the end of the file counts as a hole. It returns
// ENXIO when off is at or past the end, or there is no data after off.
func seekExtent(ctx context.Context, f block.Device, off int64, wantData bool) (int64, error) {
	size := f.Size()
	if off >= size {
		return 0, syscall.ENXIO
	}
	for off < size {
		exts, err := f.Extents(ctx, off, size-off)
		if err != nil {
			return 0, err
		}
		if len(exts) == 0 {
			return 0, syscall.EIO
		}
		for _, e := range exts {
			if e.Length <= 0 {
				return 0, syscall.EIO
			}
			if isHole := e.Flags&block.StateHole != 0; isHole != wantData {
				return off, nil
			}
			off += e.Length
			if off >= size {
				break
			}
		}
	}
	if wantData {
		return 0, syscall.ENXIO
	}
	return size, nil
}
