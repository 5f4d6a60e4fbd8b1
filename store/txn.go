package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// maxConflictRetries bounds the retries of one transaction that lost a
// race (badger.ErrConflict). Every conflict means another transaction
// committed, so the store as a whole always progresses; the bound only
// turns a pathological livelock into an error.
const maxConflictRetries = 1000

// update runs fn in a read-write transaction and commits it, retrying from
// scratch when Badger reports a conflict (another transaction changed a key
// fn read). fn must not leave effects outside the transaction that a retry
// would duplicate: it may only fill results it resets at its start.
func (s *Store) update(ctx context.Context, fn func(txn *badger.Txn) error) error {
	if err := s.Broken(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		if ctx != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		txn := s.db.NewTransaction(true)
		err := faultSafe(func() error {
			err := fn(txn)
			if err == nil {
				err = txn.Commit()
			}
			return err
		})
		txn.Discard()
		if errors.Is(err, badger.ErrConflict) && attempt < maxConflictRetries {
			continue
		}
		// Writes are blocked while value-log GC makes Badger flush its
		// memtable (compactForGC); Close blocks them for good.
		if errors.Is(err, badger.ErrBlockedWrites) && !s.db.IsClosed() && attempt < maxConflictRetries {
			s.flush.wait(ctx)
			continue
		}
		return err
	}
}

// wrapErr names the operation and turns a full filesystem into block.ErrNoSpace.
func (s *Store) wrapErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, block.ErrNoSpace), errors.Is(err, block.ErrCorrupt), errors.Is(err, block.ErrNotFound),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("store %s: %w", op, err)
	case errors.Is(err, unix.ENOSPC) || strings.Contains(err.Error(), "no space left on device"):
		// Badger flattens most errors to text (y.Wrap without %w).
		return fmt.Errorf("store %s: %w: %s: %v", op, block.ErrNoSpace, s.dir, err)
	default:
		return fmt.Errorf("store %s: %w", op, err)
	}
}

// Write classes for spaceGuard. Chunk data stops while the filesystem
// has less than minFree free, so snapshots fail long before the store is
// in danger; metadata (records, merges, deletes, failure records) and
// value-log GC, which is how deletes give space back, go on into the
// reserve (reserve.go) down to what Badger's next memtable needs
// (logFloor).
const (
	writeData = iota
	writeMeta
	writeGC
)

// spaceGuard refuses writes the store's filesystem has no room for, with
// block.ErrNoSpace, before they reach Badger. (Badger's memory-mapped
// files are allocated before they are written, so a full filesystem is an
// error there too, never a SIGBUS; but Badger cannot go on without a new
// memtable once its current one is full, so the guard keeps that room.)
// The bytes of commits in flight are counted.
type spaceGuard struct {
	dir      string       // "" in memory: no guard
	minFree  uint64       // chunk writes leave this much free
	floor    uint64       // metadata leaves this much free, counting the reserve
	slop     *reserve     // nil in memory
	inflight atomic.Int64 // bytes reserved by commits not yet finished
}

// reserve checks that n more bytes fit and holds them until release is
// called.
func (g *spaceGuard) reserve(class int, n uint64) (release func(), err error) {
	if g.dir == "" {
		return func() {}, nil
	}
	held := g.inflight.Add(int64(n))
	release = func() { g.inflight.Add(-int64(n)) }
	free, err := freeBytes(g.dir)
	if err != nil {
		release()
		return nil, err
	}
	if class == writeData {
		if free < g.minFree+uint64(held) {
			release()
			return nil, fmt.Errorf("store full (%w): %s has %d MiB free and snapshots stop below %d MiB free (the store reserve): free space on that filesystem or delete snapshots",
				block.ErrNoSpace, g.dir, free>>20, g.minFree>>20)
		}
		return release, nil
	}
	slop := uint64(0)
	if g.slop != nil {
		h, _ := g.slop.state()
		slop = uint64(h)
	}
	if free+slop < g.floor+uint64(held) {
		release()
		return nil, fmt.Errorf("store full (%w): %s has %d MiB free and the store's reserve is used up (%d MiB left; it needs %d MiB to go on): free space on that filesystem (a disk's live image, files of other programs) or grow it",
			block.ErrNoSpace, g.dir, free>>20, slop>>20, g.floor>>20)
	}
	g.slop.ensureCushion(free)
	return release, nil
}

// freeBytes is the space unprivileged writers may still use on dir's
// filesystem (statfs f_bavail).
func freeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// updateGuarded is update with n bytes reserved against the filesystem's
// free space for the duration.
func (s *Store) updateGuarded(ctx context.Context, class int, n uint64, fn func(txn *badger.Txn) error) error {
	release, err := s.space.reserve(class, n)
	if err != nil {
		return err
	}
	defer release()
	return s.update(ctx, fn)
}

// flushGate tells commits refused with badger.ErrBlockedWrites when to try
// again. Badger blocks writes only inside DropPrefix (compactForGC's
// memtable flush, the one caller) and Close, so the store knows when
// they are unblocked: when its DropPrefix returns.
type flushGate struct {
	mu   sync.Mutex
	done chan struct{} // closed when the running flush ends; nil when none runs
}

// begin marks a flush that blocks writes; call end when it has returned.
func (g *flushGate) begin() (end func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	done := make(chan struct{})
	g.done = done
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		close(done)
		if g.done == done {
			g.done = nil
		}
	}
}

// wait returns when the running flush has ended, at once when none runs
// (it ended after the commit was refused), or when ctx (may be nil) ends.
func (g *flushGate) wait(ctx context.Context) {
	g.mu.Lock()
	done := g.done
	g.mu.Unlock()
	if done == nil {
		return
	}
	var cancelled <-chan struct{}
	if ctx != nil {
		cancelled = ctx.Done()
	}
	select {
	case <-done:
	case <-cancelled:
	}
}
