package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

const (
	defaultGCInterval   = 5 * time.Minute
	defaultMinFreeBytes = 256 << 20
)

// badgerOptions are the store's Badger settings; DESIGN.md "Facts measured
// on these machines" says why.
func badgerOptions(opts Options) badger.Options {
	bo := badger.DefaultOptions(opts.Dir).
		WithValueDir(opts.Dir).
		WithInMemory(opts.InMemory).
		WithLogger(badgerLogger{opts.Logger}).
		// 64 KiB chunks go to the value log; entries, references and
		// records stay in the LSM tree.
		WithValueThreshold(1 << 10).
		// RSS stays modest on a host whose memory belongs to its VMs.
		WithMemTableSize(32 << 20).
		WithNumMemtables(3).
		WithBlockCacheSize(64 << 20).
		WithNumCompactors(2).
		// Value-log GC rewrites one file at a time and never the file
		// being written: smaller files give space back sooner, and a
		// nearly full filesystem has room to rewrite one. 64 MiB makes a
		// TiB of chunks 16384 files (mmapped: well within the default
		// vm.max_map_count of 65530 and the unit's LimitNOFILE).
		WithValueLogFileSize(64 << 20).
		WithNumVersionsToKeep(1).
		WithCompression(options.Snappy).
		WithMetricsEnabled(false).
		// Durability comes from Sync, grouped by the caller.
		WithSyncWrites(false).
		WithDetectConflicts(true)
	if opts.InMemory {
		bo.Dir, bo.ValueDir = "", ""
	}
	if opts.tune != nil {
		opts.tune(&bo)
	}
	return bo
}

func open(opts Options) (*Store, error) {
	if !opts.InMemory {
		if opts.Dir == "" {
			return nil, errors.New("store: no directory given (Options.Dir)")
		}
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create %s: %w", opts.Dir, err)
		}
	}
	if !opts.InMemory {
		if err := removeEmptyValueLogs(opts.Dir, badgerLogger{opts.Logger}); err != nil {
			return nil, err
		}
	}
	db, err := badger.Open(badgerOptions(opts))
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("store: %s is locked by another process (is another cairnd running on this data directory?): %v", opts.Dir, err)
		}
		return nil, fmt.Errorf("store: open %s: %v", opts.Dir, err)
	}
	if err := checkFormat(db, opts.Dir); err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{
		db:      db,
		minFree: opts.MinFreeBytes,
		log:     opts.Logger,
		stopGC:  make(chan struct{}),
		gcDone:  make(chan struct{}),
	}
	if !opts.InMemory {
		s.dir = opts.Dir
	}
	if s.minFree == 0 {
		s.minFree = defaultMinFreeBytes
	}
	if s.log == nil {
		s.log = nopLogger{}
	}
	s.space = spaceGuard{dir: s.dir, minFree: s.minFree}
	if err := s.reclaim.load(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", opts.Dir, err)
	}
	interval := opts.GCInterval
	if interval <= 0 {
		interval = defaultGCInterval
	}
	if opts.InMemory {
		close(s.gcDone)
	} else {
		go s.gcLoop(interval)
	}
	return s, nil
}

func (s *Store) close() error {
	close(s.stopGC)
	<-s.gcDone
	// An explicit RunGC in flight sees stopGC between passes; wait for it.
	s.gcMu.Lock()
	s.gcClosed = true
	s.gcMu.Unlock()
	err := s.reclaim.save(s)
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return s.wrapErr("close", err)
	}
	return nil
}

func (s *Store) sync() error {
	if err := s.reclaim.save(s); err != nil {
		return err
	}
	if err := s.db.Sync(); err != nil {
		return s.wrapErr("sync", err)
	}
	return nil
}

// badgerLogger hands Badger's messages to Options.Logger at debug level:
// Badger is chatty, and anything that matters reaches the caller as an
// error anyway.
type badgerLogger struct {
	l interface{ Debug(msg string, args ...any) }
}

func (b badgerLogger) log(level, format string, args []any) {
	if b.l == nil {
		return
	}
	b.l.Debug("badger: "+strings.TrimSpace(fmt.Sprintf(format, args...)), "badger_level", level)
}

func (b badgerLogger) Errorf(format string, args ...any)   { b.log("error", format, args) }
func (b badgerLogger) Warningf(format string, args ...any) { b.log("warning", format, args) }
func (b badgerLogger) Infof(format string, args ...any)    { b.log("info", format, args) }
func (b badgerLogger) Debugf(format string, args ...any)   { b.log("debug", format, args) }

type nopLogger struct{}

func (nopLogger) Debug(string, ...any) {}

// removeEmptyValueLogs deletes value-log files of zero bytes. A crash
// between Badger creating a value-log file and sizing it leaves one, and
// Badger then refuses to open ("Open existing file: ... Create a new
// file") on every start. Such a file holds no entry, not even its header,
// so nothing can refer to it.
func removeEmptyValueLogs(dir string, log badgerLogger) error {
	matches, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if err != nil {
		return err
	}
	for _, m := range matches {
		fi, err := os.Stat(m)
		if err != nil || fi.Size() != 0 {
			continue
		}
		if err := os.Remove(m); err != nil {
			return fmt.Errorf("store: remove the empty value log %s left by a crash: %w", m, err)
		}
		log.Warningf("removed the empty value log %s left by a crash", m)
	}
	return nil
}
