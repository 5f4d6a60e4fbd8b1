package fusefs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/fusefs"
)

const diskSize = 32 << 20

func randomBytes(n int, seed uint64) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// oneDisk mounts a tree with disk "d" of diskSize bytes.
func oneDisk(t *testing.T, opts fusefs.Options) (*fusefs.Tree, *testSource, *testFile) {
	t.Helper()
	requireRoot(t)
	src := newTestSource()
	f := newTestFile(t, t.TempDir(), diskSize)
	src.addDisk("d", f)
	return mountTree(t, src, opts), src, f
}

func livePath(tree *fusefs.Tree, disk string) string {
	return filepath.Join(tree.Dir(), disk, "disk.raw")
}

func snapPath(tree *fusefs.Tree, disk, snap string) string {
	return filepath.Join(tree.Dir(), disk, "snapshots", snap+".raw")
}

func TestLiveReadWrite(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			tree, _, backing := oneDisk(t, mode.opts)
			backing.backed.Store(mode.backed)
			f, err := os.OpenFile(livePath(tree, "d"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, c := range []struct {
				name    string
				off     int64
				len     int
				written int
				err     error
			}{
				{"aligned 4k", 0, 4096, 4096, nil},
				{"unaligned", 4095, 1000, 1000, nil},
				{"larger than one request", 1<<20 + 7, 3 << 20, 3 << 20, nil},
				{"across the end: short", diskSize - 100, 200, 100, nil},
				{"past the end", diskSize, 10, 0, syscall.ENOSPC},
			} {
				data := randomBytes(c.len, uint64(i))
				// One pwrite, to see the short count os.File would hide.
				n, err := unix.Pwrite(int(f.Fd()), data, c.off)
				if n < 0 {
					n = 0
				}
				if n != c.written || !errors.Is(err, c.err) {
					t.Fatalf("%s: WriteAt = %d, %v; want %d, %v", c.name, n, err, c.written, c.err)
				}
				got := make([]byte, c.written)
				if _, err := f.ReadAt(got, c.off); err != nil {
					t.Fatalf("%s: ReadAt: %v", c.name, err)
				}
				if !bytes.Equal(got, data[:c.written]) {
					t.Errorf("%s: read back differs from what was written", c.name)
				}
				if !bytes.Equal(backing.backing(t, c.off, int64(c.written)), data[:c.written]) {
					t.Errorf("%s: backing file differs from what was written", c.name)
				}
			}
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != diskSize || fi.Mode() != 0o644 {
				t.Errorf("stat: size %d mode %v; want %d -rw-r--r--", fi.Size(), fi.Mode(), diskSize)
			}
		})
	}
}

func TestTruncateRefused(t *testing.T) {
	tree, _, backing := oneDisk(t, fusefs.Options{})
	path := livePath(tree, "d")
	data := randomBytes(4096, 1)
	if _, err := backing.f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		do   func() error
		want error
	}{
		{"truncate to zero", func() error { return os.Truncate(path, 0) }, syscall.EPERM},
		{"grow", func() error { return os.Truncate(path, 2*diskSize) }, syscall.EPERM},
		{"open O_TRUNC", func() error {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
			if err == nil {
				f.Close()
			}
			return err
		}, syscall.EPERM},
		{"same size", func() error { return os.Truncate(path, diskSize) }, nil},
		{"chmod", func() error { return os.Chmod(path, 0o600) }, syscall.EPERM},
	} {
		if err := c.do(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if !bytes.Equal(backing.backing(t, 0, 4096), data) {
		t.Error("refused truncation changed the data")
	}
}

func TestSnapshotReadOnly(t *testing.T) {
	tree, src, _ := oneDisk(t, fusefs.Options{})
	snap := newTestFile(t, t.TempDir(), diskSize)
	data := randomBytes(1<<20, 2)
	if _, err := snap.f.WriteAt(data, 5<<20); err != nil {
		t.Fatal(err)
	}
	src.addSnapshot("d", "s1", snap)
	path := snapPath(tree, "d", "s1")

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o444 || fi.Size() != diskSize {
		t.Errorf("snapshot file: mode %v size %d; want -r--r--r-- %d", fi.Mode(), fi.Size(), diskSize)
	}
	got := make([]byte, len(data))
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 5<<20); err != nil || !bytes.Equal(got, data) {
		t.Errorf("snapshot read: %v, equal %v", err, bytes.Equal(got, data))
	}
	for _, c := range []struct {
		name string
		do   func() error
	}{
		{"open O_RDWR", func() error { return openClose(path, os.O_RDWR) }},
		{"open O_WRONLY", func() error { return openClose(path, os.O_WRONLY) }},
		{"truncate", func() error { return os.Truncate(path, 0) }},
		{"touch", func() error { return os.Chtimes(path, fi.ModTime(), fi.ModTime()) }},
	} {
		if err := c.do(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", c.name, err)
		}
	}
}

