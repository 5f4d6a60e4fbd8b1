package fusefs

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

// Invalidate makes the kernel drop what it cached about disk's part of the
// tree: its snapshot list, the attributes of disk.raw (a resize) and, with
// LiveCache, disk.raw's pages (a rollback: every write of it also went
// through Changed; dropping them all once more costs one reread). disk ==
// "" does so for the disk list and every disk. Call it after creating,
// deleting, resizing or rolling back a disk and after creating or deleting
// a snapshot. Never call it from inside a Source method or while holding a
// lock a Source method takes: the kernel waits for lookups in flight
// before it drops a name.
func (t *Tree) Invalidate(disk string) {
	if t.unmounted.Load() {
		return
	}
	if disk != "" {
		t.invalidateDisk(disk)
		return
	}
	for name := range t.root.Children() {
		t.invalidateDisk(name)
	}
}

func (t *Tree) invalidateDisk(disk string) {
	ch := t.root.GetChild(disk)
	if ch == nil {
		return // the kernel holds nothing of it (and caches no misses)
	}
	dn, ok := ch.Operations().(*diskNode)
	if !ok {
		return
	}
	if _, ok := dn.current(); !ok {
		forget(t.root.EmbeddedInode(), disk)
		// Nothing writes a deleted disk any more: stop watching its
		// file unless a handle still reads it.
		t.cache.unwatchIdle(disk, dn.created, dn.id)
		return
	}
	if live := ch.GetChild(liveName); live != nil {
		live.NotifyContent(-1, 0) // attributes only
	}
	for _, w := range t.cache.watching(disk) {
		t.dropPages(w, 0, 0)
	}
	for _, dir := range []string{snapDirName, scratchDirName} {
		sd := ch.GetChild(dir)
		if sd == nil {
			continue
		}
		sd.NotifyContent(-1, 0)
		for name, c := range sd.Children() {
			snap, _ := strings.CutSuffix(name, snapSuffix)
			e, ok := t.snapshot(disk, snap)
			if fn, isFile := c.Operations().(*fileNode); !ok || !isFile || !fn.created.Equal(e.Created) {
				forget(sd, name)
			}
		}
	}
}

// forget drops parent/name from the kernel's name cache and from the
// in-memory tree; the next lookup asks the Source again.
func forget(parent *fs.Inode, name string) {
	parent.NotifyEntry(name)
	parent.RmChild(name)
}

// Live disk files in the page cache (Options.LiveCache).
//
// Read-only handles of disk.raw keep the kernel's page cache, across opens
// (FOPEN_KEEP_CACHE), and the kernel never drops those pages on its own
// (the mount asks for explicit data cache control: no invalidation when
// mtime moves). Writable handles use direct I/O: their writes reach the
// the device at once and hold no page (a private mmap of one still reads through
// the page cache). The tree keeps the cached pages coherent:
// Changed drops every range that changes, whoever changed it (NBD, a
// rollback, a FUSE write through a writable handle: recent kernels drop
// the range after a direct write themselves, older ones do not).
//
// Why no stale page survives a change X:
//
//  1. Changed runs after X is in the device and before X is acknowledged
//     (cow.Options.OnWrite's contract).
//  2. The kernel fills a page of disk.raw only by a READ request, and the
//     page sits in the page cache, locked, from before that request is
//     sent until the reply is copied in; readahead, single-page reads and
//     mmap faults all work this way. So a READ that the device served
//     before X landed belongs to a page that was in the cache before
//     Changed began.
//  3. NOTIFY_INVAL_INODE (the kernel's invalidate_inode_pages2_range)
//     takes the lock of every cached page in the range, so it waits for a
//     fill in flight, then removes the page, unmapping it from every mmap
//     first (the next access faults in the new data).
//
// Hence when Changed returns, every page that could hold data from before
// X is gone, and every page filled later was read after X landed. A read
// that begins after X is acknowledged sees X; one that overlaps X sees the
// old or the new data, as on a disk.
//
// Changed never waits for itself: the only pages a FUSE request holds
// locked are those of reads in flight, which other server goroutines
// answer (go-fuse starts a new reader whenever none is left), and direct
// I/O writes hold none. A buffered FUSE write would keep a page it fills
// in part, and that was not cached, locked until the tree answered it, so
// a drop from inside it would wait for itself: one reason writable
// handles do not use the cache (the other: write-through costs more than
// direct I/O, and direct I/O needs no second copy of a loop device's data).
//
// A file is watched from its first open. One nobody has open keeps its
// pages until the next change: the first Changed after the last close
// drops all of them and stops watching the file, so a disk not open
// through FUSE costs its writers a map lookup.

