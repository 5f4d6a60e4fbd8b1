package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/internal/durable"
	"golang.org/x/sys/unix"
)

// The copy-before-write journal takes the store out of the guest's write
// path. When a write reaches a block still pending for a copying snapshot,
// the old content of the pages it overwrites (4 KiB units, not the whole
// block) is appended here raw and made durable with one fdatasync shared
// by every concurrent writer; only then does the write proceed (DESIGN.md
// invariant 1). The block stays pending: its snapshot version is the live
// image's pages that were never overwritten plus the journaled ones, and
// the copy-out worker (or a snapshot read) composes it from both. Once the
// worker has stored the block its journal records are released; when none
// is live the journal starts over.
//
// File format ("<track prefix>.cbw"), little endian:
//
//	page 0:  file header: magic "CAIRNCBJ", u32 version, u32 block size,
//	         u64 generation, u32 CRC-32C of the first 24 bytes
//	then records, packed: a 4 KiB header page (magic "CAIRNCBW", u32
//	         version, u32 block size, u64 generation, u64 snapshot
//	         sequence, u64 snapshot nonce, u64 block, u32 first page, u32
//	         page count, u32 CRC-32C of the data and then those 56
//	         bytes), then the pages.
//
// Records get their places in file order under a mutex and are written
// outside it (concurrent writers' records go down together); a sync
// counts durable only the prefix of the file whose records were all
// written when it began, so a record counted durable has every record
// before it durable too: recovery reads records from the start and stops
// at the first that is torn or of another generation. A record whose
// write fails breaks the journal (nothing after it could be recovered);
// writers then store blocks directly.
// Starting over bumps the generation in the file header, durably, before
// any new record is written, so records of earlier rounds are never read
// as current ones. A record is believed at recovery only if it names a
// snapshot that is still copying (sequence and nonce: a sequence reused
// after an abandoned seal has another nonce) and a block still pending
// (not yet in the store). Such a record holds that snapshot's version of
// its pages: pages are journaled only while their block is pending and
// before anything overwrites them.
const (
	journalMagic     = "CAIRNCBW"
	journalFileMagic = "CAIRNCBJ"
	journalVersion   = 2
	journalPage      = 4096
	journalRecUsed   = 60

	// DefaultJournalMax bounds the journal's size; writes that would grow
	// it further copy their block to the store directly (the slower path).
	DefaultJournalMax = 1 << 30
	// journalKeep is how much of the file stays allocated when it starts
	// over (rewriting inside the file's size is cheaper to sync than
	// growing it).
	journalKeep = 64 << 20
)

var (
	crcTable = crc32.MakeTable(crc32.Castagnoli)

	errJournalFull   = errors.New("copy-before-write journal is full")
	errJournalBroken = errors.New("copy-before-write journal failed earlier")
)

// journal is the copy-before-write journal of one volume.
type journal struct {
	path string
	f    *os.File
	bs   int64
	max  int64
	sync *groupSync

	mu   sync.Mutex
	gen  uint64 // current generation (guarded by mu)
	size int64  // file size (guarded by mu)
	// growing: a goroutine is writing zeros past the end of the file, so
	// records land in blocks already allocated and written (guarded by mu)
	growing bool
	grower  sync.WaitGroup // the preallocating goroutine, waited for by close
	// zstart..zend: the range the grower is writing zeros to, outside mu
	// (zend 0: none); an append that would overlap it waits on zdone.
	zstart, zend int64 // guarded by mu
	zdone        *sync.Cond
	wdone        *sync.Cond // broadcast when written advances or the journal breaks
	tail         int64      // where the next record goes (guarded by mu)
	// Records are written outside mu, at places reserved in file order;
	// written is the end of the prefix of the file whose records are all
	// written (or failed, which breaks the journal), and slots the
	// reserved records after it (guarded by mu). A sync makes durable
	// only what was written when it began, so a sync that covers one
	// record covers every record before it (recovery stops at the first
	// torn one).
	written int64
	slots   []jslot
	base    int64 // see posOf (guarded by mu)
	// synced: records ending at or before this position (pos) are
	// durable (written under mu, read without it)
	synced atomic.Int64
	live   int64 // records written and not yet released (guarded by mu)
	broken error // set after a sync failed: no more appends (guarded by mu)
}

