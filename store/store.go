// Package store keeps Cairn's snapshot data in Badger: content-addressed,
// compressed, reference-counted chunks shared by every disk of the host;
// chain entries that say which chunk holds block B of a disk as of snapshot
// sequence S; and small JSON records (disks, snapshots) for the daemon and
// cow.
//
// Lifecycle of the data a snapshot owns:
//
//   - A snapshot of disk D has a sequence number S, unique and increasing
//     per disk, never reused. The entries written for it (PutEntries with
//     seq S) are the blocks changed in the epoch it sealed.
//   - Block B of snapshot S reads from the newest entry of (D, B) with a
//     sequence at or before S: one ordered seek. No entry: the block was
//     never written and reads as zeros. A zero entry reads as zeros and
//     holds no chunk.
//   - Deleting snapshot S merges it into its successor (Merge): entries the
//     successor overrides are dropped and their chunk references released;
//     the rest stay under their old sequence, where the successor's reads
//     find them. No chunk data moves.
//   - A chunk lives while any entry references it; when the last reference
//     goes it is deleted and the value-log GC gives its space back.
//
// Invariants the store keeps (DESIGN.md invariant 3): a chunk's reference
// count equals the data entries naming it, across all disks, whatever runs
// concurrently (each change of a count is a Badger transaction that
// conflicts with any other touching that chunk, and is retried); a chunk
// is stored once per content; every read is checked against the content's
// BLAKE3 hash (block.ErrCorrupt). Verify checks all of it.
//
// Durability: every method commits its Badger transaction before it
// returns, but Badger keeps commits in the page cache; Sync makes every
// earlier commit durable (power-cut safe). Callers group work and Sync once
// (DESIGN.md: SyncWrites costs 8-21x write amplification). A method that
// fails part-way (a large PutEntries, Merge or DropDisk spans several
// transactions) leaves every entry either written or not, references
// exact, and can simply be repeated.
//
// Space (DESIGN.md invariant 5): Badger's memory-mapped files are
// allocated before they are written (third_party/ristretto), so a full
// filesystem is an error, never a SIGBUS; the store keeps a reserve of
// Options.ReserveBytes that only its upkeep draws on (reserve.go), and
// refuses chunk writes with block.ErrNoSpace while less than that is free
// besides (txn.go). Reads, records, merges, deletes, Open and Close keep
// working on a full filesystem.
//
// Failing disks (fault.go): a read the disk cannot serve fails that read
// with EIO (never a SIGBUS); a failed sync breaks the store until it is
// reopened, and the store is then suspect until a clean Verify.
//
// The on-disk key layout is in keys.go.
package store

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/dgraph-io/badger/v4"
)

// Options configure Open.
type Options struct {
	// Dir is the Badger directory (created if missing).
	Dir string
	// InMemory runs Badger without files (tests only).
	InMemory bool
	// GCInterval is how often value-log GC runs in the background; 0 means 5 minutes.
	GCInterval time.Duration
	// Logger receives Badger's and the GC's messages at debug level. May be nil.
	Logger interface{ Debug(msg string, args ...any) }
	// ReserveBytes sizes the store's space guard. The store keeps a
	// reserve of this size, a file of allocated blocks in Dir that only
	// its own upkeep may use (opening, closing, records, merges, deletes,
	// failure records, value-log GC), so that those still work on a full
	// filesystem; and chunk writes stop with block.ErrNoSpace while the
	// filesystem has less than this much free besides. It also bounds
	// Badger's file sizes (logSizes). 0 means 384 MiB.
	ReserveBytes uint64

	// tune adjusts Badger's options after the store's own (tests only).
	tune func(*badger.Options)
	// closeTimeout replaces defaultCloseTimeout (tests only).
	closeTimeout time.Duration
}

// Entry is one block's content to record.
type Entry struct {
	Block uint64
	Data  []byte // exactly the disk's block size; all zeros is recorded as a zero entry
}

// Ref says what one chain entry holds.
type Ref struct {
	Zero bool
	Hash [32]byte // BLAKE3 of the uncompressed block; meaningless when Zero
	Seq  uint64   // the sequence the entry is stored under
}