func openClose(path string, flag int) error {
	f, err := os.OpenFile(path, flag, 0)
	if err == nil {
		f.Close()
	}
	return err
}

func TestSeekDataHole(t *testing.T) {
	tree, _, backing := oneDisk(t, fusefs.Options{})
	// Data at [1M, 1M+64k) and [8M, 9M); holes elsewhere.
	for _, r := range [][2]int64{{1 << 20, 64 << 10}, {8 << 20, 1 << 20}} {
		if _, err := backing.f.WriteAt(randomBytes(int(r[1]), 3), r[0]); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(livePath(tree, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		whence int
		off    int64
		want   int64
		err    error
	}{
		{unix.SEEK_DATA, 0, 1 << 20, nil},
		{unix.SEEK_HOLE, 0, 0, nil},
		{unix.SEEK_DATA, 1 << 20, 1 << 20, nil},
		{unix.SEEK_HOLE, 1 << 20, 1<<20 + 64<<10, nil},
		{unix.SEEK_DATA, 1<<20 + 64<<10, 8 << 20, nil},
		{unix.SEEK_HOLE, 8<<20 + 1, 9 << 20, nil},
		{unix.SEEK_DATA, 9 << 20, 0, syscall.ENXIO},
		{unix.SEEK_HOLE, 9 << 20, 9 << 20, nil},
		{unix.SEEK_DATA, diskSize, 0, syscall.ENXIO},
		{unix.SEEK_HOLE, diskSize, 0, syscall.ENXIO},
	} {
		got, err := unix.Seek(int(f.Fd()), c.off, c.whence)
		if !errors.Is(err, c.err) || (err == nil && got != c.want) {
			t.Errorf("lseek(%d, whence %d) = %d, %v; want %d, %v", c.off, c.whence, got, err, c.want, c.err)
		}
	}
}

func TestFallocate(t *testing.T) {
	tree, _, backing := oneDisk(t, fusefs.Options{})
	f, err := os.OpenFile(livePath(tree, "d"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const keep = unix.FALLOC_FL_KEEP_SIZE
	for _, c := range []struct {
		name     string
		mode     uint32
		off, len int64
		err      error
		trim     [2]int64 // the Trim expected, zero for none
		zeroed   bool
	}{
		{"punch hole", unix.FALLOC_FL_PUNCH_HOLE | keep, 64 << 10, 128 << 10, nil, [2]int64{64 << 10, 128 << 10}, true},
		{"punch past the end", unix.FALLOC_FL_PUNCH_HOLE | keep, diskSize - 4096, 8192, nil, [2]int64{diskSize - 4096, 4096}, true},
		{"zero range", unix.FALLOC_FL_ZERO_RANGE | keep, 1 << 20, 4096, nil, [2]int64{}, true},
		{"zero range growing", unix.FALLOC_FL_ZERO_RANGE, diskSize - 4096, 8192, syscall.EFBIG, [2]int64{}, false},
		{"allocate", 0, 0, 4096, syscall.EOPNOTSUPP, [2]int64{}, false},
		{"collapse", unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096, syscall.EOPNOTSUPP, [2]int64{}, false},
	} {
		pattern := randomBytes(int(c.len), 4)
		if _, err := f.WriteAt(pattern[:min(c.len, diskSize-c.off)], c.off); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		before := len(backing.trimmed())
		err := unix.Fallocate(int(f.Fd()), c.mode, c.off, c.len)
		if !errors.Is(err, c.err) {
			t.Errorf("%s: fallocate: %v, want %v", c.name, err, c.err)
		}
		trims := backing.trimmed()[before:]
		switch {
		case c.trim == [2]int64{} && len(trims) != 0:
			t.Errorf("%s: unexpected Trim %v", c.name, trims)
		case c.trim != [2]int64{} && (len(trims) != 1 || trims[0] != c.trim):
			t.Errorf("%s: Trims %v, want [%v]", c.name, trims, c.trim)
		}
		n := min(c.len, diskSize-c.off)
		got := make([]byte, n)
		if _, err := f.ReadAt(got, c.off); err != nil {
			t.Fatal(err)
		}
		if want := pattern[:n]; c.zeroed {
			want = make([]byte, n)
			if !bytes.Equal(got, want) {
				t.Errorf("%s: range does not read as zeros", c.name)
			}
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s: a refused fallocate changed the data", c.name)
		}
	}
}

func TestFsyncFlushes(t *testing.T) {
	tree, _, backing := oneDisk(t, fusefs.Options{})
	f, err := os.OpenFile(livePath(tree, "d"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("durable"), 0); err != nil {
		t.Fatal(err)
	}
	before := backing.flushes.Load()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if got := backing.flushes.Load() - before; got != 2 {
		t.Errorf("fsync + fdatasync reached Flush %d times, want 2", got)
	}
}

// alignedBuffer returns n bytes aligned to a page, for O_DIRECT.
func alignedBuffer(t *testing.T, n int) []byte {
	t.Helper()
	p, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(p) })
	if uintptr(unsafe.Pointer(&p[0]))%4096 != 0 {
		t.Fatal("mmap returned an unaligned buffer")
	}
	return p
}

func TestODirect(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			tree, _, backing := oneDisk(t, mode.opts)
			backing.backed.Store(mode.backed)
			f, err := os.OpenFile(livePath(tree, "d"), os.O_RDWR|syscall.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, c := range []struct {
				off int64
				len int
			}{{4 << 20, 1 << 20}, {12 << 10, 4096}, {20 << 20, 4 << 20}} {
				buf := alignedBuffer(t, c.len)
				copy(buf, randomBytes(c.len, uint64(10+i)))
				if n, err := f.WriteAt(buf, c.off); err != nil || n != c.len {
					t.Fatalf("O_DIRECT write %d at %d: %d, %v", c.len, c.off, n, err)
				}
				got := alignedBuffer(t, c.len)
				if n, err := f.ReadAt(got, c.off); err != nil || n != c.len {
					t.Fatalf("O_DIRECT read %d at %d: %d, %v", c.len, c.off, n, err)
				}
				if !bytes.Equal(got, buf) || !bytes.Equal(backing.backing(t, c.off, int64(c.len)), buf) {
					t.Errorf("O_DIRECT %d at %d: data differs", c.len, c.off)
				}
			}
			// The 4 MiB requests reached the device in pieces of MaxIO.
			if r, w := backing.maxRead.Load(), backing.maxWrite.Load(); !mode.backed && r != fusefs.MaxIO || w != fusefs.MaxIO {
				t.Errorf("largest request: read %d, write %d; want %d", r, w, fusefs.MaxIO)
			}
		})
	}
}

// TestMountSettings: the kernel was told 1 MiB requests and readahead.
func TestMountSettings(t *testing.T) {
	tree, _, _ := oneDisk(t, fusefs.Options{})
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(info), "\n") {
		if strings.Contains(l, " "+tree.Dir()+" ") {
			line = l
		}
	}
	if !strings.Contains(line, " - "+fusefs.FSType+" ") || !strings.Contains(line, "max_read=1048576") {
		t.Errorf("mount table line %q: want %s with max_read=1048576", line, fusefs.FSType)
	}
	var st unix.Stat_t
	if err := unix.Stat(tree.Dir(), &st); err != nil {
		t.Fatal(err)
	}
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil || strings.TrimSpace(string(ra)) != "1024" {
		t.Errorf("readahead: %q, %v; want 1024 KiB", ra, err)
	}
	// No program the daemon starts may inherit the FUSE connection.
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, e := range fds {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == "/dev/fuse" {
			fd, _ := strconv.Atoi(e.Name())
			if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("/dev/fuse descriptor %d is inherited by programs started (flags %#x, %v)", fd, flags, err)
			}
		}
	}
}

