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

	"golang.org/x/sys/unix"
)

// The copy-before-write journal takes the store out of the guest's write
// path. When a write reaches a block still pending for a copying snapshot,
// the block's old content is appended here raw and made durable with one
// fdatasync shared by every concurrent writer; only then does the write
// proceed (DESIGN.md invariant 1). The snapshot's copy-out worker later
// hashes, compresses and stores the journaled blocks and releases their
// slots; once no slot is live the file is truncated to zero. Until a block
// is stored, snapshot reads take it from the journal.
//
// File format ("<track prefix>.cbw"): fixed-size slots, so every slot is
// checked on its own after a crash (a torn slot does not hide later ones):
//
//	slot = 4096-byte header, then one block of data
//	header: magic "CAIRNCBW", u32 version, u32 block size, u64 snapshot
//	        sequence, u64 snapshot nonce, u64 block, u32 CRC-32C of the
//	        header's first 44 bytes and the data (little endian)
//
// A slot is believed at recovery only if its CRC matches and it names a
// snapshot that is still copying (sequence and nonce: a sequence number
// reused after an abandoned seal has another nonce) with the block still
// pending (not yet in the store). Any such slot holds that snapshot's
// version of the block: slots are written only while the block is pending,
// and a pending block is unchanged in the live image since the seal.
// Stale slots (already stored, or of deleted or failed snapshots) fail one
// of those checks, so the truncation need not be durable.
const (
	journalMagic   = "CAIRNCBW"
	journalVersion = 1
	journalHdr     = 4096
	journalHdrUsed = 48

	// DefaultJournalMax bounds the journal's size; writes that would grow
	// it further copy their block to the store directly (the slower path).
	DefaultJournalMax = 1 << 30
)

var (
	crcTable = crc32.MakeTable(crc32.Castagnoli)

	errJournalFull   = errors.New("copy-before-write journal is full")
	errJournalBroken = errors.New("copy-before-write journal failed earlier")
)

// journal is the copy-before-write journal of one volume.
type journal struct {
	path   string
	f      *os.File
	bs     int64
	stride int64
	max    int64
	sync   *groupSync

	mu     sync.Mutex
	tail   int64 // next free slot offset (guarded by mu)
	live   int64 // slots reserved and not yet released (guarded by mu)
	broken error // set after a sync failed: no more appends (guarded by mu)
}

// journalRec is a slot read back at recovery.
type journalRec struct {
	seq, nonce, block uint64
	off               int64
}

// openJournal opens (creating if needed) the journal at path and returns
// the slots whose header and CRC are intact. The caller adopts the ones it
// believes and then calls start.
func openJournal(path string, blockSize int, max int64) (*journal, []journalRec, error) {
	if max <= 0 {
		max = DefaultJournalMax
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		// Created once, its directory entry durable before any slot is
		// trusted to it.
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err == nil {
			if err = syncDir(filepath.Dir(path)); err != nil {
				f.Close()
			}
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open copy-before-write journal: %w", err)
	}
	j := &journal{path: path, f: f, bs: int64(blockSize), stride: journalHdr + int64(blockSize), max: max}
	j.sync = newGroupSync(func() error { return unix.Fdatasync(int(f.Fd())) })
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat copy-before-write journal %s: %w", path, err)
	}
	var recs []journalRec
	hdr := make([]byte, journalHdrUsed)
	data := make([]byte, blockSize)
	for off := int64(0); off+j.stride <= fi.Size(); off += j.stride {
		if _, err := f.ReadAt(hdr, off); err != nil {
			break
		}
		seq, nonce, block, ok := j.parseHeader(hdr)
		if !ok {
			continue
		}
		if _, err := f.ReadAt(data, off+journalHdr); err != nil {
			break
		}
		if slotCRC(hdr, data) != binary.LittleEndian.Uint32(hdr[44:]) {
			continue
		}
		recs = append(recs, journalRec{seq: seq, nonce: nonce, block: block, off: off})
	}
	j.tail = (fi.Size() + j.stride - 1) / j.stride * j.stride
	return j, recs, nil
}

