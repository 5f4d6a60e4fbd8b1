package fusefs_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/fusefs"
)

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// TestTreeFollowsSource adds and removes disks and snapshots in the Source
// and checks the tree at once: names are never cached. A grown disk's size
// shows after Tree.Invalidate (attributes are cached).
func TestTreeFollowsSource(t *testing.T) {
	requireRoot(t)
	src := newTestSource()
	dir := t.TempDir()
	src.addDisk("a", newTestFile(t, dir, 1<<20))
	tree := mountTree(t, src, fusefs.Options{})
	root := tree.Dir()

	if got := readDir(t, root); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("root lists %v, want [a]", got)
	}
	if got := readDir(t, filepath.Join(root, "a")); !slices.Equal(got, []string{"disk.raw", "scratch", "snapshots"}) {
		t.Fatalf("disk directory lists %v", got)
	}
	steps := []struct {
		name    string
		change  func()
		present []string
		absent  []string
	}{
		{"add disk", func() { src.addDisk("b", newTestFile(t, dir, 1<<20)) },
			[]string{livePath(tree, "b")}, nil},
		{"add snapshot", func() { src.addSnapshot("b", "s1", newTestFile(t, dir, 1<<20)) },
			[]string{snapPath(tree, "b", "s1"), scratchPath(tree, "b", "s1")}, nil},
		{"remove snapshot", func() { src.removeSnapshot("b", "s1") },
			nil, []string{snapPath(tree, "b", "s1"), scratchPath(tree, "b", "s1")}},
		{"remove disk", func() { src.removeDisk("a") },
			nil, []string{livePath(tree, "a"), filepath.Join(root, "a")}},
	}
	for _, s := range steps {
		// Look everything up first, so the kernel could have it cached.
		for _, p := range append(s.present, s.absent...) {
			os.Stat(p)
		}
		s.change()
		for _, p := range s.present {
			if ok, err := exists(p); !ok {
				t.Errorf("%s: %s missing (%v)", s.name, p, err)
			}
		}
		for _, p := range s.absent {
			if ok, err := exists(p); ok || err != nil {
				t.Errorf("%s: %s still there (%v)", s.name, p, err)
			}
		}
	}
	if got := readDir(t, root); !slices.Equal(got, []string{"b"}) {
		t.Errorf("root lists %v, want [b]", got)
	}

	src.setSize("b", 2<<20)
	tree.Invalidate("b")
	if fi, err := os.Stat(livePath(tree, "b")); err != nil || fi.Size() != 2<<20 {
		t.Errorf("after a grow and Invalidate: %v, size %d", err, fi.Size())
	}
}

// TestDeletedWhileOpen: a handle on a disk that is deleted keeps reading
// the device it opened until it closes; a new disk of the same name is a new
// file with its own content.
func TestDeletedWhileOpen(t *testing.T) {
	tree, src, backing := oneDisk(t, fusefs.Options{LiveCache: true})
	old := randomBytes(4096, 20)
	if _, err := backing.f.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(livePath(tree, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	src.removeDisk("d")
	tree.Invalidate("d")
	if ok, _ := exists(livePath(tree, "d")); ok {
		t.Fatal("deleted disk still visible")
	}
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, old) {
		t.Errorf("read through the open handle: %v, equal %v", err, bytes.Equal(got, old))
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != diskSize {
		t.Errorf("fstat of the open handle: %v", err)
	}

	recreated := newTestFile(t, t.TempDir(), diskSize)
	fresh := randomBytes(4096, 21)
	if _, err := recreated.f.WriteAt(fresh, 0); err != nil {
		t.Fatal(err)
	}
	src.addDisk("d", recreated)
	data, err := readAt(livePath(tree, "d"), 0, 4096)
	if err != nil || !bytes.Equal(data, fresh) {
		t.Errorf("recreated disk: %v, shows its own content %v", err, bytes.Equal(data, fresh))
	}
	f.Close()
	select { // the kernel sends RELEASE after close returns
	case <-backing.released:
	case <-time.After(10 * time.Second):
		t.Errorf("the handle of the deleted disk was not released 10s after close")
	}
}

func readAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p := make([]byte, n)
	_, err = f.ReadAt(p, off)
	return p, err
}

// TestChanged: with LiveCache, a change behind the tree's back stays
// invisible (the page cache holds the old data) until Tree.Changed; with
// direct I/O it is visible at once.
func TestChanged(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			tree, _, backing := oneDisk(t, mode.opts)
			backing.backed.Store(mode.backed)
			old, fresh := randomBytes(8192, 30), randomBytes(8192, 31)
			if _, err := backing.f.WriteAt(old, 64<<10); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(livePath(tree, "d"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := make([]byte, 8192)
			if _, err := f.ReadAt(got, 64<<10); err != nil || !bytes.Equal(got, old) {
				t.Fatalf("first read: %v", err)
			}
			if _, err := backing.f.WriteAt(fresh, 64<<10); err != nil { // an "NBD write"
				t.Fatal(err)
			}
			if _, err := f.ReadAt(got, 64<<10); err != nil {
				t.Fatal(err)
			}
			if cached := bytes.Equal(got, old); cached != mode.opts.LiveCache {
				t.Fatalf("before Changed: served from the page cache = %v, want %v", cached, mode.opts.LiveCache)
			}
			tree.Changed("d", 64<<10, 8192)
			if _, err := f.ReadAt(got, 64<<10); err != nil || !bytes.Equal(got, fresh) {
				t.Errorf("after Changed: %v, sees the new data %v", err, bytes.Equal(got, fresh))
			}
		})
	}
}

// TestHookCoherent plays the daemon: the volume calls the tree's hook on
// every write, while writes arrive both through FUSE and behind it (NBD),
// and a read-only handle (which keeps the page cache) reads each block
// back. Afterwards it shows the last write of each block.
func TestHookCoherent(t *testing.T) {
	tree, _, backing := oneDisk(t, fusefs.Options{LiveCache: true})
	hook := tree.Hook("d")
	backing.onWrite.Store(&hook)
	f, err := os.OpenFile(livePath(tree, "d"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := os.Open(livePath(tree, "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const block, blocks = 64 << 10, 64
	want := make([][]byte, blocks)
	var wg sync.WaitGroup
	for w := range 2 { // block b: written by FUSE if b is even, else "by NBD"
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				for b := w; b < blocks; b += 2 {
					p := randomBytes(block, uint64(round*blocks+b))
					var err error
					if w == 0 {
						_, err = f.WriteAt(p, int64(b*block))
					} else {
						err = backing.WriteAt(context.Background(), p, int64(b*block), false)
					}
					if err != nil {
						t.Error(err)
						return
					}
					want[b] = p
					// Read it back through FUSE: caches the pages.
					got := make([]byte, block)
					if _, err := r.ReadAt(got, int64(b*block)); err != nil || !bytes.Equal(got, p) {
						t.Errorf("block %d round %d: read back through FUSE differs (%v)", b, round, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	for b := range blocks {
		got := make([]byte, block)
		if _, err := r.ReadAt(got, int64(b*block)); err != nil || !bytes.Equal(got, want[b]) {
			t.Errorf("block %d: final read differs (%v)", b, err)
		}
	}
}
