package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/block"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FSType is the filesystem type of the tree in /proc/self/mountinfo.
const FSType = "fuse.cairn"

// MaxIO is the largest read or write the kernel sends in one request.
const MaxIO = 1 << 20

// Options configure Mount.
type Options struct {
	// LiveCache lets the kernel page cache hold the pages of read-only
	// handles of live disk files, across opens: repeated reads run at
	// memory speed. Writable handles use direct I/O all the same. Without
	// it every live disk handle uses direct I/O: every read asks the device,
	// nothing can be stale. With it, every change of a live disk while
	// the tree is mounted must reach Tree.Changed before it is
	// acknowledged (invalidate.go says why that suffices).
	LiveCache bool
	// ScratchDir holds the overlays of open scratch files (unlinked
	// files, gone when closed). Empty: os.TempDir().
	ScratchDir string
	// AllowOther lets users other than the mounting one use the tree.
	AllowOther bool
	// Logger receives errors the kernel only sees as an errno. Nil:
	// slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request (very verbose).
	Debug bool
	// HostNamespace mounts the tree in PID 1's mount namespace instead of
	// this process's (hostns.go): for a cairnd that systemd runs in a
	// namespace of its own, so that the host sees the tree.
	HostNamespace bool
}

// How long the kernel may cache names and attributes. Names that come and
// go with the Source (disks, snapshots) are not cached: every path walk
// asks the Source, so a deleted disk or snapshot is gone at once. The
// fixed names inside a disk's directory are cached for staticEntryTimeout.
// Attributes (a disk's size after a grow) are cached for attrTimeout unless
// Tree.Invalidate drops them.
const (
	staticEntryTimeout = time.Second
	attrTimeout        = time.Second
)

// Tree is a mounted FUSE view of a Source.
type Tree struct {
	dir     string
	ns      namespace // where it is mounted
	src     Source
	opts    Options
	log     *slog.Logger
	mounted time.Time
	root    *rootNode
	server  *fuse.Server
	cache   pageCache
	// unmounted is set once the kernel has let go of the tree: Changed
	// and Invalidate have nothing left to tell it.
	unmounted atomic.Bool
}

// Mount mounts the tree of src on dir (created if missing) and serves it
// until Unmount. A stale FUSE mount left on dir by a killed process is
// detached first (see CleanStale).
func Mount(dir string, src Source, opts Options) (*Tree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fuse mount point %s: %w", dir, err)
	}
	ns := ownNamespace
	if opts.HostNamespace {
		ns = hostNamespace
	}
	if _, err := cleanStale(ns, abs); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create fuse mount point: %w", err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("FUSE is not available (%w): load the fuse module or run with --fuse=false", err)
	}
	t := &Tree{dir: abs, ns: ns, src: src, opts: opts, log: opts.Logger, mounted: time.Now()}
	if t.log == nil {
		t.log = slog.Default()
	}
	t.cache.init()
	t.root = &rootNode{node: node{t: t}}
	attr := attrTimeout
	fsopts := &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:       "cairn",
			Name:         "cairn",
			AllowOther:   opts.AllowOther,
			MaxWrite:     MaxIO,
			MaxReadAhead: MaxIO,
			// Readahead and asynchronous direct I/O (libaio) count as
			// background requests; go-fuse's default allows 12.
			MaxBackground: 64,
			// Root mounts without fusermount; others fall back to it.
			DirectMount: true,
			// Without xattrs the kernel stops asking for
			// security.capability before every write.
			DisableXAttrs: true,
			// The kernel must not drop cached pages when a file's mtime
			// moves (a FUSE write makes it move): snapshots never change,
			// and the live disk's pages are dropped by Changed, exactly.
			ExplicitDataCacheControl: true,
			Debug:                    opts.Debug,
			Logger:                   log.New(logWriter{t.log, opts.Debug}, "", 0),
		},
		// No default entry timeout: Lookup sets one for fixed names only.
		AttrTimeout: &attr,
		UID:         uint32(os.Getuid()),
		GID:         uint32(os.Getgid()),
	}
	mountPoint, mounted := abs, func() error { return nil }
	if ns.host {
		// go-fuse would try a direct mount on "/dev/fd/N" before taking
		// it as the descriptor of a mount made elsewhere.
		fsopts.MountOptions.DirectMount = false
		if mountPoint, mounted, err = mountInHost(abs, opts.AllowOther); err != nil {
			return nil, fmt.Errorf("mount FUSE tree on %s in the host's mount namespace: %w", abs, err)
		}
	}
	server, err := gofs.Mount(mountPoint, t.root, fsopts)
	if err == nil {
		err = mounted()
		if err != nil {
			server.Unmount()
		}
	}
	if err != nil {
		if ns.host {
			ns.detach(abs)
		}
		return nil, fmt.Errorf("mount FUSE tree on %s: %w", abs, err)
	}
	t.server = server
	closeOnExecFUSE()
	t.raiseReadahead()
	return t, nil
}

