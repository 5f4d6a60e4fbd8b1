package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/internal/durable"
)

// Failure marks: a small file beside the tracker files
// ("<TrackPrefix>.failed") that names the snapshots that failed (or began
// a delete while copying) and whose new state is not yet in the store.
//
// Once a copying snapshot fails, its pending blocks pass on and the writes
// that were redirected to keep its version are merged into the live image,
// so its old record ("copying") must never be resumed: it would copy newer
// data and call it ready. The store may be unable to take the new record
// (a full filesystem, a disk that fails) and cairnd may stop before it
// does, so the failure is first made durable here, on the data directory's
// filesystem, before any block passes on; the mark goes once the store has
// the record, and at start a marked snapshot still copying is failed
// (volume recovery, failMarked). The file is allocated when it is created,
// so a mark needs no new space on a full filesystem.
//
// A delete of a copying snapshot passes its blocks on too, before its
// "deleting" record: its mark says so, and recovery finishes the delete.
//
// Format (version 1): an 8-byte header "CAIRNFM1", then slots of 8 bytes,
// each 0 (free) or a snapshot's sequence number (little-endian) with bit
// 63 set for a delete. A file with another header is refused, never
// misread.
const (
	failMarksMagic = "CAIRNFM1"
	failMarksSize  = 4096 // 511 slots
	markDelete     = 1 << 63
)

type failMarks struct {
	path string
	mu   sync.Mutex // guards f and slots
	f    *os.File
	// slots mirrors the file's slots (0: free).
	slots []uint64
}

// openFailMarks opens the marks file at path, creating and allocating it
// if it does not exist. A file it cannot create (a full filesystem) is no
// error: the returned marks then mark nothing (add fails, and the caller
// says what that risks) and the next open tries again.
func openFailMarks(path string, log interface{ Warn(string, ...any) }) (*failMarks, error) {
	m := &failMarks{path: path}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := m.create(); err != nil {
			log.Warn("cannot create the failure marks file; snapshots that fail will be retried at the next start if their failure cannot be recorded", "err", err)
		}
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open failure marks %s: %w", path, err)
	}
	m.f = f
	buf := make([]byte, failMarksSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && n < len(failMarksMagic) {
		f.Close()
		return nil, fmt.Errorf("read failure marks %s: %w", path, err)
	}
	if string(buf[:len(failMarksMagic)]) != failMarksMagic {
		f.Close()
		return nil, fmt.Errorf("failure marks %s: unknown format %q (this cairnd reads %q): it was written by another version of cairnd; start that one",
			path, buf[:len(failMarksMagic)], failMarksMagic)
	}
	for off := len(failMarksMagic); off+8 <= n; off += 8 {
		m.slots = append(m.slots, binary.LittleEndian.Uint64(buf[off:]))
	}
	return m, nil
}

// create makes the file: allocated, header written, durable.
func (m *failMarks) create() error {
	f, err := durable.CreateFile(m.path, failMarksSize, []byte(failMarksMagic))
	if err != nil {
		return fmt.Errorf("create failure marks %s: %w", m.path, mapErr(err))
	}
	m.f = f
	m.slots = make([]uint64, (failMarksSize-len(failMarksMagic))/8)
	return nil
}

// add marks seq durably (seq|markDelete for a delete).
func (m *failMarks) add(seq uint64) error {
	if m == nil {
		return errors.New("no failure marks yet")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.f == nil {
		return errors.New("no failure marks file")
	}
	free := -1
	for i, s := range m.slots {
		if s == seq {
			return nil
		}
		if s&^markDelete == seq&^markDelete {
			free = i // a delete after a failure: the newer intent
			break
		}
		if s == 0 && free < 0 {
			free = i
		}
	}
	if free < 0 {
		free = len(m.slots)
		m.slots = append(m.slots, 0)
	}
	return m.writeSlot(free, seq)
}

// remove drops seq's mark, of either kind.
func (m *failMarks) remove(seq uint64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, s := range m.slots {
		if s != 0 && s&^markDelete == seq && m.f != nil {
			m.writeSlot(i, 0)
		}
	}
}

// writeSlot writes slot i and syncs. Caller holds mu.
func (m *failMarks) writeSlot(i int, seq uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seq)
	if _, err := m.f.WriteAt(b[:], int64(len(failMarksMagic)+8*i)); err != nil {
		return fmt.Errorf("write failure mark in %s: %w", m.path, mapErr(err))
	}
	if err := unix.Fdatasync(int(m.f.Fd())); err != nil {
		return fmt.Errorf("sync failure marks %s: %w", m.path, mapErr(err))
	}
	m.slots[i] = seq
	return nil
}

// list returns the marks (seq, with markDelete for a delete).
func (m *failMarks) list() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint64
	for _, s := range m.slots {
		if s != 0 {
			out = append(out, s)
		}
	}
	return out
}

func (m *failMarks) close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.f == nil {
		return nil
	}
	err := m.f.Close()
	m.f = nil
	return err
}
