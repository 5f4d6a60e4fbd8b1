package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/internal/durable"
	"golang.org/x/sys/unix"
)

// Tracker file format (one file per epoch, "<prefix>.<epoch>"):
//
//	offset 0:    magic "CAIRNTRK", u32 version=1, u32 block size,
//	             u64 epoch, u64 block count (little endian)
//	offset 4096: the dirty bitmap, u64 words, little endian, bit i%64 of
//	             word i/64 set when block i was written in the epoch.
//
// Bits are only ever set within an epoch, so a torn or reordered write of
// a word can only lose bits that were never promised durable.
const (
	trackMagic   = "CAIRNTRK"
	trackVersion = 1
	trackDataOff = 4096
)

// tracker is the crash-safe dirty set of one epoch: a write-intent bitmap.
// A block's bit is durable in the tracker file before the first write of
// the epoch to that block is issued to the live image, so after a crash or
// power cut every block that may have changed is found by reading this
// small file: never by reading the disk.
//
// Cost per write: one atomic load when the block is already marked (every
// write after the first in an epoch); otherwise an 8-byte pwrite and a
// share of one fdatasync, batched across concurrent writers.
type tracker struct {
	path  string // "" for a memory-only tracker (no crash safety: tests, read-only)
	f     *os.File
	epoch uint64

	staged  atomic.Pointer[bitmap.Bitmap] // bits set in memory; superset of durable
	durable atomic.Pointer[bitmap.Bitmap] // bits known to be on stable storage

	wmu  sync.Mutex // serialises pwrites of bitmap words so a stale word never overwrites a newer one
	sync *groupSync

	// life is held shared by marks in progress and exclusively to retire
	// the tracker (close its file) once its epoch is sealed.
	life    sync.RWMutex
	retired bool // guarded by life

	// inflight counts the epoch's writes issued to the live image and not
	// yet finished; drained is closed once the epoch is sealed and the
	// count is zero (the seal does not wait for it, only readers of the
	// sealed content do).
	// lazy: bits were set by markLazy and may not be durable yet.
	lazy atomic.Bool

	inflight  atomic.Int64
	sealed    atomic.Bool
	drained   chan struct{}
	drainOnce sync.Once
}

// errRetired: the tracker's epoch ended while a mark was on its way; the
// writer prepares again for the new epoch.
var errRetired = errors.New("change-tracking epoch ended")

func trackPath(prefix string, epoch uint64) string { return fmt.Sprintf("%s.%d", prefix, epoch) }

// createTracker makes an empty tracker file for epoch (replacing any) and
// makes it and its directory entry durable.
func createTracker(prefix string, epoch, nblocks uint64, blockSize int) (*tracker, error) {
	t := &tracker{epoch: epoch, drained: make(chan struct{})}
	t.staged.Store(bitmap.New(nblocks))
	t.durable.Store(bitmap.New(nblocks))
	if prefix == "" {
		return t, nil
	}
	t.path = trackPath(prefix, epoch)
	hdr := make([]byte, trackDataOff)
	copy(hdr, trackMagic)
	binary.LittleEndian.PutUint32(hdr[8:], trackVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(blockSize))
	binary.LittleEndian.PutUint64(hdr[16:], epoch)
	binary.LittleEndian.PutUint64(hdr[24:], nblocks)
	// Allocated, not sparse: marking a block on a full filesystem must
	// not fail (a lost mark costs the next snapshot a read of every
	// allocated block).
	f, err := durable.CreateFile(t.path, trackDataOff+int64(wordsFor(nblocks))*8, hdr)
	if err != nil {
		return nil, fmt.Errorf("create change-tracking file %s: %w", t.path, mapErr(err))
	}
	t.f = f
	t.sync = newGroupSync(func() error { return unix.Fdatasync(int(f.Fd())) })
	return t, nil
}