// Stats describe the whole store.
type Stats struct {
	Chunks       uint64 // distinct chunks stored
	LogicalBytes uint64 // sum over all entries of the block size they stand for (zero entries excluded)
	UniqueBytes  uint64 // sum over chunks of their uncompressed size (after dedup)
	StoredBytes  uint64 // sum over chunks of their stored (compressed) size
	ReclaimBytes uint64 // bytes Badger still holds for deleted chunks (value log not yet collected), best estimate
	DiskBytes    uint64 // size of the Badger directory (LSM + value log)
	ZeroEntries  uint64
	DataEntries  uint64
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	ChunksChecked  uint64
	EntriesChecked uint64
	Faults         []string // one line each: what is wrong and where
}

// Store is an open Badger database. Safe for concurrent use.
type Store struct {
	db           *badger.DB
	dir          string // "" when in memory
	minFree      uint64
	closeTimeout time.Duration // 0: defaultCloseTimeout
	log          interface{ Debug(msg string, args ...any) }

	broken         atomic.Pointer[error] // set by a failed sync (fault.go)
	suspect        atomic.Bool           // chunks may be damaged: rewrite them (fault.go)
	space          spaceGuard
	slop           *reserve // nil in memory
	unregisterRoom func()   // takes the reserve off Badger's allocations; nil in memory
	reclaim        reclaimEstimate
	flush          flushGate // when writes blocked by compactForGC's flush resume

	gcMu        sync.Mutex    // one value-log GC at a time; guards compactedAt and gcClosed
	gcClosed    bool          // set by Close: no GC may start
	compactedAt uint64        // reclaim estimate at the last compaction for GC
	stopGC      chan struct{} // closed by Close
	gcDone      chan struct{} // closed when the background goroutine (GC, refill) returns
	gcRuns      atomic.Uint64 // value-log GC runs (GCRuns)

	closeOnce sync.Once
	closeErr  error
}

func (o Options) reserveBytes() uint64 {
	if o.ReserveBytes == 0 {
		return defaultReserve
	}
	return o.ReserveBytes
}

// Open opens (or creates) the store.
func Open(opts Options) (*Store, error) { return open(opts) }

// Close flushes and closes the database. Stops background GC first.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

// Sync makes every transaction committed before the call durable.
func (s *Store) Sync() error { return s.sync() }

// PutEntries records entries for (disk, seq) in one transaction (or a few,
// for large batches, each atomic for its own entries): hashes each block,
// records an all-zero block as a zero entry, stores the chunk compressed
// (only when compression saves space) unless that hash is already stored,
// and takes one reference per data entry. Writing an entry that already
// exists for (disk, block, seq) replaces it and moves the reference, so
// copy-out can be repeated after a crash. Durable only after Sync.
func (s *Store) PutEntries(ctx context.Context, disk, seq uint64, entries []Entry) error {
	return s.putEntries(ctx, disk, seq, entries)
}

// Lookup returns the newest entry of (disk, block) with sequence <= seq.
// found is false when there is none.
func (s *Store) Lookup(ctx context.Context, disk, block, seq uint64) (ref Ref, found bool, err error) {
	return s.lookup(ctx, disk, block, seq)
}

// ReadBlock fills buf (the block size) with block's content as of seq:
// the chunk of the newest entry at or before seq, verified against its
// hash (block.ErrCorrupt on mismatch), zeros for a zero entry or no entry.
// found reports whether an entry existed.
func (s *Store) ReadBlock(ctx context.Context, disk, block, seq uint64, buf []byte) (found bool, err error) {
	return s.readBlock(ctx, disk, block, seq, buf)
}

// ReadChunk fills buf with the chunk named by hash, verified.
func (s *Store) ReadChunk(ctx context.Context, hash [32]byte, buf []byte) error {
	return s.readChunk(ctx, hash, buf)
}

// Changed adds to into the blocks of disk that have an entry with a
// sequence in (after, upto]: the blocks changed after snapshot `after` up
// to snapshot `upto`. after=0 means from the beginning. Blocks at or past
// into.Len() are left out.
func (s *Store) Changed(ctx context.Context, disk, after, upto uint64, into *bitmap.Bitmap) error {
	return s.changed(ctx, disk, after, upto, into)
}

