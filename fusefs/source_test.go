package fusefs_test

// The test Source: disks and snapshots are cow volumes over temporary
// files (memory-only change tracking, no store), so the tree is tested
// against the real volume without the daemon. The test through cairnd
// (NBD next to FUSE, real snapshots) is scripts/test/test-fuse.sh.

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/fusefs"
)

// testFile is a cow.Volume that records what the tree asked of it.
// onWrite is the volume's write hook (cow.Options.OnWrite), which the
// daemon points at Tree.Changed. The fields a test
// sets while the tree serves are atomic: the kernel between them gives the
// race detector no order.
type testFile struct {
	*cow.Volume
	f        *os.File // the image itself, for the test's own reads and Backing
	size     int64
	readOnly bool
	backed   atomic.Bool // offer the image for reads (Backed)

	flushes  atomic.Int64
	maxRead  atomic.Int64  // largest ReadAt
	maxWrite atomic.Int64  // largest WriteAt
	opens    atomic.Int64  // handles open on it
	released chan struct{} // a value per release (extra ones are dropped)
	mu       sync.Mutex
	trims    [][2]int64 // guarded by mu
	onWrite  atomic.Pointer[func(ctx context.Context, off, length int64)]
}

var (
	_ block.Device = (*testFile)(nil)
	_ block.Device = (*testFile)(nil)
	_ block.Backed = (*testFile)(nil)
)

// newTestFile creates a sparse image of size bytes in dir. A testSource
// closes the files it serves once the tree is unmounted: the kernel may
// still read ahead after the test closed its FUSE file.
func newTestFile(t testing.TB, dir string, size int64) *testFile {
	t.Helper()
	f, err := os.CreateTemp(dir, "backing-*.raw")
	if err == nil {
		err = f.Truncate(size)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	tf, err := openTestFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return tf
}

// openTestFile opens the image at path as a volume.
func openTestFile(path string) (*testFile, error) {
	tf := &testFile{released: make(chan struct{}, 1)}
	vol, err := cow.Open(path, cow.Options{OnWrite: tf.changed})
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		vol.Close()
		return nil, err
	}
	tf.Volume, tf.f, tf.size = vol, f, vol.Size()
	return tf, nil
}

func (tf *testFile) close() {
	tf.Volume.Close()
	tf.f.Close()
}

// Backing offers the image for reads when tf.backed, as a live disk's
// volume can.
func (tf *testFile) Backing(off, length int64) (uintptr, int64, bool) {
	return tf.f.Fd(), off, tf.backed.Load()
}

// noteMax raises m to n.
func noteMax(m *atomic.Int64, n int) {
	for old := m.Load(); int64(n) > old && !m.CompareAndSwap(old, int64(n)); old = m.Load() {
	}
}

func (tf *testFile) ReadAt(ctx context.Context, p []byte, off int64) error {
	noteMax(&tf.maxRead, len(p))
	return tf.Volume.ReadAt(ctx, p, off)
}

func (tf *testFile) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if tf.readOnly {
		return block.ErrReadOnly
	}
	noteMax(&tf.maxWrite, len(p))
	return tf.Volume.WriteAt(ctx, p, off, fua)
}

func (tf *testFile) changed(ctx context.Context, off, length int64) {
	if hook := tf.onWrite.Load(); hook != nil {
		(*hook)(ctx, off, length)
	}
}

func (tf *testFile) Flush(ctx context.Context) error {
	tf.flushes.Add(1)
	return tf.Volume.Flush(ctx)
}

func (tf *testFile) Trim(ctx context.Context, off, length int64, fua bool) error {
	tf.mu.Lock()
	tf.trims = append(tf.trims, [2]int64{off, length})
	tf.mu.Unlock()
	return tf.Volume.Trim(ctx, off, length, fua)
}

func (tf *testFile) trimmed() [][2]int64 {
	tf.mu.Lock()
	defer tf.mu.Unlock()
	return append([][2]int64(nil), tf.trims...)
}