// closeOnExecFUSE marks every /dev/fuse descriptor close-on-exec. go-fuse
// (v2.12) leaves the one of a direct mount inheritable: a program the
// daemon starts would keep the connection open after the daemon died, and
// the mount would hang instead of failing with ENOTCONN.
func closeOnExecFUSE() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				unix.CloseOnExec(fd)
			}
		}
	}
}

// raiseReadahead lets the kernel read ahead MaxIO at a time (its default
// is 128 KiB, and the FUSE handshake can only lower it): cold sequential
// reads of snapshots, and of the live disk with LiveCache, then travel in
// 1 MiB requests. Failure only costs speed.
func (t *Tree) raiseReadahead() {
	var st unix.Stat_t
	if err := unix.Stat(t.ns.view(t.dir), &st); err != nil {
		return
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(path, []byte(strconv.Itoa(MaxIO>>10)), 0); err != nil {
		t.log.Debug("could not raise FUSE readahead", "path", path, "err", err)
	}
}

// Dir is the mount point.
func (t *Tree) Dir() string { return t.dir }

// Unmount unmounts the tree and waits for its requests to finish. When
// files are still open (a loop device, a shell in the tree), it detaches
// the mount lazily instead, so the mount point is free at once, and
// returns an error saying so; open files keep working until the process
// exits.
func (t *Tree) Unmount() error {
	if t.unmounted.Load() {
		return nil
	}
	if t.ns.host {
		return t.unmountHost()
	}
	err := t.server.Unmount()
	if err == nil {
		t.unmounted.Store(true)
		return nil
	}
	if derr := unix.Unmount(t.dir, unix.MNT_DETACH); derr != nil && !errors.Is(derr, unix.EINVAL) {
		return fmt.Errorf("unmount FUSE tree %s: %v; lazy detach: %w", t.dir, err, derr)
	}
	return fmt.Errorf("unmount FUSE tree %s: busy (%v): detached lazily; files still open on it fail once this process exits", t.dir, err)
}

// disk returns the Source's entry for name.
func (t *Tree) disk(name string) (DiskEntry, bool) {
	if !validName(name) {
		return DiskEntry{}, false
	}
	for _, d := range t.src.Disks() {
		if d.Name == name {
			return d, true
		}
	}
	return DiskEntry{}, false
}

// snapshot returns the Source's entry for disk@snap.
func (t *Tree) snapshot(disk, snap string) (SnapEntry, bool) {
	if !validName(snap) {
		return SnapEntry{}, false
	}
	for _, s := range t.src.Snapshots(disk) {
		if s.Name == snap {
			return s, true
		}
	}
	return SnapEntry{}, false
}

// errno turns a device or Source error into the errno the caller sees, and
// logs the ones the errno cannot explain.
func (t *Tree) errno(op, name string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return syscall.EINTR
	case errors.Is(err, block.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, block.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, block.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, block.ErrNotFast):
		return syscall.EOPNOTSUPP
	case errors.Is(err, block.ErrDenied):
		return syscall.EACCES
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, block.ErrNotFound):
		return syscall.ENOENT
	case errors.As(err, &errno):
		return errno
	}
	t.log.Error("FUSE request failed", "op", op, "file", name, "err", err)
	return syscall.EIO
}

// logWriter sends go-fuse's log lines to slog: at Info with Options.Debug
// (the request trace was asked for), else at Debug (go-fuse's own notes,
// such as replies to interrupted requests, are noise in a daemon's log).
type logWriter struct {
	log   *slog.Logger
	debug bool
}

func (w logWriter) Write(p []byte) (int, error) {
	level := slog.LevelDebug
	if w.debug {
		level = slog.LevelInfo
	}
	w.log.Log(context.Background(), level, "go-fuse", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}
