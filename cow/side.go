package cow

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cairn-storage/cairn/internal/durable"
	"golang.org/x/sys/unix"
)

// sideFiles hold redirected writes (redirect.go): one sparse file per
// epoch, "<track prefix>.row.<epoch>", each redirected page at its own
// offset. A rewrite in the same epoch lands in place, so a file never
// needs more room than the pages written in its epoch, and writing a page
// there costs what writing it into the live image costs: no header, no
// preallocation, no shared append point.
//
// Which pages a file holds is its data (SEEK_DATA/SEEK_HOLE): pages are
// only ever written whole, and ext4 reports pages written but not yet
// allocated (delayed allocation) as data, so after a kill -9 every
// answered write is found. After a power cut a page not synced may be
// missing (its write was not FLUSHed), and data=ordered never shows an
// allocated block before its data reached the disk. A FLUSH syncs every
// file; a file's directory entry is made durable when it is created.
type sideFiles struct {
	prefix string // "<track prefix>.row."

	mu    sync.RWMutex        // guards files (shared: reading and writing pages)
	files map[uint64]*os.File // by epoch

	hooks *testHooks // tests only
}

func newSideFiles(trackPrefix string, hooks *testHooks) *sideFiles {
	return &sideFiles{prefix: trackPrefix + ".row.", files: map[uint64]*os.File{}, hooks: hooks}
}

// open opens every side file left by an earlier start and calls fn with
// the page numbers each holds, by epoch in ascending order.
func (s *sideFiles) open(fn func(epoch uint64, pages []uint64)) error {
	matches, err := filepath.Glob(s.prefix + "*")
	if err != nil {
		return err
	}
	var epochs []uint64
	for _, m := range matches {
		e, err := strconv.ParseUint(strings.TrimPrefix(m, s.prefix), 10, 64)
		if err != nil {
			continue
		}
		f, err := os.OpenFile(m, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open redirected writes %s: %w", m, err)
		}
		s.files[e] = f
		epochs = append(epochs, e)
	}
	slices.Sort(epochs)
	for _, e := range epochs {
		pages, err := dataPages(s.files[e])
		if err != nil {
			return fmt.Errorf("list redirected writes in %s: %w", s.files[e].Name(), err)
		}
		fn(e, pages)
	}
	return nil
}

// dataPages lists the pages of f that hold data.
func dataPages(f *os.File) ([]uint64, error) {
	fd := int(f.Fd())
	var pages []uint64
	for off := int64(0); ; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return pages, nil
		}
		if err != nil {
			return nil, err
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		for p := d / pageSize; p*pageSize < h; p++ {
			pages = append(pages, uint64(p))
		}
		off = h
	}
}

// write writes whole pages at off (page-aligned) into epoch's file,
// creating it (durably) first if need be.
func (s *sideFiles) write(epoch uint64, data []byte, off int64) error {
	if s.hooks != nil {
		if err := s.hooks.sideWriteErr.Load(); err != nil {
			return *err
		}
	}
	s.mu.RLock()
	f := s.files[epoch]
	s.mu.RUnlock()
	if f == nil {
		var err error
		if f, err = s.create(epoch); err != nil {
			return err
		}
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write redirected pages to %s: %w", f.Name(), err)
	}
	return nil
}

func (s *sideFiles) create(epoch uint64) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[epoch]; f != nil {
		return f, nil
	}
	name := s.prefix + strconv.FormatUint(epoch, 10)
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create redirected-write file: %w", err)
	}
	if err := durable.SyncDir(filepath.Dir(name)); err != nil {
		f.Close()
		os.Remove(name)
		return nil, fmt.Errorf("create redirected-write file %s: %w", name, err)
	}
	s.files[epoch] = f
	return f, nil
}

// read reads whole pages at off from epoch's file.
func (s *sideFiles) read(epoch uint64, buf []byte, off int64) error {
	s.mu.RLock()
	f := s.files[epoch]
	s.mu.RUnlock()
	if f == nil {
		return fmt.Errorf("redirected writes of epoch %d: no file %s%d", epoch, s.prefix, epoch)
	}
	n, err := f.ReadAt(buf, off)
	if err == io.EOF && n == len(buf) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("read redirected write from %s at %d: %w", f.Name(), off, err)
	}
	return nil
}

// sync makes every page written so far durable.
func (s *sideFiles) sync() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, f := range s.files {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("fdatasync %s: %w", f.Name(), err)
		}
	}
	return nil
}

// removeAll deletes every file, durably: once it returns no start will
// read them again. Their pages must be in the live image, synced. Until
// it succeeds the files stay open and readable (an unlinked file still
// reads through its descriptor), so a failure changes nothing a reader
// sees and the caller can try again.
func (s *sideFiles) removeAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files) == 0 {
		return nil
	}
	var dir string
	for _, f := range s.files {
		dir = filepath.Dir(f.Name())
		if err := os.Remove(f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove merged redirected writes: %w", err)
		}
	}
	if err := durable.SyncDir(dir); err != nil {
		return fmt.Errorf("remove merged redirected writes: %w", err)
	}
	for e, f := range s.files {
		f.Close()
		delete(s.files, e)
	}
	return nil
}

func (s *sideFiles) close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for e, f := range s.files {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		delete(s.files, e)
	}
	return err
}