// openTracker loads an existing tracker file.
func openTracker(path string, blockSize int) (*tracker, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, 32)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read change-tracking file %s: %w", path, err)
	}
	if string(hdr[:8]) == trackMagic && binary.LittleEndian.Uint32(hdr[8:]) != trackVersion {
		f.Close()
		return nil, fmt.Errorf("change-tracking file %s is version %d; this cairnd reads version %d: run the cairnd that wrote it",
			path, binary.LittleEndian.Uint32(hdr[8:]), trackVersion)
	}
	if string(hdr[:8]) != trackMagic || int(binary.LittleEndian.Uint32(hdr[12:])) != blockSize {
		f.Close()
		return nil, fmt.Errorf("change-tracking file %s: bad header (not a Cairn tracker or another block size)", path)
	}
	nblocks := binary.LittleEndian.Uint64(hdr[24:])
	words := make([]uint64, wordsFor(nblocks))
	raw := make([]byte, len(words)*8)
	n, err := f.ReadAt(raw, trackDataOff)
	if err != nil && n != len(raw) {
		// A short file (crash while growing) reads the rest as zero words.
		clear(raw[n:])
	}
	for i := range words {
		words[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	bm := bitmap.FromWords(nblocks, words)
	t := &tracker{path: path, f: f, epoch: binary.LittleEndian.Uint64(hdr[16:]), drained: make(chan struct{})}
	t.staged.Store(bm)
	t.durable.Store(bm.Grow(nblocks))
	t.sync = newGroupSync(func() error { return unix.Fdatasync(int(f.Fd())) })
	return t, nil
}

// enter counts a write of this epoch as in flight; exit ends it.
func (t *tracker) enter() { t.inflight.Add(1) }

func (t *tracker) exit() {
	if t.inflight.Add(-1) == 0 && t.sealed.Load() {
		t.drainOnce.Do(func() { close(t.drained) })
	}
}

// seal ends the epoch for new writes (the caller has already published
// the next tracker and changed the volume's shape, so a writer that
// entered after this cannot pass its shape check and leaves again) and
// returns a channel closed once the epoch's writes in flight have finished.
//
// Why no write is missed: a writer enters (inflight+1) before it checks
// the shape; the seal changes the shape before it sets sealed and reads
// inflight. If the writer saw the old shape, its increment came first, so
// either the seal sees it or the writer sees sealed when it leaves.
func (t *tracker) seal() <-chan struct{} {
	t.sealed.Store(true)
	if t.inflight.Load() == 0 {
		t.drainOnce.Do(func() { close(t.drained) })
	}
	return t.drained
}

// unseal makes a sealed tracker current again (an abandoned seal). The
// caller holds the volume's gate exclusively: no write is in flight.
func (t *tracker) unseal() {
	t.sealed.Store(false)
	t.drained = make(chan struct{})
	t.drainOnce = sync.Once{}
}

func wordsFor(n uint64) uint64 { return (n + 63) / 64 }

// bits is the epoch's dirty set as marked so far.
func (t *tracker) bits() *bitmap.Bitmap { return t.staged.Load() }

// mark makes blocks first..last part of the epoch's dirty set, durably,
// before it returns. The caller holds the volume's gate shared (so the
// bitmaps are not swapped underneath).
func (t *tracker) mark(first, last uint64) error { return t.set(first, last, true) }

// markLazy sets blocks first..last in the epoch's dirty set and writes
// them to the file without waiting for them to be durable. The caller
// relies on something else to prove the write after a crash (the side
// file of a redirected write, see Volume.writeRedirected) until flush has
// run.
func (t *tracker) markLazy(first, last uint64) error { return t.set(first, last, false) }

func (t *tracker) set(first, last uint64, wait bool) error {
	durable := t.durable.Load()
	if durable.AllSet(first, last) {
		return nil
	}
	t.life.RLock()
	defer t.life.RUnlock()
	if t.retired {
		return errRetired
	}
	staged := t.staged.Load()
	staged.SetRange(first, last)
	if t.f == nil {
		durable.SetRange(first, last)
		return nil
	}
	if err := t.writeWords(staged, first/64, last/64); err != nil {
		return err
	}
	if !wait {
		// Only once the words are written: a flush that sees the flag
		// then syncs them.
		t.lazy.Store(true)
		return nil
	}
	if err := t.sync.Wait(); err != nil {
		return fmt.Errorf("sync change-tracking file %s: %w", t.path, err)
	}
	durable.SetRange(first, last)
	return nil
}

// flush makes the bits markLazy set durable.
func (t *tracker) flush() error {
	if !t.lazy.Swap(false) {
		return nil
	}
	t.life.RLock()
	defer t.life.RUnlock()
	if t.retired || t.f == nil {
		return nil // sealed: its bits are in the snapshot's record
	}
	staged := t.staged.Load().Words()
	words := make([]uint64, len(staged))
	for i := range words {
		words[i] = atomic.LoadUint64(&staged[i])
	}
	if err := t.sync.Wait(); err != nil {
		t.lazy.Store(true)
		return fmt.Errorf("sync change-tracking file %s: %w", t.path, err)
	}
	durable := t.durable.Load().Words()
	for i := range min(len(words), len(durable)) {
		if words[i] != 0 {
			atomic.OrUint64(&durable[i], words[i])
		}
	}
	return nil
}

// writeWords writes bitmap words w1..w2 to the file.
func (t *tracker) writeWords(bm *bitmap.Bitmap, w1, w2 uint64) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	var small [8 * 8]byte
	buf := small[:0]
	if need := (w2 - w1 + 1) * 8; need > uint64(len(small)) {
		buf = make([]byte, 0, need)
	}
	words := bm.Words()
	for w := w1; w <= w2; w++ {
		buf = binary.LittleEndian.AppendUint64(buf, atomic.LoadUint64(&words[w]))
	}
	if _, err := t.f.WriteAt(buf, trackDataOff+int64(w1)*8); err != nil {
		return fmt.Errorf("write change-tracking file %s: %w", t.path, err)
	}
	return nil
}

