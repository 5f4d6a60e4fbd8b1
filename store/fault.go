package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/internal/durable"

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

// breakOn marks the store broken by err (a failed sync), once, and makes
// it suspect (below) as far as the disk still lets it.
func (s *Store) breakOn(err error) {
	when := time.Now().UTC().Format(time.RFC3339)
	broken := block.Errorf(block.ErrFailed, "the snapshot store could not write to its disk at %s (%v): it takes no more changes until cairnd restarts, once the disk is healthy (the restart replays what reached the disk; guest I/O and reads of ready snapshots go on meanwhile)",
		when, err)
	if s.broken.CompareAndSwap(nil, &broken) {
		s.log.Debug("store: broken", "err", err)
		s.markSuspect(fmt.Sprintf("a write to the store's disk failed at %s: %v", when, err))
	}
}

// A store that broke may hold chunks whose content never reached the
// disk while their keys did (Badger's keys and values are separate
// files). Reads of them fail their hash check (block.ErrCorrupt), and
// verify names them; but a new snapshot storing the same content would
// only take a reference to the damaged chunk (dedup) and read wrong. So
// the store is suspect until a verify of the whole store finds it sound:
// a file in its directory says so across restarts, and while it is there
// every chunk a snapshot stores is written again even if a chunk of that
// content exists, which repairs it.
const suspectFile = "cairn.suspect"

// markSuspect writes the suspect file (best effort: the disk is failing)
// and turns suspect mode on.
func (s *Store) markSuspect(why string) {
	s.suspect.Store(true)
	if s.dir == "" {
		return
	}
	path := filepath.Join(s.dir, suspectFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err == nil {
		_, err = fmt.Fprintln(f, why)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if err == nil {
		err = durable.SyncDir(s.dir)
	}
	if err != nil {
		s.log.Debug("store: cannot record that it is suspect", "err", err)
	}
}

// Suspect reports why the store may hold damaged chunks (it broke, or a
// start found it had), or "" when it is not suspect.
func (s *Store) Suspect() string {
	if !s.suspect.Load() {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(s.dir, suspectFile))
	why := strings.TrimSpace(string(b))
	if why == "" {
		why = "the store broke"
	}
	return why + ": chunks written then may be damaged; snapshots store every chunk again until a verify of the whole store (cairn verify) finds it sound"
}

// loadSuspect turns suspect mode on at open if the file is there.
func (s *Store) loadSuspect() {
	if _, err := os.Stat(filepath.Join(s.dir, suspectFile)); err == nil {
		s.suspect.Store(true)
	}
}

// clearSuspect ends suspect mode after a clean verify of the whole store.
func (s *Store) clearSuspect() {
	if !s.suspect.Load() || s.Broken() != nil {
		return
	}
	if err := os.Remove(filepath.Join(s.dir, suspectFile)); err == nil || errors.Is(err, os.ErrNotExist) {
		durable.SyncDir(s.dir)
		s.suspect.Store(false)
	}
}

// Broken returns why the store takes no more changes, or nil.
func (s *Store) Broken() error {
	if p := s.broken.Load(); p != nil {
		return *p
	}
	return nil
}