// backing reads the backing file directly.
func (tf *testFile) backing(t *testing.T, off, length int64) []byte {
	t.Helper()
	p := make([]byte, length)
	if _, err := tf.f.ReadAt(p, off); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return p
}

type testDisk struct {
	entry fusefs.DiskEntry
	file  *testFile
	snaps []testSnap
}

type testSnap struct {
	entry fusefs.SnapEntry
	file  *testFile
}

// testSource is a Source whose disks tests add and remove.
type testSource struct {
	mu    sync.Mutex
	disks map[string]*testDisk // guarded by mu
	files []*testFile          // guarded by mu: every file ever served
}

// closeFiles closes every file the source served.
func (s *testSource) closeFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.close()
	}
}

var _ fusefs.Source = (*testSource)(nil)

func newTestSource() *testSource { return &testSource{disks: map[string]*testDisk{}} }

func (s *testSource) addDisk(name string, f *testFile) {
	s.addDiskEntry(fusefs.DiskEntry{Name: name, Created: time.Now()}, f)
}

// addDiskEntry adds a disk as e says (its Size is f's).
func (s *testSource) addDiskEntry(e fusefs.DiskEntry, f *testFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.Size = f.size
	s.disks[e.Name] = &testDisk{entry: e, file: f}
	s.files = append(s.files, f)
}

// setSize changes the size the Source reports for a disk (a grow).
func (s *testSource) setSize(name string, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.disks[name].entry.Size = size
}

func (s *testSource) removeDisk(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.disks, name)
}

func (s *testSource) addSnapshot(disk, name string, f *testFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.readOnly = true
	d := s.disks[disk]
	d.snaps = append(d.snaps, testSnap{fusefs.SnapEntry{Name: name, Size: f.size, Created: time.Now()}, f})
	s.files = append(s.files, f)
}

func (s *testSource) removeSnapshot(disk, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.disks[disk]
	for i, sn := range d.snaps {
		if sn.entry.Name == name {
			d.snaps = append(d.snaps[:i], d.snaps[i+1:]...)
			return
		}
	}
}

func (s *testSource) Disks() []fusefs.DiskEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fusefs.DiskEntry
	for _, d := range s.disks {
		out = append(out, d.entry)
	}
	return out
}

func (s *testSource) Snapshots(disk string) []fusefs.SnapEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.disks[disk]
	if !ok {
		return nil
	}
	var out []fusefs.SnapEntry
	for _, sn := range d.snaps {
		out = append(out, sn.entry)
	}
	return out
}

func (s *testSource) OpenDisk(ctx context.Context, disk string) (block.Device, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.disks[disk]
	if !ok {
		return nil, nil, fs.ErrNotExist
	}
	return d.file, opened(d.file), nil
}

func (s *testSource) OpenSnapshot(ctx context.Context, disk, snap string) (block.Device, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.disks[disk]; ok {
		for _, sn := range d.snaps {
			if sn.entry.Name == snap {
				return sn.file, opened(sn.file), nil
			}
		}
	}
	return nil, nil, fs.ErrNotExist
}

// opened counts an open handle and returns its release.
func opened(f *testFile) func() {
	f.opens.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			f.opens.Add(-1)
			select {
			case f.released <- struct{}{}:
			default:
			}
		})
	}
}

// requireRoot skips tests that mount: they need root and /dev/fuse.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE without fusermount needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE in this kernel: %v", err)
	}
}

// mountTree mounts src on a temporary directory until the test ends, then
// closes src's files.
func mountTree(t testing.TB, src *testSource, opts fusefs.Options) *fusefs.Tree {
	t.Helper()
	requireRoot(t)
	tree, err := fusefs.Mount(filepath.Join(t.TempDir(), "mnt"), src, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tree.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		src.closeFiles()
	})
	return tree
}

// modes are the ways the live disk can be read: direct I/O from ReadAt or
// from a Backed file, and through the page cache.
var modes = []struct {
	name   string
	opts   fusefs.Options
	backed bool
}{
	{"direct", fusefs.Options{}, false},
	{"direct backed", fusefs.Options{}, true},
	{"cache", fusefs.Options{LiveCache: true}, false},
}
