package cow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/RoaringBitmap/roaring/v2/roaring64"
)

// Retiring redirected writes (redirect.go): once nothing copies, the
// newest version of every redirected page is merged into the live image,
// the image is synced, and the side files are deleted.

// abandonRedirects fails every copying snapshot (their redirected writes
// could not be kept: cause) and retires the redirects, so writes go to
// the live image again.
func (v *Volume) abandonRedirects(cause error) error {
	for _, s := range v.copyingList() {
		v.failSnapshot(s, fmt.Errorf("a redirected write failed: %w", cause))
	}
	return v.retire(context.Background(), true)
}

// kickRetire starts retiring the redirected writes in the background if
// there are any and nothing copies.
func (v *Volume) kickRetire() {
	if v.rd.countOrZero() == 0 || len(v.copyingList()) > 0 {
		return
	}
	if !v.rd.retiring.CompareAndSwap(false, true) {
		return
	}
	v.rd.retirer.Add(1)
	go func() {
		defer v.rd.retirer.Done()
		defer v.rd.retiring.Store(false)
		for attempt := 0; v.stopCtx.Err() == nil; attempt++ {
			err := v.retire(v.stopCtx, false)
			if err == nil || errors.Is(err, errStillCopying) {
				return
			}
			if attempt%50 == 0 {
				v.log.Warn("could not merge redirected writes into the live image; retrying", "live", v.path, "err", err)
			}
			select {
			case <-v.stopCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

var errStillCopying = errors.New("a snapshot is copying")

// retire merges the newest version of every redirected page into the
// live image, syncs it, and deletes the side files. Rounds run while
// writes go on; the last holds them (the gate), so no write lands in a
// merged page between the last round and the files going. With
// force it merges even while snapshots copy (abandonRedirects has failed
// them; Flatten drops them).
func (v *Volume) retire(ctx context.Context, force bool) error {
	copying := func() bool { return !force && len(v.copyingList()) > 0 }
	for round := 0; round < 8; round++ {
		if copying() {
			return errStillCopying
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		todo := v.unmerged()
		if len(todo) <= 256 {
			break
		}
		if err := v.mergePages(todo, force); err != nil {
			return err
		}
	}
	v.gate.Lock()
	defer v.gate.Unlock()
	if copying() {
		return errStillCopying
	}
	// Every page, even of a block a snapshot sealed meanwhile has
	// pending (a seal does not take the gate): with writes held, the
	// newest version of a page is that snapshot's version too.
	if err := v.mergePages(v.unmerged(), true); err != nil {
		return err
	}
	if err := v.liveSync.Wait(); err != nil {
		return fmt.Errorf("fdatasync live image: %w", err)
	}
	// The side files stop proving their writes: the tracker must.
	if err := v.flushTrackers(); err != nil {
		v.trackErr(err)
	}
	v.rd.mu.Lock()
	defer v.rd.mu.Unlock()
	if err := v.side.removeAll(); err != nil {
		return err
	}
	v.rd.reset()
	return nil
}

// unmerged lists the pages whose live version is not in the live image.
func (v *Volume) unmerged() []uint64 {
	v.rd.mu.RLock()
	defer v.rd.mu.RUnlock()
	return roaring64.AndNot(v.rd.any, v.rd.merged).ToArray()
}

// mergePages writes the live version of each page into the live image.
// A page of a block still pending for a copying snapshot is skipped (the
// snapshot reads the image) unless every copying snapshot is being
// dropped (force).
func (v *Volume) mergePages(pages []uint64, force bool) error {
	var buf [pageSize]byte
	for _, pg := range pages {
		off := int64(pg) * pageSize
		b := uint64(off >> v.shift)
		mu := v.stripe(b)
		mu.Lock()
		err := func() error {
			if !force && v.allPending(b, b) {
				return nil // the copying snapshot reads the live image
			}
			v.rd.mu.RLock()
			rv, ok := v.rd.version(pg, liveSeq)
			var err error
			if ok && !rv.merged {
				err = v.side.read(rv.epoch, buf[:], off)
			}
			v.rd.mu.RUnlock()
			if !ok || rv.merged || err != nil {
				return err
			}
			if _, err := v.f.WriteAt(buf[:], off); err != nil {
				return fmt.Errorf("merge redirected write into live image at %d: %w", off, err)
			}
			if v.isClone() {
				v.local.markPage(pg) // the page is the clone's now: its hole read the origin
			}
			v.rd.mu.Lock()
			v.rd.merged.Add(pg) // no rewrite since the read: we hold the stripe lock
			v.rd.mu.Unlock()
			return nil
		}()
		mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// Flatten merges every redirected write into the live image and
// deletes the side files, even while snapshots copy: for a disk being deleted
// whose live image stays (adopted), so the file holds everything written.
// Copy-out workers are stopped; the volume must be closed afterwards.
func (v *Volume) Flatten() error {
	if v.rd == nil || v.readOnly {
		return nil
	}
	v.stopWorkers()
	if v.rd.count.Load() == 0 {
		return nil
	}
	return v.retire(context.Background(), true)
}
