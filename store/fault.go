package store

import (
	"fmt"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

// Badger reads values and tables through memory-mapped files. When the
// disk cannot read a page, touching it is a SIGBUS, which kills a Go
// program unless the goroutine asked for a panic instead
// (debug.SetPanicOnFault). Every read of the store runs its Badger calls
// under faultSafe on the caller's goroutine (values are never prefetched
// on Badger's own, see scanKeys), so a failing disk fails the request
// that read it with EIO: a guest's read of a snapshot block, a copy-out's
// lookup, verify (which names the chunk). Badger's own background work
// (compactions) reads tables on goroutines of its own and is not covered.
// Writes need no such guard: every mapped page is allocated before it is
// written (third_party/ristretto), and a write that faulted would be lost
// rather than failed.

// faultSafe runs fn and turns a memory fault in it into an error wrapping
// syscall.EIO.
func faultSafe(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		f, ok := r.(interface{ Addr() uintptr })
		if !ok {
			panic(r)
		}
		err = fmt.Errorf("the store's disk failed to read a mapped page (fault at %#x): %w", f.Addr(), syscall.EIO)
	}()
	return fn()
}

// view is db.View under faultSafe.
func (s *Store) view(fn func(txn *badger.Txn) error) error {
	return faultSafe(func() error { return s.db.View(fn) })
}

// A sync that failed leaves the store broken for good (until a restart):
// Badger's logs are written through mappings, and when the kernel fails to
// write a dirty page back it marks the page clean, so a later sync that
// succeeds proves nothing about what came before (PostgreSQL's "fsyncgate").
// Whatever was committed since the last good sync may be missing from the
// disk; anything committed after it would land beyond a hole that the
// replay at the next start stops at. So a broken store refuses every write
// (copying snapshots fail, new ones are refused, with this reason) and
// keeps serving reads; a restart replays what reached the disk.

// breakOn marks the store broken by err (a failed sync), once.
func (s *Store) breakOn(err error) {
	broken := block.Errorf(block.ErrFailed, "the snapshot store could not write to its disk at %s (%v): it takes no more changes until cairnd restarts, once the disk is healthy (the restart replays what reached the disk; guest I/O and reads of ready snapshots go on meanwhile)",
		time.Now().UTC().Format(time.RFC3339), err)
	if s.broken.CompareAndSwap(nil, &broken) {
		s.log.Debug("store: broken", "err", err)
	}
}

// Broken returns why the store takes no more changes, or nil.
func (s *Store) Broken() error {
	if p := s.broken.Load(); p != nil {
		return *p
	}
	return nil
}
