package cow

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/RoaringBitmap/roaring/v2/roaring64"
)

// The redirect index (redirect.go uses it): which epochs hold a version
// of each redirected page. Pages are 4 KiB; a side file holds whole pages.
// It is kept as compressed bitmaps, not as bitmap.Bitmaps: it is
// page-granular and sparse, and a flat bitmap per epoch would cost
// 32 MiB per TiB of disk while a snapshot copies.

// pageSize is the unit of redirected writes.
const pageSize = 4096

// rver is one version of a redirected page: the page at its own offset in
// the side file of epoch. merged: the live image holds it (a merge round
// wrote it; only ever set for the newest version).
type rver struct {
	epoch  uint64
	merged bool
}

// redirects indexes the redirected pages of a volume: per epoch, the
// pages its side file holds, as compressed bitmaps (a fully rewritten
// 1 TiB disk takes tens of MiB per epoch, not a map entry per page).
type redirects struct {
	// mu guards everything below but count. Readers of side files hold it
	// shared while they read a page, so the files cannot go under them
	// (retire takes it exclusively).
	mu     sync.RWMutex
	layers []rlayer          // ascending epoch
	any    *roaring64.Bitmap // pages with a version in some layer
	merged *roaring64.Bitmap // pages whose newest version the live image holds
	blocks *roaring64.Bitmap // blocks with a redirected page
	count  atomic.Int64      // any's cardinality: 0 lets the read path skip the index

	retiring atomic.Bool
	retirer  sync.WaitGroup
}

// rlayer is the pages redirected in one epoch.
type rlayer struct {
	epoch uint64
	pages *roaring64.Bitmap
}

func newRedirects() *redirects {
	r := &redirects{}
	r.reset()
	return r
}

// reset forgets every version. Caller holds mu or owns r.
func (r *redirects) reset() {
	r.layers = nil
	r.any, r.merged, r.blocks = roaring64.New(), roaring64.New(), roaring64.New()
	r.count.Store(0)
}

// layer returns epoch's layer, adding it if need be. Caller holds mu.
func (r *redirects) layer(epoch uint64) *roaring64.Bitmap {
	i, found := slices.BinarySearchFunc(r.layers, epoch, func(l rlayer, e uint64) int {
		switch {
		case l.epoch < e:
			return -1
		case l.epoch > e:
			return 1
		}
		return 0
	})
	if !found {
		r.layers = slices.Insert(r.layers, i, rlayer{epoch: epoch, pages: roaring64.New()})
	}
	return r.layers[i].pages
}

// add indexes pages first..first+n-1 of block b, written in epoch (a
// rewrite in an epoch already holding the page replaces that version in
// place). Caller holds b's stripe lock, as a merge round does, so no
// page is marked merged that a rewrite changed meanwhile.
func (r *redirects) add(b uint64, shift uint, first, n uint32, epoch uint64) {
	base := uint64(b) << shift / pageSize
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.layer(epoch)
	l.AddRange(base+uint64(first), base+uint64(first+n))
	for pg := base + uint64(first); pg < base+uint64(first+n); pg++ {
		if r.any.CheckedAdd(pg) {
			r.count.Add(1) // counted as added: no cardinality walk per write
		}
	}
	r.merged.RemoveRange(base+uint64(first), base+uint64(first+n))
	r.blocks.Add(b)
}

// hasBlock reports whether block b has a redirected page.
func (r *redirects) hasBlock(b uint64) bool {
	if r.count.Load() == 0 {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.blocks.Contains(b)
}

// version returns page pg's newest version of an epoch before seq
// (seq = MaxUint64: the live version). Caller holds mu (either side).
func (r *redirects) version(pg, seq uint64) (rver, bool) {
	if !r.any.Contains(pg) {
		return rver{}, false
	}
	newest := true
	for i := len(r.layers) - 1; i >= 0; i-- {
		l := r.layers[i]
		if !l.pages.Contains(pg) {
			continue
		}
		if l.epoch < seq {
			return rver{epoch: l.epoch, merged: newest && r.merged.Contains(pg)}, true
		}
		newest = false
	}
	return rver{}, false
}

const liveSeq = ^uint64(0)

func (r *redirects) countOrZero() int64 {
	if r == nil {
		return 0
	}
	return r.count.Load()
}
