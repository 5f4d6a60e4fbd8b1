package fusefs

import (
	"context"
	"strings"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
)

// Invalidate makes the kernel drop what it cached about disk's part of the
// tree: its snapshot list, the attributes of disk.raw (a resize) and, with
// LiveCache, disk.raw's pages (a rollback). disk == "" does so for the disk
// list and every disk. Call it after creating, deleting, resizing or rolling
// back a disk and after creating or deleting a snapshot. Never call it from
// inside a Source method or while holding a lock a Source method takes: the
// kernel waits for lookups in flight before it drops a name.
func (t *Tree) Invalidate(disk string) {
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
		return
	}
	if live := ch.GetChild(liveName); live != nil {
		live.NotifyContent(-1, 0) // attributes only
	}
	for _, n := range t.cache.nodes(disk) {
		n.NotifyContent(0, 0) // every page
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

// Changed reports that [off, off+length) of disk's live content changed
// other than through this tree (an NBD write, a rollback), so the kernel
// drops those pages. Call it after the change reached the File and before
// acknowledging it, outside any lock a FUSE write may wait for (the kernel
// waits for page locks that in-flight FUSE reads and writes hold). Writes
// made through the tree pass a ctx that marks them; Changed ignores those
// (the kernel keeps its own pages coherent), so a File may call Changed for
// every write with the ctx it was given. Without Options.LiveCache, and
// while no live file is open with the page cache, Changed costs a map
// lookup.
func (t *Tree) Changed(ctx context.Context, disk string, off, length int64) {
	if length <= 0 || (ctx != nil && ctx.Value(originKey{}) == t) {
		return
	}
	for _, n := range t.cache.nodes(disk) {
		if errno := n.NotifyContent(off, length); errno != 0 && errno != syscall.ENOENT {
			t.log.Debug("dropping FUSE page cache failed", "disk", disk, "err", errno)
		}
	}
}

// Hook returns Changed bound to disk, for a volume's write hook.
func (t *Tree) Hook(disk string) func(ctx context.Context, off, length int64) {
	return func(ctx context.Context, off, length int64) { t.Changed(ctx, disk, off, length) }
}

// originKey marks the context of writes made through the tree.
type originKey struct{}

// fromTree marks ctx as a write through t, for Changed.
func (t *Tree) fromTree(ctx context.Context) context.Context {
	if !t.opts.LiveCache {
		return ctx
	}
	return context.WithValue(ctx, originKey{}, t)
}

// pageCache knows which live disk files the kernel may hold pages of: those
// with a cached handle open. When the last one closes, their pages are
// dropped, so Changed has nothing to do until the next cached open.
type pageCache struct {
	mu   sync.RWMutex
	open map[*fileNode]int // guarded by mu: cached handles open per file
}

func (c *pageCache) init() { c.open = make(map[*fileNode]int) }

// opened is called before a cached handle of n can read anything.
func (c *pageCache) opened(n *fileNode) {
	c.mu.Lock()
	c.open[n]++
	c.mu.Unlock()
}

// closed is called when a cached handle of n is released.
func (c *pageCache) closed(n *fileNode) {
	c.mu.Lock()
	c.open[n]--
	last := c.open[n] == 0
	c.mu.Unlock()
	if !last {
		return
	}
	// While n stays in the map, Changed keeps dropping pages; after the
	// last close the pages go at once and Changed may stop looking at n.
	n.NotifyContent(0, 0)
	c.mu.Lock()
	if c.open[n] == 0 {
		delete(c.open, n)
	}
	c.mu.Unlock()
}

// nodes returns the live files of disk the kernel may hold pages of.
func (c *pageCache) nodes(disk string) []*fileNode {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*fileNode
	for n := range c.open {
		if n.disk == disk {
			out = append(out, n)
		}
	}
	return out
}
