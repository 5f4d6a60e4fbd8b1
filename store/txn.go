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
	for attempt := 0; ; attempt++ {
		if ctx != nil {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		txn := s.db.NewTransaction(true)
		err := fn(txn)
		if err == nil {
			err = txn.Commit()
		}
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

// Write classes for spaceGuard: chunk data must leave the full headroom;
// metadata (records, merges, deletes) may use half of it, so that a full
// store can still mark a snapshot failed and delete snapshots; value-log
// GC may use three quarters, so that space freed by deletes can be given
// back even when chunk writes have filled the store up to its reserve.
const (
	writeData = iota
	writeMeta
	writeGC
)

// spaceGuard refuses writes that would leave less than minFree bytes on the
// store's filesystem. Badger writes its value log, write-ahead log and
// tables through memory-mapped sparse files: running out of space there is
// a SIGBUS that kills the process, never an error. Checking statfs before
// each commit, with the bytes of commits still in flight counted, turns
// that into block.ErrNoSpace; minFree covers what Badger writes on its own
// (memtable flushes, compactions, value-log GC).
type spaceGuard struct {
	dir      string // "" in memory: no guard
	minFree  uint64
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
	var st unix.Statfs_t
	if err := unix.Statfs(g.dir, &st); err != nil {
		release()
		return nil, fmt.Errorf("statfs %s: %w", g.dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	keep := g.minFree
	switch class {
	case writeMeta:
		keep /= 2
	case writeGC:
		keep /= 4
	}
	if free < keep+uint64(held) {
		release()
		return nil, fmt.Errorf("store full (%w): %s has %d MiB free and the store keeps %d MiB free for its own upkeep: free space on that filesystem or delete snapshots",
			block.ErrNoSpace, g.dir, free>>20, keep>>20)
	}
	return release, nil
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