// Allocated adds to into the blocks of disk whose newest entry at or
// before seq is a data entry (not zero): base:allocation of a snapshot.
// Blocks at or past into.Len() are left out.
func (s *Store) Allocated(ctx context.Context, disk, seq uint64, into *bitmap.Bitmap) error {
	return s.allocated(ctx, disk, seq, into)
}

// Merge deletes snapshot seq of disk by merging it into its successor. Its
// entries are those with a sequence in (prev, seq], prev being the
// previous live snapshot's sequence (0 if none). An entry is dropped and
// its chunk reference released when the successor overrides the block:
// when the block has an entry in (seq, next] (next = the successor's
// sequence; 0 means the successor is the live epoch and only overridden
// applies) or overridden(block) is true (the block is dirty or pending in a
// later epoch). Other entries stay. Returns the bytes freed: the stored
// (compressed) and uncompressed size of the chunks whose last reference
// went. Cost: proportional to the snapshot's own entries, never to the
// chain's length. Durable after Sync.
func (s *Store) Merge(ctx context.Context, disk, prev, seq, next uint64, overridden func(block uint64) bool) (stored, logical uint64, err error) {
	return s.merge(ctx, mergeArgs{disk, prev, seq, next, overridden})
}

// Unique returns the bytes that Merge with the same arguments would free
// (stored size and uncompressed size) without changing anything.
func (s *Store) Unique(ctx context.Context, disk, prev, seq, next uint64, overridden func(block uint64) bool) (stored, logical uint64, err error) {
	return s.unique(ctx, mergeArgs{disk, prev, seq, next, overridden})
}

// ChainUsage is what one disk's entries hold in the store.
type ChainUsage struct {
	Entries uint64 // data and zero entries
	// Stored and Uncompressed: the stored (compressed) and uncompressed
	// size of the distinct chunks the entries reference, each chunk once
	// (chunks shared with other disks counted in full for each disk).
	Stored, Uncompressed uint64
}

// ChainBytes returns what disk's entries hold.
func (s *Store) ChainBytes(ctx context.Context, disk uint64) (ChainUsage, error) {
	return s.chainBytes(ctx, disk)
}

// DropDisk deletes every entry of disk and releases their references.
func (s *Store) DropDisk(ctx context.Context, disk uint64) error {
	return s.dropDisk(ctx, disk)
}

// Verify re-hashes every chunk and recounts every reference against the
// entries. progress (may be nil) is called with done/total chunks.
// When disk is non-zero only that disk's entries and the chunks they use
// are checked (reference counts are still checked over all disks).
func (s *Store) Verify(ctx context.Context, disk uint64, progress func(done, total uint64)) (VerifyReport, error) {
	return s.verify(ctx, disk, progress, nil)
}

// Stats returns store-wide figures.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	return s.stats(ctx)
}

// RunGC runs value-log GC until it finds nothing more to collect (also runs
// in the background every GCInterval).
func (s *Store) RunGC() error { return s.runGC() }

// NextID returns a new unique id from the named sequence (disk ids).
func (s *Store) NextID(name string) (uint64, error) { return s.nextID(name) }

// Records: small JSON documents by key, for the daemon and cow. Keys are
// slash-separated paths such as "disk/<id>" or "snap/<disk>/<seq>".

// PutRecord stores v (JSON) under key; durable after Sync.
func (s *Store) PutRecord(key string, v any) error {
	return s.Update(map[string]any{key: v}, nil)
}

// GetRecord loads key into v; block.ErrNotFound if absent.
func (s *Store) GetRecord(key string, v any) error { return s.getRecord(key, v) }

// DeleteRecord removes key (no error if absent).
func (s *Store) DeleteRecord(key string) error { return s.Update(nil, []string{key}) }

// ListRecords calls fn with every key starting with prefix, in key order,
// and its raw JSON.
func (s *Store) ListRecords(prefix string, fn func(key string, raw []byte) error) error {
	return s.listRecords(prefix, fn)
}

// Update applies several record puts and deletes atomically.
func (s *Store) Update(puts map[string]any, deletes []string) error {
	return s.updateRecords(puts, deletes)
}
