// Package faultfs is a passthrough FUSE filesystem for tests that fails
// reads, writes and syncs of chosen files on command, as a failing disk
// would under Cairn (dm-flakey does this for block devices; this machine
// has no device-mapper). Everything else passes through to a backing
// directory (go-fuse's loopback).
//
// A Rule names the files (by the path relative to the mount), the
// operations and optionally a byte range; while it is armed, matching
// requests fail with its errno (EIO by default) and are counted. Arming a
// read rule drops the kernel's cache of the matching open files' pages,
// so reads of data written earlier reach the filesystem (and fail) too.
//
// The filesystem is served by a child process (Start; the test binary
// run again, which must call ChildMain first in its TestMain): a program
// that maps files of a FUSE filesystem it serves itself deadlocks, since
// a thread blocked in a page fault stops the Go runtime's garbage
// collector, which stops the goroutines that would serve the fault.
// Tests only: it needs root (mount) and /dev/fuse.
package faultfs

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Op is a set of operations a rule fails.
type Op int

// The operations.
const (
	Read Op = 1 << iota
	Write
	Fsync    // fsync, fdatasync, msync(MS_SYNC)
	Allocate // fallocate
)

// Rule fails matching requests while armed.
type Rule struct {
	Ops Op
	// Prefix and Suffix match the file's path relative to the mount
	// (such as "store/000001.vlog"); "" matches every path.
	Prefix, Suffix string
	// Off and Len limit Read and Write rules to requests overlapping
	// [Off, Off+Len); Len 0 means the whole file.
	Off, Len int64
	Errno    syscall.Errno // 0 means EIO
}

func (r Rule) names(rel string) bool {
	return strings.HasPrefix(rel, r.Prefix) && strings.HasSuffix(rel, r.Suffix)
}

func (r Rule) matches(op Op, rel string, off, n int64) bool {
	if r.Ops&op == 0 || !r.names(rel) {
		return false
	}
	if r.Len == 0 || op&(Read|Write) == 0 {
		return true
	}
	return off < r.Off+r.Len && off+n > r.Off
}

// server is the mounted filesystem, in the child process.
type server struct {
	Dir     string // the mount point
	backing string
	server  *fuse.Server

	mu    sync.Mutex
	rules map[int]Rule // armed rules by id
	next  int
	hits  int                    // requests failed
	open  map[*fs.Inode]openFile // inodes with open files
}

type openFile struct {
	rel   string // path relative to the mount
	count int    // open handles
}

// mount mounts a filesystem on dir that passes through to backing.
func mount(backing, dir string) (*server, error) {
	f := &server{Dir: dir, backing: backing, rules: make(map[int]Rule), open: make(map[*fs.Inode]openFile)}
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, err
	}
	root := &fs.LoopbackRoot{Path: backing, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, parent *fs.Inode, name string, st *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: r}, ffs: f}
	}
	rootNode := root.NewNode(root, nil, "", &st)
	root.RootNode = rootNode
	zero := time.Duration(0)
	server, err := fs.Mount(dir, rootNode, &fs.Options{
		// No attribute or entry caching: sizes must follow the backing
		// files exactly (fallocate, truncate).
		AttrTimeout: &zero, EntryTimeout: &zero, NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			AllowOther: true, FsName: "faultfs", Name: "faultfs",
			MaxWrite: 1 << 20, DisableXAttrs: true, DirectMount: true,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mount faultfs on %s: %w", dir, err)
	}
	f.server = server
	return f, nil
}

// unmount unmounts the filesystem.
func (f *server) unmount() error {
	err := f.server.Unmount()
	if err != nil {
		syscall.Unmount(f.Dir, syscall.MNT_DETACH)
	}
	f.server.Wait()
	return err
}

// fail arms r and returns the function that disarms it.
func (f *server) fail(r Rule) (disarm func()) {
	if r.Errno == 0 {
		r.Errno = syscall.EIO
	}
	f.mu.Lock()
	id := f.next
	f.next++
	f.rules[id] = r
	var drop []*fs.Inode
	if r.Ops&Read != 0 {
		for ino, o := range f.open {
			if r.names(o.rel) {
				drop = append(drop, ino)
			}
		}
	}
	f.mu.Unlock()
	for _, ino := range drop {
		ino.NotifyContent(0, 0) // 0 length: the whole file's cached pages
	}
	return func() {
		f.mu.Lock()
		delete(f.rules, id)
		f.mu.Unlock()
	}
}

// hitCount is how many requests armed rules have failed so far.
func (f *server) hitCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// check returns the errno of the first armed rule that matches, or 0.
func (f *server) check(op Op, rel string, off, n int64) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.matches(op, rel, off, n) {
			f.hits++
			return r.Errno
		}
	}
	return 0
}

// node is a loopback node whose open files go through file.
type node struct {
	fs.LoopbackNode
	ffs *server
}

var (
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
)

func (n *node) rel(name string) string {
	return filepath.Join(n.Path(n.Root()), name)
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return n.ffs.wrap(n.EmbeddedInode(), n.Path(n.Root()), fh), fuseFlags, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ino, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ino, n.ffs.wrap(ino, n.rel(name), fh), fuseFlags, 0
}

// CopyFileRange is refused so the kernel falls back to reads and writes,
// which the rules see.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOSYS
}

func (f *server) wrap(ino *fs.Inode, rel string, fh fs.FileHandle) *file {
	f.mu.Lock()
	f.open[ino] = openFile{rel: rel, count: f.open[ino].count + 1}
	f.mu.Unlock()
	return &file{lf: fh.(*fs.LoopbackFile), ffs: f, rel: rel, ino: ino}
}

// file passes every request to the loopback file unless a rule fails it.
// It deliberately has no PassthroughFd: the kernel must send reads and
// writes here.
type file struct {
	lf  *fs.LoopbackFile
	ffs *server
	rel string
	ino *fs.Inode
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileGetattrer = (*file)(nil)
	_ fs.FileSetattrer = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
)

func (x *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := x.ffs.check(Read, x.rel, off, int64(len(dest))); e != 0 {
		return nil, e
	}
	// Read into dest now (the loopback's result would read later, past
	// the check).
	n, err := syscall.Pread(x.fd(), dest, off)
	if err != nil {
		return nil, fs.ToErrno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (x *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if e := x.ffs.check(Write, x.rel, off, int64(len(data))); e != 0 {
		return 0, e
	}
	return x.lf.Write(ctx, data, off)
}

func (x *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if e := x.ffs.check(Fsync, x.rel, 0, 0); e != 0 {
		return e
	}
	return x.lf.Fsync(ctx, flags)
}

func (x *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if e := x.ffs.check(Allocate, x.rel, int64(off), int64(size)); e != 0 {
		return e
	}
	return x.lf.Allocate(ctx, off, size, mode)
}

func (x *file) Flush(ctx context.Context) syscall.Errno { return x.lf.Flush(ctx) }

func (x *file) Release(ctx context.Context) syscall.Errno {
	x.ffs.mu.Lock()
	if o := x.ffs.open[x.ino]; o.count > 1 {
		x.ffs.open[x.ino] = openFile{rel: o.rel, count: o.count - 1}
	} else {
		delete(x.ffs.open, x.ino)
	}
	x.ffs.mu.Unlock()
	return x.lf.Release(ctx)
}

func (x *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return x.lf.Getattr(ctx, out)
}

func (x *file) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return x.lf.Setattr(ctx, in, out)
}

func (x *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	return x.lf.Lseek(ctx, off, whence)
}

// fd is the backing file's descriptor.
func (x *file) fd() int {
	fd, _ := x.lf.PassthroughFd()
	return fd
}
