package store

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// gcDiscardRatio: value-log GC rewrites a file when at least this share of
// it is garbage.
const gcDiscardRatio = 0.5

// backgroundLoop runs value-log GC every interval and refills the
// reserve when it gave space away, until Close. Owned by the Store; Close
// stops it through stopGC and waits on gcDone.
func (s *Store) backgroundLoop(interval time.Duration) {
	defer close(s.gcDone)
	gc := time.NewTicker(interval)
	defer gc.Stop()
	refill := time.NewTicker(refillInterval)
	defer refill.Stop()
	for {
		select {
		case <-s.stopGC:
			return
		case <-gc.C:
			if err := s.runGC(); err != nil {
				s.log.Debug("store: value-log GC", "err", err)
			}
		case <-refill.C:
			if held, target := s.slop.state(); held < target {
				s.slop.refill()
			}
		}
	}
}

// runGC rewrites value-log files that are mostly garbage. Badger only
// learns that a value is garbage when a compaction drops the last key
// pointing to it; on a quiet store the deletions can sit in the memtable
// and upper levels indefinitely. So when a pass finds nothing while
// deleted chunks are believed to hold at least half a value-log file, it
// flushes the memtable and compacts the tree (which records the garbage)
// and tries again. The flush blocks writes for its duration (update
// retries them).
func (s *Store) runGC() error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if s.gcClosed {
		return errors.New("store: value-log GC: the store is closed")
	}
	s.gcRuns.Add(1)
	before := diskUsage(s.dir, ".vlog")
	rewrites, err := s.gcPass()
	// Compact again only once another half file of garbage may exist:
	// garbage spread thinly over many files stays below the ratio however
	// often the tree is compacted.
	halfFile := uint64(s.db.Opts().ValueLogFileSize) / 2
	if estimate := s.reclaim.bytes.Load(); err == nil && rewrites == 0 && estimate >= s.compactedAt+halfFile {
		if err = s.compactForGC(); err == nil {
			s.compactedAt = estimate
			rewrites, err = s.gcPass()
		}
	}
	after := diskUsage(s.dir, ".vlog")
	if rewrites > 0 && after < before {
		// Rewriting moves live values too: credit only the net shrink.
		s.reclaim.sub(before - after)
		s.compactedAt -= min(s.compactedAt, before-after)
	}
	s.log.Debug("store: value-log GC done", "rewrites", rewrites, "freed_bytes", int64(before)-int64(after), "err", err)
	if s.slop != nil && rewrites > 0 {
		s.slop.refill() // space came back: the reserve first
	}
	return err
}

// gcPass runs Badger's value-log GC until it has nothing to rewrite.
func (s *Store) gcPass() (rewrites int, err error) {
	for {
		select {
		case <-s.stopGC:
			return rewrites, nil
		default:
		}
		// A rewrite copies the live part of one value-log file (at most
		// half of it at this ratio) before deleting the file.
		release, err := s.space.reserve(writeGC, uint64(s.db.Opts().ValueLogFileSize)/2)
		if err != nil {
			return rewrites, s.wrapErr("value-log GC", err)
		}
		err = faultSafe(func() error { return s.db.RunValueLogGC(gcDiscardRatio) })
		release()
		switch {
		case err == nil:
			rewrites++
		case errors.Is(err, badger.ErrNoRewrite), errors.Is(err, badger.ErrRejected), errors.Is(err, badger.ErrGCInMemoryMode):
			return rewrites, nil
		default:
			return rewrites, s.wrapErr("value-log GC", err)
		}
	}
}

// compactForGC flushes the memtable (Badger flushes on DropPrefix of a
// prefix that holds data, hence the marker key) and flattens the tree, so
// that compaction records which value-log entries are garbage.
func (s *Store) compactForGC() error {
	// The tree holds keys and value pointers only: a flush and compaction
	// write far less than a memtable's size.
	release, err := s.space.reserve(writeGC, uint64(s.db.Opts().MemTableSize)/2)
	if err != nil {
		return s.wrapErr("compact for GC", err)
	}
	defer release()
	marker := bookkeepKey(keyFlushMarker)
	if err := s.update(context.Background(), func(txn *badger.Txn) error { return txn.Set(marker, nil) }); err != nil {
		return s.wrapErr("compact for GC", err)
	}
	end := s.flush.begin()
	err = s.db.DropPrefix(marker)
	end()
	if err != nil {
		return s.wrapErr("compact for GC: flush", err)
	}
	if err := s.db.Flatten(2); err != nil {
		return s.wrapErr("compact for GC: flatten", err)
	}
	return nil
}

// reclaimEstimate tracks the stored bytes of deleted chunks that the value
// log still holds: it grows when a chunk's last reference goes and shrinks
// by what value-log GC gives back. Kept in z<reclaim> at Sync and Close, so
// it survives restarts (an estimate: a crash loses the unsaved part).
type reclaimEstimate struct {
	bytes atomic.Uint64
	mu    sync.Mutex // guards saved
	saved uint64     // value last written to z<reclaim>
}

func (r *reclaimEstimate) add(n uint64) { r.bytes.Add(n) }

func (r *reclaimEstimate) sub(n uint64) {
	for {
		cur := r.bytes.Load()
		next := uint64(0)
		if cur > n {
			next = cur - n
		}
		if r.bytes.CompareAndSwap(cur, next) {
			return
		}
	}
}

func (r *reclaimEstimate) load(db *badger.DB) error {
	return db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(bookkeepKey(keyReclaimed))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			n, err := decodeU64(v)
			r.bytes.Store(n)
			r.saved = n
			return err
		})
	})
}

// save writes the estimate when it changed. A full store skips it: the
// figure is advisory and the space is better left to data.
func (r *reclaimEstimate) save(s *Store) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.bytes.Load()
	if n == r.saved || s.Broken() != nil {
		return nil
	}
	release, err := s.space.reserve(writeMeta, recordOverhead)
	if err != nil {
		return nil
	}
	defer release()
	if err := s.update(context.Background(), func(txn *badger.Txn) error {
		return txn.Set(bookkeepKey(keyReclaimed), encodeU64(n))
	}); err != nil {
		return s.wrapErr("save reclaim estimate", err)
	}
	r.saved = n
	return nil
}

// diskUsage is the space the files under dir whose names end in suffix
// ("" for all) occupy on disk: allocated blocks. The reserve is not
// counted (Space reports it).
func diskUsage(dir, suffix string) uint64 {
	if dir == "" {
		return 0
	}
	var total uint64
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(d.Name(), suffix) || d.Name() == reserveFile {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += uint64(st.Blocks) * 512
		}
		return nil
	})
	return total
}

// GCRuns counts the value-log garbage collections run since Open (the
// periodic ones and RunGC's), for metrics.
func (s *Store) GCRuns() uint64 { return s.gcRuns.Load() }