// Changed reports that [off, off+length) of disk's live content changed,
// so the kernel drops those pages. Call it for every change while the tree
// is mounted (the page cache outlives opens), writes through the tree
// included, after the change reached the device and before acknowledging it,
// outside any lock a FUSE request may wait for (it waits for the page
// locks of FUSE reads in flight). While the kernel holds no pages of the
// disk (without Options.LiveCache, for one), Changed costs a map lookup.
func (t *Tree) Changed(disk string, off, length int64) {
	if length <= 0 || t.unmounted.Load() {
		return
	}
	for _, w := range t.cache.watching(disk) {
		t.dropPages(w, off, length)
	}
}

// dropPages drops [off, off+length) of a watched file's pages (length 0:
// all of them). A file with no handle open loses all its pages and is no
// longer watched.
func (t *Tree) dropPages(w watched, off, length int64) {
	if !w.open {
		off, length = 0, 0
	}
	errno := w.n.NotifyContent(off, length)
	if errno != 0 && errno != syscall.ENOENT { // ENOENT: the kernel forgot the inode and its pages
		t.log.Debug("dropping FUSE page cache failed", "disk", w.n.disk, "err", errno)
	}
	if !w.open || errno == syscall.ENOENT {
		t.cache.unwatch(w)
	}
}

// Hook returns Changed bound to disk, in the shape of a volume's write
// hook (cow.Options.OnWrite).
func (t *Tree) Hook(disk string) func(ctx context.Context, off, length int64) {
	return func(_ context.Context, off, length int64) { t.Changed(disk, off, length) }
}

// pageCache knows which live disk files the kernel may hold pages of.
type pageCache struct {
	mu    sync.RWMutex
	files map[*fileNode]*cacheState // guarded by mu
	opens uint64                    // guarded by mu: watched opens ever, of any file
}

// cacheState is what pageCache knows of one file.
type cacheState struct {
	open     int    // watched handles open now
	lastOpen uint64 // pageCache.opens at the latest open
}

// watched is one file as Changed saw it.
type watched struct {
	n        *fileNode
	open     bool   // a handle was open
	lastOpen uint64 // cacheState.lastOpen then
}

func (c *pageCache) init() { c.files = make(map[*fileNode]*cacheState) }

// opened is called before a watched handle of n can read anything.
func (c *pageCache) opened(n *fileNode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.files[n]
	if s == nil {
		s = &cacheState{}
		c.files[n] = s
	}
	c.opens++
	s.open++
	s.lastOpen = c.opens
}

// closed is called when a watched handle of n is released. The pages stay
// (and n stays watched) for the next open.
func (c *pageCache) closed(n *fileNode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.files[n]; s != nil {
		s.open--
	}
}

// watching returns the live files of disk the kernel may hold pages of.
func (c *pageCache) watching(disk string) []watched {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []watched
	for n, s := range c.files {
		if n.disk == disk {
			out = append(out, watched{n: n, open: s.open > 0, lastOpen: s.lastOpen})
		}
	}
	return out
}

// unwatch stops watching w.n after all its pages were dropped, unless a
// handle opened since w was taken (it may have read pages since).
func (c *pageCache) unwatch(w watched) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.files[w.n]; s != nil && s.open == 0 && s.lastOpen == w.lastOpen {
		delete(c.files, w.n)
	}
}

// unwatchIdle stops watching the files of a deleted disk (the one created
// at created with id) that no handle has open.
func (c *pageCache) unwatchIdle(disk string, created time.Time, id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n, s := range c.files {
		if n.disk == disk && n.created.Equal(created) && n.diskID == id && s.open == 0 {
			delete(c.files, n)
		}
	}
}
