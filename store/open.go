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
	"github.com/dgraph-io/ristretto/v2/z"
)

const (
	defaultGCInterval = 5 * time.Minute
	defaultReserve    = 384 << 20
	// refillInterval is how often a reserve that gave space away tries to
	// take it back.
	refillInterval = time.Second
	// defaultCloseTimeout bounds Badger's Close (closeDB).
	defaultCloseTimeout = 10 * time.Second
)

// logSizes are Badger's memtable and value-log file sizes for a reserve
// of the given size. Badger allocates twice each for a new memtable's
// write-ahead log and a new value-log file, so a start on a full
// filesystem takes 2 memtables + 2 value logs + a memtable's flush from
// the reserve, and deletes must still find logFloor (3 memtables) there
// after it: 5 value-log files at memtable = value log / 2. The default
// reserve (384 MiB) gets the sizes DESIGN.md measured (32 MiB, 64 MiB); a
// smaller one gets smaller files, down to a 16 MiB value log (80 MiB of
// reserve): smaller files would be too many (each is mapped, and a TiB of
// chunks in 16 MiB files is 65536 of them, vm.max_map_count's default).
func logSizes(reserve uint64) (memtable, vlog int64) {
	vlog = 64 << 20
	for vlog > 16<<20 && uint64(5*vlog) > reserve {
		vlog /= 2
	}
	return vlog / 2, vlog
}

// logFloor is what Badger's next memtable takes (its write-ahead log is
// allocated at twice the memtable's size) with the flush of the full one
// (a table of at most its size): the room metadata writes leave, counting
// the reserve.
func logFloor(bo badger.Options) uint64 {
	return uint64(3 * bo.MemTableSize)
}

// badgerOptions are the store's Badger settings; DESIGN.md "Facts measured
// on these machines" says why.
func badgerOptions(opts Options) badger.Options {
	memtable, vlog := logSizes(opts.reserveBytes())
	bo := badger.DefaultOptions(opts.Dir).
		WithValueDir(opts.Dir).
		WithInMemory(opts.InMemory).
		WithLogger(badgerLogger{opts.Logger}).
		// 64 KiB chunks go to the value log; entries, references and
		// records stay in the LSM tree.
		WithValueThreshold(1 << 10).
		// RSS stays modest on a host whose memory belongs to its VMs;
		// the reserve must hold a new one (logSizes).
		WithMemTableSize(memtable).
		WithNumMemtables(3).
		WithBlockCacheSize(64 << 20).
		WithNumCompactors(2).
		// Value-log GC rewrites one file at a time and never the file
		// being written: smaller files give space back sooner, and a
		// nearly full filesystem has room to rewrite one. 64 MiB makes a
		// TiB of chunks 16384 files (mmapped: well within the default
		// vm.max_map_count of 65530 and the unit's LimitNOFILE). A
		// small reserve makes them smaller (logSizes).
		WithValueLogFileSize(vlog).
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
		if err := removeEmptyValueLogs(opts.Dir, badgerLogger{opts.Logger}); err != nil {
			return nil, err
		}
	}
	bo := badgerOptions(opts)
	s := &Store{
		minFree:      opts.reserveBytes(),
		closeTimeout: opts.closeTimeout,
		log:          opts.Logger,
		stopGC:       make(chan struct{}),
		gcDone:       make(chan struct{}),
	}
	if s.log == nil {
		s.log = nopLogger{}
	}
	if !opts.InMemory {
		s.dir = opts.Dir
		// The reserve first: opening Badger on a full filesystem needs it.
		var err error
		if s.slop, err = openReserve(opts.Dir, int64(s.minFree)); err != nil {
			return nil, err
		}
		s.unregisterRoom = z.RegisterRoom(opts.Dir, s.slop.give)
		if free, err := freeBytes(opts.Dir); err == nil {
			s.slop.ensureCushion(free)
		}
	}
	db, err := badger.Open(bo)
	if err != nil {
		s.releaseReserve()
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("store: %s is locked by another process (is another cairnd running on this data directory?): %v", opts.Dir, err)
		}
		return nil, s.wrapErr("open "+opts.Dir, err)
	}
	s.db = db
	if err := checkFormat(db, opts.Dir); err != nil {
		db.Close()
		s.releaseReserve()
		return nil, err
	}
	if s.dir != "" {
		s.loadSuspect()
	}
	s.space = spaceGuard{dir: s.dir, minFree: s.minFree, floor: logFloor(bo), slop: s.slop}
	if err := s.reclaim.load(db); err != nil {
		db.Close()
		s.releaseReserve()
		return nil, fmt.Errorf("store: open %s: %w", opts.Dir, err)
	}
	interval := opts.GCInterval
	if interval <= 0 {
		interval = defaultGCInterval
	}
	if opts.InMemory {
		close(s.gcDone)
	} else {
		go s.backgroundLoop(interval)
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
	if free, ferr := freeBytes(s.dir); ferr == nil && s.slop != nil {
		s.slop.ensureCushion(free) // Close writes the manifest
	}
	// Everything committed is durable before Badger's Close, which can
	// wait for its memtable's flush forever when even the reserve is
	// used up (it retries a flush that has no room).
	if serr := s.db.Sync(); serr != nil && err == nil {
		err = serr
	}
	if cerr := s.closeDB(); cerr != nil && err == nil {
		err = cerr
	}
	if s.slop != nil {
		// Close deleted the memtable's log and cut the value log to its
		// end: take that back, or a guest may, and the next start on a
		// full filesystem would have less.
		s.slop.refill()
	}
	s.releaseReserve()
	if err != nil {
		return s.wrapErr("close", err)
	}
	return nil
}

// closeDB closes Badger, giving up after closeTimeout: a flush that
// cannot find room retries forever, and a stop must not hang for it. The
// write-ahead log was synced, so the memtable replays at the next start.
func (s *Store) closeDB() error {
	done := make(chan error, 1)
	go func() { done <- s.db.Close() }()
	timeout := s.closeTimeout
	if timeout == 0 {
		timeout = defaultCloseTimeout
	}
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("store close: Badger could not flush its memtable in %s (%s is full and the store's reserve is used up); everything committed was synced and is replayed at the next start: free space on that filesystem", timeout, s.dir)
	}
}

// releaseReserve unregisters the reserve and closes its file (which stays,
// for the next open).
func (s *Store) releaseReserve() {
	if s.unregisterRoom != nil {
		s.unregisterRoom()
	}
	if s.slop != nil {
		s.slop.close()
	}
}

func (s *Store) sync() error {
	if err := s.Broken(); err != nil {
		return err
	}
	if err := s.reclaim.save(s); err != nil {
		return err
	}
	if err := s.db.Sync(); err != nil {
		s.breakOn(err)
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