// testAppendHook, set only by tests, runs in append between reserving a
// record's place and writing it.
var testAppendHook atomic.Pointer[func(off int64)]

// jslot is a record reserved and perhaps not yet written.
type jslot struct {
	off, end int64
	done     bool
}

// journalRec is a record read back at recovery; its pages are at
// off+journalPage.
type journalRec struct {
	seq, nonce, block uint64
	first, n          uint32
	off               int64
}

// openJournal opens (creating if needed) the journal at path and returns
// the current generation's intact records. The caller adopts the ones it
// believes and then calls start.
func openJournal(path string, blockSize int, max int64) (*journal, []journalRec, error) {
	if max <= 0 {
		max = DefaultJournalMax
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	created := false
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		created = true
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open copy-before-write journal: %w", err)
	}
	j := &journal{path: path, f: f, bs: int64(blockSize), max: max}
	j.zdone = sync.NewCond(&j.mu)
	j.wdone = sync.NewCond(&j.mu)
	j.sync = newGroupSync(j.fdatasync)
	fail := func(err error) (*journal, []journalRec, error) {
		f.Close()
		return nil, nil, fmt.Errorf("copy-before-write journal %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	j.size = fi.Size()
	var hdr [journalPage]byte
	if _, err := f.ReadAt(hdr[:28], 0); err != nil || string(hdr[:8]) != journalFileMagic ||
		binary.LittleEndian.Uint32(hdr[8:]) != journalVersion ||
		crc32.Checksum(hdr[:24], crcTable) != binary.LittleEndian.Uint32(hdr[24:]) {
		// New, or a header never made durable: no record was relied on.
		// A generation from the clock, so records of an earlier life of
		// the file cannot pass for this one's.
		if err := j.writeHeader(uint64(time.Now().UnixNano())); err != nil {
			return fail(err)
		}
		if created {
			if err := durable.SyncDir(filepath.Dir(path)); err != nil {
				return fail(err)
			}
		}
		j.tail, j.written = journalPage, journalPage
		j.synced.Store(j.base + journalPage)
		return j, nil, nil
	}
	if int64(binary.LittleEndian.Uint32(hdr[12:])) != j.bs {
		return fail(fmt.Errorf("written for block size %d, the disk's is %d", binary.LittleEndian.Uint32(hdr[12:]), j.bs))
	}
	j.gen = binary.LittleEndian.Uint64(hdr[16:])
	var recs []journalRec
	data := make([]byte, j.bs)
	off := int64(journalPage)
	for off+journalPage <= j.size {
		r, ok := j.readRecord(off, hdr[:journalRecUsed], data)
		if !ok {
			break
		}
		recs = append(recs, r)
		off += journalPage + int64(r.n)*journalPage
	}
	j.tail, j.written = off, off
	// What recovery read may so far be in the page cache only (a killed
	// process): make it durable before anything relies on it.
	if err := j.fdatasync(); err != nil {
		return fail(err)
	}
	return j, recs, nil
}

// fdatasync syncs the file and notes how far records are durable.
func (j *journal) fdatasync() error {
	j.mu.Lock()
	gen, end := j.gen, j.base+j.written
	j.mu.Unlock()
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.mu.Lock()
	if j.gen == gen && j.broken == nil && end > j.synced.Load() {
		j.synced.Store(end)
	}
	j.mu.Unlock()
	return nil
}

// posOf is the position of offset off in the current generation: base
// plus off, where base grows by the generation's length when the journal
// starts over, so positions only grow and a position a writer noted
// before the journal started over counts as durable (its records were
// all released first). The caller holds records of this generation (so
// it cannot start over meanwhile).
func (j *journal) posOf(off int64) int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.base + off
}

// durable reports whether records ending at or before position end are
// durable.
func (j *journal) durable(end int64) bool {
	return end <= j.synced.Load()
}

// readRecord reads and checks the record at off (hdr and data are
// scratch space).
func (j *journal) readRecord(off int64, hdr, data []byte) (journalRec, bool) {
	if _, err := j.f.ReadAt(hdr, off); err != nil {
		return journalRec{}, false
	}
	if string(hdr[:8]) != journalMagic || binary.LittleEndian.Uint32(hdr[8:]) != journalVersion ||
		int64(binary.LittleEndian.Uint32(hdr[12:])) != j.bs || binary.LittleEndian.Uint64(hdr[16:]) != j.gen {
		return journalRec{}, false
	}
	r := journalRec{seq: binary.LittleEndian.Uint64(hdr[24:]), nonce: binary.LittleEndian.Uint64(hdr[32:]),
		block: binary.LittleEndian.Uint64(hdr[40:]), first: binary.LittleEndian.Uint32(hdr[48:]),
		n: binary.LittleEndian.Uint32(hdr[52:]), off: off}
	if r.n == 0 || int64(r.first+r.n)*journalPage > j.bs {
		return journalRec{}, false
	}
	p := data[:int64(r.n)*journalPage]
	if _, err := j.f.ReadAt(p, off+journalPage); err != nil {
		return journalRec{}, false
	}
	if recCRC(hdr, p) != binary.LittleEndian.Uint32(hdr[56:]) {
		return journalRec{}, false
	}
	return r, true
}

// recCRC is the CRC-32C of the data, then the header's first 56 bytes
// (data first, so a writer hashes the data outside the lock).
func recCRC(hdr, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(data, crcTable), crcTable, hdr[:56])
}