func TestStatfs(t *testing.T) {
	tree, _, _ := oneDisk(t, fusefs.Options{})
	var st unix.Statfs_t
	if err := unix.Statfs(tree.Dir(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Bsize != 4096 || int64(st.Blocks)*4096 != diskSize || st.Bavail != 0 || st.Namelen != 255 {
		t.Errorf("statfs: bsize %d blocks %d avail %d namelen %d", st.Bsize, st.Blocks, st.Bavail, st.Namelen)
	}
	if _, err := os.Stat(filepath.Join(tree.Dir(), "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat of a missing disk: %v", err)
	}
}

// TestNamesRefused: the tree's names change only through the API. rm,
// rmdir, mv, ln, ln -s, mkdir, mknod and creating a file fail with EPERM
// everywhere in a real mount, and the disk and its snapshot stay (go-fuse
// alone answers unlink and rmdir with success and drops the name).
func TestNamesRefused(t *testing.T) {
	tree, src, _ := oneDisk(t, fusefs.Options{})
	src.addSnapshot("d", "s1", newTestFile(t, t.TempDir(), diskSize))
	live, snap := livePath(tree, "d"), snapPath(tree, "d", "s1")
	diskDir, snapDir := filepath.Dir(live), filepath.Dir(snap)
	for _, c := range []struct {
		name string
		do   func() error
	}{
		{"rm disk.raw", func() error { return os.Remove(live) }},
		{"rm snapshot", func() error { return os.Remove(snap) }},
		{"rmdir disk", func() error { return syscall.Rmdir(diskDir) }},
		{"rmdir snapshots", func() error { return syscall.Rmdir(snapDir) }},
		{"mv disk.raw", func() error { return os.Rename(live, filepath.Join(diskDir, "other.raw")) }},
		{"mv snapshot", func() error { return os.Rename(snap, filepath.Join(snapDir, "s2.raw")) }},
		{"mv disk dir", func() error { return os.Rename(diskDir, filepath.Join(tree.Dir(), "e")) }},
		{"ln", func() error { return os.Link(live, filepath.Join(diskDir, "hard.raw")) }},
		{"ln -s", func() error { return os.Symlink(live, filepath.Join(diskDir, "soft.raw")) }},
		{"mkdir", func() error { return os.Mkdir(filepath.Join(tree.Dir(), "e"), 0o755) }},
		{"mknod", func() error { return syscall.Mknod(filepath.Join(diskDir, "fifo"), syscall.S_IFIFO|0o644, 0) }},
		{"create", func() error { return openClose(filepath.Join(snapDir, "new.raw"), os.O_CREATE|os.O_WRONLY) }},
	} {
		if err := c.do(); !errors.Is(err, syscall.EPERM) {
			t.Errorf("%s: %v, want EPERM", c.name, err)
		}
	}
	for _, p := range []string{live, snap} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after the refusals: %v", err)
		}
	}
	entries, err := os.ReadDir(diskDir)
	if err != nil || len(entries) != 3 {
		t.Errorf("disk directory after the refusals: %v, %v; want disk.raw, scratch, snapshots", entries, err)
	}
}
