package fusefs_test

// Tests of the live disk's page cache (Options.LiveCache): pages stay
// cached across reads and opens, and every change that reaches the volume
// other than through the tree (as an NBD write does) drops them before it
// returns. The volume's write hook is cow.Options.OnWrite, wired to
// Tree.Hook as cairnd wires it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/fusefs"
)

// cachedDisk mounts disk "d" with LiveCache and the volume's write hook
// wired to the tree.
func cachedDisk(t *testing.T) (*fusefs.Tree, *testFile) {
	t.Helper()
	tree, _, backing := oneDisk(t, fusefs.Options{LiveCache: true})
	hook := tree.Hook("d")
	backing.onWrite.Store(&hook)
	return tree, backing
}

// cachedPages counts the pages of [off, off+length) of f (a FUSE file)
// that sit in the kernel's page cache, through mincore on a mapping that
// is never touched.
func cachedPages(t *testing.T, f *os.File, off, length int64) int {
	t.Helper()
	mem, err := unix.Mmap(int(f.Fd()), off, int(length), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer unix.Munmap(mem)
	vec := make([]byte, (length+4095)/4096)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// failAfter fails the test if it is still running after d: a FUSE
// request that waits for itself never returns. It aborts the tree's FUSE
// connection first (a thread blocked on a page lock would keep the test
// process from exiting), then panics.
func failAfter(t *testing.T, tree *fusefs.Tree, d time.Duration, what string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(tree.Dir(), &st); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(d, func() {
		abortFUSE(unix.Minor(st.Dev))
		panic("still waiting after " + d.String() + ": " + what + " (deadlock?); FUSE connection aborted")
	})
	t.Cleanup(func() { timer.Stop() })
}

// abortFUSE aborts FUSE connection conn through fusectl, mounting it if
// it is not.
func abortFUSE(conn uint32) {
	const ctl = "/sys/fs/fuse/connections"
	abort := fmt.Sprintf("%s/%d/abort", ctl, conn)
	if _, err := os.Stat(abort); err != nil {
		unix.Mount("none", ctl, "fusectl", 0, "")
	}
	os.WriteFile(abort, []byte("1"), 0)
}

// openLive opens disk.raw of disk "d" until the test ends: read-only
// handles keep the page cache, writable ones use direct I/O.
func openLive(t *testing.T, tree *fusefs.Tree, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(livePath(tree, "d"), flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func mustRead(t *testing.T, f *os.File, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		t.Fatalf("read %d at %d: %v", n, off, err)
	}
	return p
}

// TestCacheDroppedOnOtherWrites: a range read through FUSE stays in the
// page cache; a write, trim or zero that reaches the volume other than
// through the tree drops it before returning, so the next FUSE read sees
// the new bytes, whether the file stayed open or was closed and reopened
// in between. Without the drop the reads would return the cached old
// bytes.
func TestCacheDroppedOnOtherWrites(t *testing.T) {
	const off, n = 3<<20 + 4096, 256 << 10
	fresh := randomBytes(n, 41)
	zeros := make([]byte, n)
	for _, c := range []struct {
		name   string
		change func(*testFile) error
		want   []byte
	}{
		{"write", func(v *testFile) error { return v.WriteAt(context.Background(), fresh, off, false) }, fresh},
		{"write fua", func(v *testFile) error { return v.WriteAt(context.Background(), fresh, off, true) }, fresh},
		{"trim", func(v *testFile) error { return v.Trim(context.Background(), off, n, false) }, zeros},
		{"zero", func(v *testFile) error { return v.Zero(context.Background(), off, n, block.ZeroNoHole) }, zeros},
		{"zero punching", func(v *testFile) error { return v.Zero(context.Background(), off, n, 0) }, zeros},
	} {
		for _, reopen := range []bool{false, true} {
			name := c.name
			if reopen {
				name += " while closed"
			}
			t.Run(name, func(t *testing.T) {
				tree, backing := cachedDisk(t)
				old := randomBytes(n, 40)
				if _, err := backing.f.WriteAt(old, off); err != nil {
					t.Fatal(err)
				}
				f, err := os.Open(livePath(tree, "d"))
				if err != nil {
					t.Fatal(err)
				}
				defer func() { f.Close() }()
				if !bytes.Equal(mustRead(t, f, off, n), old) {
					t.Fatal("first read differs from the image")
				}
				if got := cachedPages(t, f, off, n); got != n/4096 {
					t.Fatalf("%d of %d pages cached after a read", got, n/4096)
				}
				if reopen {
					f.Close()
					<-backing.released
					if f, err = os.Open(livePath(tree, "d")); err != nil {
						t.Fatal(err)
					}
					if got := cachedPages(t, f, off, n); got != n/4096 {
						t.Fatalf("%d of %d pages cached after close and reopen, want all", got, n/4096)
					}
					f.Close()
					<-backing.released
				}
				if err := c.change(backing); err != nil {
					t.Fatal(err)
				}
				if reopen {
					if f, err = os.Open(livePath(tree, "d")); err != nil {
						t.Fatal(err)
					}
				}
				if got := cachedPages(t, f, off, n); got != 0 {
					t.Errorf("%d pages of the changed range still cached", got)
				}
				if !bytes.Equal(mustRead(t, f, off, n), c.want) {
					t.Error("FUSE read after the change returns old bytes")
				}
			})
		}
	}
}

// TestCacheKeptAroundChanges: a change drops only its own range while the
// file is open; a FUSE write (through a writable handle, which uses direct
// I/O) drops its range from what read-only handles cached, and they read
// it back new.
func TestCacheKeptAroundChanges(t *testing.T) {
	tree, backing := cachedDisk(t)
	failAfter(t, tree, time.Minute, "FUSE writes")
	r, w := openLive(t, tree, os.O_RDONLY), openLive(t, tree, os.O_RDWR)
	const span = 4 << 20
	mustRead(t, r, 0, span)
	if got := cachedPages(t, r, 0, span); got != span/4096 {
		t.Fatalf("%d of %d pages cached after a read", got, span/4096)
	}
	if err := backing.WriteAt(context.Background(), randomBytes(8192, 42), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if got := cachedPages(t, r, 0, span); got != span/4096-2 {
		t.Errorf("%d pages cached after a write of two, want %d", got, span/4096-2)
	}
	data := randomBytes(64<<10, 43)
	if _, err := w.WriteAt(data, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got := cachedPages(t, r, 0, span); got != span/4096-2-16 {
		t.Errorf("%d pages cached after a FUSE write of 16, want %d", got, span/4096-2-16)
	}
	if !bytes.Equal(mustRead(t, r, 2<<20, len(data)), data) || !bytes.Equal(backing.backing(t, 2<<20, int64(len(data))), data) {
		t.Error("FUSE write: read back or image differs")
	}
}

// TestFUSEWritesDoNotWaitForThemselves: writes, fallocate and fsync
// through disk.raw reach the volume, whose hook drops the written range
// from the page cache of read-only handles while the write is in flight;
// that must not wait for the write itself, and reads afterwards, cached
// or not, return what was written.
func TestFUSEWritesDoNotWaitForThemselves(t *testing.T) {
	tree, backing := cachedDisk(t)
	failAfter(t, tree, time.Minute, "FUSE writes through a volume with the hook")
	r, w := openLive(t, tree, os.O_RDONLY), openLive(t, tree, os.O_RDWR)
	for i, c := range []struct {
		off    int64
		n      int
		cached bool // read first through the read-only handle
	}{
		{12<<20 + 100, 1000, false}, // part of a page not cached
		{16<<20 + 4000, 8 << 10, false},
		{0, 4096, true},
		{4095, 3 << 20, true},
		{diskSize - 1000, 1000, true},
		{8 << 20, 1 << 20, false},
	} {
		if c.cached {
			mustRead(t, r, c.off, c.n)
		}
		data := randomBytes(c.n, uint64(50+i))
		if _, err := w.WriteAt(data, c.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mustRead(t, r, c.off, c.n), data) || !bytes.Equal(mustRead(t, w, c.off, c.n), data) ||
			!bytes.Equal(backing.backing(t, c.off, int64(c.n)), data) {
			t.Errorf("write %d at %d: read back or image differs", c.n, c.off)
		}
	}
	mustRead(t, r, 8<<20, 192<<10)
	if err := unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 8<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 8<<20+128<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	got := mustRead(t, r, 8<<20, 192<<10)
	if !bytes.Equal(got[:64<<10], make([]byte, 64<<10)) || !bytes.Equal(got[128<<10:], make([]byte, 64<<10)) {
		t.Error("fallocate'd ranges do not read as zeros through the read-only handle")
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
}

// mmapScript maps [off, off+n) of a file, shared and read-only, and
// answers "sum" on stdin with the SHA-256 of the mapping (its pages fault
// in through FUSE).
// It runs in its own process: a page fault of the test process on its own
// FUSE file can wait for a server goroutine that the Go runtime has
// stopped to collect garbage, while the collector waits for the faulting
// thread.
const mmapScript = `
import hashlib, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, int(sys.argv[3]), mmap.MAP_SHARED, mmap.PROT_READ, offset=int(sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    print(hashlib.sha256(m[:]).hexdigest(), flush=True)
`

// mapper is a process holding a shared mapping of a FUSE file.
type mapper struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startMapper(t *testing.T, path string, off, n int64) *mapper {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	cmd := exec.Command(py, "-c", mmapScript, path, strconv.FormatInt(off, 10), strconv.FormatInt(n, 10))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	m := &mapper{in: in, out: bufio.NewScanner(out)}
	if got := m.ask(t, ""); got != "ready" {
		t.Fatalf("mmap helper: %q", got)
	}
	return m
}

// ask sends cmd (none if empty) and returns the answer.
func (m *mapper) ask(t *testing.T, cmd string) string {
	t.Helper()
	if cmd != "" {
		if _, err := io.WriteString(m.in, cmd+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	if !m.out.Scan() {
		t.Fatalf("mmap helper ended: %v", m.out.Err())
	}
	return m.out.Text()
}

func sum(p []byte) string {
	s := sha256.Sum256(p)
	return hex.EncodeToString(s[:])
}

// TestMmapCoherent: a shared mapping of disk.raw (in another process)
// sees a change made behind the tree, and a FUSE write, once it returns
// (the drop unmaps the pages). A writable handle uses direct I/O, so the
// kernel refuses to map it shared (ENODEV): stores through a mapping
// could not be kept apart from the volume's change tracking otherwise.
func TestMmapCoherent(t *testing.T) {
	tree, backing := cachedDisk(t)
	failAfter(t, tree, time.Minute, "mmap faults")
	const off, n = 1 << 20, 64 << 10
	m := startMapper(t, livePath(tree, "d"), off, n)
	if got := m.ask(t, "sum"); got != sum(make([]byte, n)) { // faults the pages in
		t.Fatal("a fresh disk does not map as zeros")
	}
	fresh := randomBytes(n, 60)
	if err := backing.WriteAt(context.Background(), fresh, off, false); err != nil {
		t.Fatal(err)
	}
	if m.ask(t, "sum") != sum(fresh) {
		t.Error("the mapping still shows the old bytes after a write behind the tree")
	}
	w := openLive(t, tree, os.O_RDWR)
	written := randomBytes(n, 61)
	if _, err := w.WriteAt(written, off); err != nil {
		t.Fatal(err)
	}
	if m.ask(t, "sum") != sum(written) {
		t.Error("the mapping still shows the old bytes after a FUSE write")
	}
	if err := backing.Trim(context.Background(), off, n, false); err != nil {
		t.Fatal(err)
	}
	if m.ask(t, "sum") != sum(make([]byte, n)) {
		t.Error("the mapping still shows the old bytes after a trim behind the tree")
	}
	if mem, err := unix.Mmap(int(w.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		unix.Munmap(mem)
		t.Error("a writable handle can be mapped shared")
	} else if err != unix.ENODEV {
		t.Errorf("shared mapping of a writable handle: %v, want ENODEV", err)
	}
}

// TestPrivateMapOfWritableHandle: a private mapping of a writable handle
// (direct I/O) reads through the page cache too; those pages must not
// show after a change, through a read-only handle opened later.
func TestPrivateMapOfWritableHandle(t *testing.T) {
	tree, backing := cachedDisk(t)
	failAfter(t, tree, time.Minute, "mmap faults")
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	const script = `
import hashlib, mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 65536, mmap.MAP_PRIVATE, mmap.PROT_READ)
print(hashlib.sha256(m[:]).hexdigest())
`
	out, err := exec.Command(py, "-c", script, livePath(tree, "d")).Output()
	if err != nil || strings.TrimSpace(string(out)) != sum(make([]byte, 64<<10)) {
		t.Fatalf("private mapping of a fresh disk: %v, %q", err, out)
	}
	<-backing.released
	fresh := randomBytes(64<<10, 62)
	if err := backing.WriteAt(context.Background(), fresh, 0, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustRead(t, openLive(t, tree, os.O_RDONLY), 0, 64<<10), fresh) {
		t.Error("a read-only handle shows what a private mapping of a writable one read before a write")
	}
}

// versioned fills a block with pages that each say (block, version).
func versioned(block, version uint64, size int) []byte {
	p := make([]byte, size)
	for pg := 0; pg < size; pg += 4096 {
		binary.LittleEndian.PutUint64(p[pg:], block)
		binary.LittleEndian.PutUint64(p[pg+8:], version)
	}
	return p
}

// TestCacheConcurrent: writers behind the tree (writes and zeroes) and
// through FUSE race with FUSE readers on read-only handles (sequential
// 1 MiB reads, which read ahead, and random 4 KiB ones). A read that starts after a change was
// acknowledged must see that change or a later one in every page; at the
// end, the whole file through FUSE equals the image.
func TestCacheConcurrent(t *testing.T) {
	tree, backing := cachedDisk(t)
	failAfter(t, tree, 2*time.Minute, "concurrent reads and writes")
	const block = 64 << 10
	const blocks = diskSize / block
	var (
		version  atomic.Uint64         // of every change, increasing
		acked    [blocks]atomic.Uint64 // newest acknowledged change per block
		lastZero [blocks]atomic.Uint64 // newest zeroing begun per block
	)
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	run := func(fn func(r uint64) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := uint64(0); time.Now().Before(deadline); r++ {
				if err := fn(r); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Writers own disjoint blocks, so each block's versions only grow.
	write := func(owner uint64, fuse *os.File) func(uint64) error {
		return func(r uint64) error {
			b := (r*7919+owner)%(blocks/3)*3 + owner
			v := version.Add(1)
			var err error
			switch {
			case fuse != nil:
				_, err = fuse.WriteAt(versioned(b, v, block), int64(b*block))
			case r%5 == 4:
				lastZero[b].Store(v)
				err = backing.Zero(context.Background(), int64(b*block), block, 0)
			default:
				err = backing.WriteAt(context.Background(), versioned(b, v, block), int64(b*block), false)
			}
			acked[b].Store(v)
			return err
		}
	}
	run(write(0, nil))
	run(write(1, nil))
	run(write(2, openLive(t, tree, os.O_RDWR)))
	// check: every page of p (read at off) holds a change of its block no
	// older than the one acknowledged before the read began.
	check := func(p []byte, off int64, before []uint64) error {
		for pg := 0; pg < len(p); pg += 4096 {
			pos := off + int64(pg)
			b := uint64(pos / block)
			want := before[b-uint64(off/block)]
			holder, got := binary.LittleEndian.Uint64(p[pg:]), binary.LittleEndian.Uint64(p[pg+8:])
			switch {
			case got == 0 && want != 0 && lastZero[b].Load() < want:
				return fmt.Errorf("page at %d reads as zeros after version %d was acknowledged", pos, want)
			case got != 0 && holder != b:
				return fmt.Errorf("page at %d holds block %d's data", pos, holder)
			case got != 0 && got < want:
				return fmt.Errorf("page at %d: version %d read after version %d was acknowledged", pos, got, want)
			}
		}
		return nil
	}
	reader := func(f *os.File, size int, random bool) func(uint64) error {
		p := make([]byte, size)
		return func(r uint64) error {
			off := int64(r*uint64(size)) % diskSize
			if random {
				off = int64(r*104729%(diskSize/4096)) * 4096
			}
			before := make([]uint64, (size+block-1)/block)
			for i := range before {
				before[i] = acked[off/block+int64(i)].Load()
			}
			if _, err := f.ReadAt(p, off); err != nil {
				return err
			}
			return check(p, off, before)
		}
	}
	run(reader(openLive(t, tree, os.O_RDONLY), 1<<20, false))
	run(reader(openLive(t, tree, os.O_RDONLY), 4096, true))
	wg.Wait()
	f := openLive(t, tree, os.O_RDONLY)
	for off := int64(0); off < diskSize; off += 1 << 20 {
		if !bytes.Equal(mustRead(t, f, off, 1<<20), backing.backing(t, off, 1<<20)) {
			t.Errorf("FUSE and the image differ in the MiB at %d", off)
		}
	}
	t.Logf("%d changes", version.Load())
}

// TestCacheRecreatedDisk: a disk deleted and created again under its name
// is a new file, even when the Source dates both to the same instant
// (cairnd keeps Created to the second; the ID tells them apart), so the
// old disk's cached pages never show.
func TestCacheRecreatedDisk(t *testing.T) {
	requireRoot(t)
	src := newTestSource()
	old := newTestFile(t, t.TempDir(), diskSize)
	if _, err := old.f.WriteAt(randomBytes(1<<20, 70), 0); err != nil {
		t.Fatal(err)
	}
	created := time.Now().Truncate(time.Second)
	src.addDiskEntry(fusefs.DiskEntry{Name: "d", Created: created, ID: 1}, old)
	tree := mountTree(t, src, fusefs.Options{LiveCache: true})
	if _, err := readAt(livePath(tree, "d"), 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	<-old.released
	src.removeDisk("d")
	fresh := newTestFile(t, t.TempDir(), diskSize)
	want := randomBytes(1<<20, 71)
	if _, err := fresh.f.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	src.addDiskEntry(fusefs.DiskEntry{Name: "d", Created: created, ID: 2}, fresh)
	if got, err := readAt(livePath(tree, "d"), 0, 1<<20); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the disk created again: %v, reads its own content %v", err, bytes.Equal(got, want))
	}
}