// writeHeader starts generation gen: the file header, durably.
func (j *journal) writeHeader(gen uint64) error {
	var hdr [28]byte
	copy(hdr[:], journalFileMagic)
	binary.LittleEndian.PutUint32(hdr[8:], journalVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(j.bs))
	binary.LittleEndian.PutUint64(hdr[16:], gen)
	binary.LittleEndian.PutUint32(hdr[24:], crc32.Checksum(hdr[:24], crcTable))
	if _, err := j.f.WriteAt(hdr[:], 0); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.gen = gen
	j.size = max(j.size, 28)
	return nil
}

// start begins appending after recovery: adopted records stay live; with
// none, the journal starts over.
func (j *journal) start(adopted int) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.live = int64(adopted)
	if adopted == 0 {
		return j.resetLocked()
	}
	return nil
}

// append writes the old content of pages first..first+n-1 of block for
// snapshot (seq, nonce) and returns the record's offset. It is not
// durable until wait returns. errJournalFull and errJournalBroken tell
// the caller to use the store directly.
func (j *journal) append(seq, nonce, block uint64, first uint32, data []byte) (int64, error) {
	n := uint32(len(data) / journalPage)
	// A pooled header page: only its first journalRecUsed bytes are ever
	// set, the rest stays zero (a 4 KiB allocation per write made the
	// garbage collector and the kernel's page faults a cost of their own).
	hdr := hdrPool.Get().(*[journalPage]byte)
	defer hdrPool.Put(hdr)
	clear(hdr[:journalRecUsed])
	copy(hdr[:], journalMagic)
	binary.LittleEndian.PutUint32(hdr[8:], journalVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(j.bs))
	binary.LittleEndian.PutUint64(hdr[24:], seq)
	binary.LittleEndian.PutUint64(hdr[32:], nonce)
	binary.LittleEndian.PutUint64(hdr[40:], block)
	binary.LittleEndian.PutUint32(hdr[48:], first)
	binary.LittleEndian.PutUint32(hdr[52:], n)
	dataCRC := crc32.Checksum(data, crcTable)
	need := int64(journalPage) + int64(len(data))

	j.mu.Lock()
	if j.broken != nil {
		j.mu.Unlock()
		return 0, errJournalBroken
	}
	if j.tail+need > j.max {
		j.mu.Unlock()
		return 0, errJournalFull
	}
	for j.zend != 0 && j.tail < j.zend && j.tail+need > j.zstart {
		j.zdone.Wait() // the grower is writing zeros where this record goes
	}
	if j.broken != nil {
		j.mu.Unlock()
		return 0, errJournalBroken
	}
	binary.LittleEndian.PutUint64(hdr[16:], j.gen)
	binary.LittleEndian.PutUint32(hdr[56:], crc32.Update(dataCRC, crcTable, hdr[:56]))
	off := j.tail
	j.tail += need
	j.size = max(j.size, j.tail)
	j.live++
	j.slots = append(j.slots, jslot{off: off, end: off + need})
	if !j.growing && j.size-j.tail < journalAhead/2 && j.size < j.max {
		j.growing = true
		j.grower.Add(1)
		go j.preallocate()
	}
	j.mu.Unlock()

	// Written outside mu, so concurrent writers' records go down
	// together; see written.
	if h := testAppendHook.Load(); h != nil {
		(*h)(off)
	}
	w, err := unix.Pwritev(int(j.f.Fd()), [][]byte{hdr[:], data}, off)
	if err == nil && int64(w) != need {
		err = io.ErrShortWrite
	}
	if err != nil {
		err = fmt.Errorf("write copy-before-write journal %s: %w", j.path, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := range j.slots {
		if j.slots[i].off == off {
			j.slots[i].done = true
			break
		}
	}
	if err != nil {
		// A torn record ends what recovery reads: no record after it may
		// count as durable, so the journal is broken (writers store
		// blocks directly from now on).
		j.live--
		if j.broken == nil {
			j.broken = err
		}
	}
	for len(j.slots) > 0 && j.slots[0].done {
		j.written = j.slots[0].end
		j.slots = j.slots[1:]
	}
	j.wdone.Broadcast()
	if err != nil {
		return 0, err
	}
	return off, nil
}

// rowNonce marked redirect records, which an earlier build wrote to the
// journal (a snapshot's nonce is its creation time in nanoseconds, never
// 1). Redirected writes now live in side files (side.go).
const rowNonce = 1

var hdrPool = sync.Pool{New: func() any { return new([journalPage]byte) }}

// journalAhead is how far past the last record the file is kept written.
const journalAhead = 32 << 20

// preallocate writes zeros past the end of the file, 1 MiB at a time
// (never over a record: the range is claimed under mu, and an append that
// would reach it waits),
// with direct I/O on a second descriptor, then syncs the allocation:
// records written there later overwrite allocated blocks, and syncing them
// flushes data only, not the filesystem's journal, as growing the file
// would. Direct I/O keeps the zeros out of the page cache, so the records'
// own syncs never have to write them back.
func (j *journal) preallocate() {
	defer j.grower.Done()
	stop := func() {
		j.mu.Lock()
		j.growing = false
		j.mu.Unlock()
	}
	df, err := os.OpenFile(j.path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		stop()
		return // appends just grow the file themselves
	}
	defer df.Close()
	zeros, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS) // page-aligned
	if err != nil {
		stop()
		return
	}
	defer unix.Munmap(zeros)
	for {
		j.mu.Lock()
		start := (max(j.size, journalPage) + journalPage - 1) / journalPage * journalPage
		if start-j.tail >= journalAhead || start+int64(len(zeros)) > j.max || j.broken != nil {
			j.growing = false
			j.mu.Unlock()
			break
		}
		j.zstart, j.zend = start, start+int64(len(zeros))
		j.mu.Unlock()
		_, err := df.WriteAt(zeros, start)
		j.mu.Lock()
		if err == nil {
			j.size = max(j.size, start+int64(len(zeros)))
		}
		j.zstart, j.zend = 0, 0
		j.zdone.Broadcast()
		j.mu.Unlock()
		if err != nil {
			stop()
			return
		}
	}
	unix.Fdatasync(int(df.Fd()))
}

// wait makes durable every record whose write had finished when it was
// called, and every record before those.
func (j *journal) wait() error {
	if err := j.sync.Wait(); err != nil {
		j.mu.Lock()
		if j.broken == nil {
			j.broken = err
			j.wdone.Broadcast()
		}
		j.mu.Unlock()
		return fmt.Errorf("sync copy-before-write journal %s: %w", j.path, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	return nil
}

// waitAll makes every record appended before the call durable.
func (j *journal) waitAll() error {
	j.mu.Lock()
	end := j.base + j.tail
	j.mu.Unlock()
	return j.waitDurable(end)
}

// waitDurable returns once the records ending at or before end are
// durable (a record before them may still be being written when a sync
// begins: then another sync is needed).
func (j *journal) waitDurable(end int64) error {
	for !j.durable(end) {
		if err := j.wait(); err != nil {
			return err
		}
	}
	return nil
}

// readPages fills buf with the pages of record r of snapshot seq and
// block, checking that the record is that one and its CRC.
func (j *journal) readPages(seq, block uint64, r jrecord, buf []byte) error {
	var hdr [journalRecUsed]byte
	if _, err := j.f.ReadAt(hdr[:], r.off); err != nil {
		return fmt.Errorf("read copy-before-write journal %s at %d: %w", j.path, r.off, err)
	}
	p := buf[:int64(r.n)*journalPage]
	if _, err := j.f.ReadAt(p, r.off+journalPage); err != nil {
		return fmt.Errorf("read copy-before-write journal %s at %d: %w", j.path, r.off, err)
	}
	if string(hdr[:8]) != journalMagic || binary.LittleEndian.Uint64(hdr[24:]) != seq ||
		binary.LittleEndian.Uint64(hdr[40:]) != block || binary.LittleEndian.Uint32(hdr[48:]) != r.first ||
		binary.LittleEndian.Uint32(hdr[52:]) != r.n || recCRC(hdr[:], p) != binary.LittleEndian.Uint32(hdr[56:]) {
		return fmt.Errorf("copy-before-write journal %s: the record at %d is not block %d of snapshot %d or fails its checksum", j.path, r.off, block, seq)
	}
	return nil
}

// release frees n records; when none is live the journal starts over.
func (j *journal) release(n int) {
	if n == 0 {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.live -= int64(n)
	if j.live == 0 {
		if err := j.resetLocked(); err != nil && j.broken == nil {
			j.broken = err
			j.wdone.Broadcast()
		}
	}
}

// resetLocked starts a new generation at the beginning of the file.
func (j *journal) resetLocked() error {
	if j.tail <= journalPage && j.gen != 0 {
		return nil
	}
	if err := j.writeHeader(j.gen + 1); err != nil {
		return fmt.Errorf("start over copy-before-write journal %s: %w", j.path, err)
	}
	j.base += j.tail
	j.tail, j.written = journalPage, journalPage
	j.synced.Store(j.base + journalPage)
	if j.size > journalKeep && j.zend == 0 { // (not under the grower's feet)
		if err := j.f.Truncate(journalKeep); err == nil {
			j.size = journalKeep
		}
	}
	return nil
}

// used is how many bytes of the journal hold records since it last started over.
func (j *journal) used() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.tail - journalPage
}

var errJournalClosed = errors.New("copy-before-write journal closed")

func (j *journal) close() error {
	j.mu.Lock()
	if j.broken == nil {
		j.broken = errJournalClosed // stops the grower
		j.wdone.Broadcast()
	}
	j.mu.Unlock()
	j.grower.Wait()
	return j.f.Close()
}