func (j *journal) parseHeader(hdr []byte) (seq, nonce, block uint64, ok bool) {
	if string(hdr[:8]) != journalMagic || binary.LittleEndian.Uint32(hdr[8:]) != journalVersion ||
		int64(binary.LittleEndian.Uint32(hdr[12:])) != j.bs {
		return 0, 0, 0, false
	}
	return binary.LittleEndian.Uint64(hdr[16:]), binary.LittleEndian.Uint64(hdr[24:]),
		binary.LittleEndian.Uint64(hdr[32:]), true
}

func slotCRC(hdr, data []byte) uint32 {
	return crc32.Update(crc32.Checksum(hdr[:44], crcTable), crcTable, data)
}

// start begins appending after recovery: adopted slots stay live; with
// none, the file is emptied.
func (j *journal) start(adopted int) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.live = int64(adopted)
	if adopted == 0 {
		j.truncateLocked()
	}
}

// append writes one block's old content for snapshot (seq, nonce) and
// returns its slot. It is not durable until wait returns. errJournalFull
// and errJournalBroken tell the caller to use the store directly.
func (j *journal) append(seq, nonce, block uint64, data []byte) (int64, error) {
	j.mu.Lock()
	if j.broken != nil {
		j.mu.Unlock()
		return 0, errJournalBroken
	}
	if j.tail+j.stride > j.max {
		j.mu.Unlock()
		return 0, errJournalFull
	}
	off := j.tail
	j.tail += j.stride
	j.live++
	j.mu.Unlock()

	var hdr [journalHdrUsed]byte
	copy(hdr[:], journalMagic)
	binary.LittleEndian.PutUint32(hdr[8:], journalVersion)
	binary.LittleEndian.PutUint32(hdr[12:], uint32(j.bs))
	binary.LittleEndian.PutUint64(hdr[16:], seq)
	binary.LittleEndian.PutUint64(hdr[24:], nonce)
	binary.LittleEndian.PutUint64(hdr[32:], block)
	binary.LittleEndian.PutUint32(hdr[44:], slotCRC(hdr[:], data))
	iov := [][]byte{hdr[:], make([]byte, journalHdr-journalHdrUsed), data}
	n, err := unix.Pwritev(int(j.f.Fd()), iov, off)
	if err == nil && int64(n) != j.stride {
		err = io.ErrShortWrite
	}
	if err != nil {
		// The slot stays dead (its CRC cannot match); only a failed sync
		// breaks the journal, since it may have dropped earlier slots.
		j.release(1)
		return 0, fmt.Errorf("write copy-before-write journal %s: %w", j.path, err)
	}
	return off, nil
}

// wait makes every slot appended before the call durable.
func (j *journal) wait() error {
	if err := j.sync.Wait(); err != nil {
		j.fail(err)
		return fmt.Errorf("sync copy-before-write journal %s: %w", j.path, err)
	}
	return nil
}

func (j *journal) fail(err error) {
	j.mu.Lock()
	if j.broken == nil {
		j.broken = err
	}
	j.mu.Unlock()
}

// read fills buf with the block in slot off, checking the slot's CRC.
func (j *journal) read(off int64, buf []byte) error {
	var hdr [journalHdrUsed]byte
	if _, err := j.f.ReadAt(hdr[:], off); err != nil {
		return fmt.Errorf("read copy-before-write journal %s at %d: %w", j.path, off, err)
	}
	if _, err := j.f.ReadAt(buf, off+journalHdr); err != nil {
		return fmt.Errorf("read copy-before-write journal %s at %d: %w", j.path, off, err)
	}
	if slotCRC(hdr[:], buf) != binary.LittleEndian.Uint32(hdr[44:]) {
		return fmt.Errorf("copy-before-write journal %s: slot at %d fails its checksum", j.path, off)
	}
	return nil
}

// release frees n slots; when none is live the file is emptied.
func (j *journal) release(n int) {
	if n == 0 {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.live -= int64(n)
	if j.live == 0 {
		j.truncateLocked()
	}
}

func (j *journal) truncateLocked() {
	if j.tail == 0 {
		return
	}
	if err := j.f.Truncate(0); err != nil {
		return // slots stay dead; appends go on at the tail
	}
	j.tail = 0
}

// size is the journal's current length in bytes.
func (j *journal) size() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.tail
}

func (j *journal) close() error { return j.f.Close() }