// setAll marks every block in bm durably (used to fold an unfinished
// epoch or a failed snapshot's blocks back into the current epoch).
func (t *tracker) setAll(bm *bitmap.Bitmap) error {
	staged := t.staged.Load()
	sw, bw := staged.Words(), bm.Words()
	n := min(uint64(len(bw)), uint64(len(sw)))
	for w := uint64(0); w < n; w++ {
		if x := atomic.LoadUint64(&bw[w]); x != 0 {
			atomic.OrUint64(&sw[w], x)
		}
	}
	if t.f != nil && n > 0 {
		if err := t.writeWords(staged, 0, n-1); err != nil {
			return err
		}
		if err := t.sync.Wait(); err != nil {
			return fmt.Errorf("sync change-tracking file %s: %w", t.path, err)
		}
	}
	dw := t.durable.Load().Words()
	for w := uint64(0); w < n; w++ {
		atomic.OrUint64(&dw[w], atomic.LoadUint64(&sw[w]))
	}
	return nil
}

// grow extends the tracker to n blocks. Caller holds the gate exclusively.
func (t *tracker) grow(n uint64) error {
	if t.f != nil {
		if err := unix.Fallocate(int(t.f.Fd()), 0, 0, trackDataOff+int64(wordsFor(n))*8); err != nil {
			return fmt.Errorf("grow change-tracking file %s: %w", t.path, mapErr(err))
		}
		var hdr [8]byte
		binary.LittleEndian.PutUint64(hdr[:], n)
		if _, err := t.f.WriteAt(hdr[:], 24); err != nil {
			return fmt.Errorf("grow change-tracking file %s: %w", t.path, err)
		}
		if err := t.f.Sync(); err != nil {
			return fmt.Errorf("grow change-tracking file %s: %w", t.path, err)
		}
	}
	// durable first: a bit in the durable copy is then in the staged copy
	// too (mark sets staged before durable). Marks racing with this are
	// redone by their writers (the volume's shape changed).
	durable := t.durable.Load().Grow(n)
	staged := t.staged.Load().Grow(n)
	t.staged.Store(staged)
	t.durable.Store(durable)
	return nil
}

// close retires the tracker, waiting for marks in progress, and closes
// its file.
func (t *tracker) close() error {
	t.life.Lock()
	defer t.life.Unlock()
	if t.retired || t.f == nil {
		t.retired = true
		return nil
	}
	t.retired = true
	return t.f.Close()
}

// remove closes and deletes the tracker file.
func (t *tracker) remove() error {
	t.close()
	if t.path == "" {
		return nil
	}
	if err := os.Remove(t.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return durable.SyncDir(filepath.Dir(t.path))
}
