package fusefs_test

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cairn-storage/cairn/fusefs"
)

const benchSize = 256 << 20

// BenchmarkIO compares I/O through the FUSE file (direct I/O; the same
// with reads spliced from a Backed file; and with LiveCache, whose reads
// go through a read-only handle and the page cache, while writes use a
// writable handle, which is direct I/O all the same) with I/O on its
// backing file directly, one request at a time, buffered as host tools do
// it. The backing file is written first, so reads come from the host's
// page cache and the figures measure the FUSE path, not the disk.
// fuse-cache-first drops the FUSE page cache at the start of each pass
// over the file (the figures are those of a first read); fuse-cache keeps
// it (after the first pass, reads come from it).
//
//	go test ./fusefs -run '^$' -bench IO -benchtime 2s
func BenchmarkIO(b *testing.B) {
	requireRoot(b)
	for _, target := range []struct {
		name      string
		fuse      bool
		backed    bool
		opts      fusefs.Options
		dropPages bool // at the start of each pass
	}{
		{"raw", false, false, fusefs.Options{}, false},
		{"fuse-direct", true, false, fusefs.Options{}, false},
		{"fuse-backed", true, true, fusefs.Options{}, false},
		{"fuse-cache-first", true, true, fusefs.Options{LiveCache: true}, true},
		{"fuse-cache", true, true, fusefs.Options{LiveCache: true}, false},
	} {
		for _, w := range []struct {
			name   string
			bs     int
			write  bool
			random bool
		}{
			{"seq-read-1M", 1 << 20, false, false},
			{"seq-write-1M", 1 << 20, true, false},
			{"rand-read-4k", 4096, false, true},
			{"rand-write-4k", 4096, true, true},
		} {
			b.Run(target.name+"/"+w.name, func(b *testing.B) {
				f, tree := benchFile(b, target.fuse, target.backed, target.opts, w.write)
				buf := randomBytes(w.bs, 7)
				r := rand.New(rand.NewPCG(1, 1))
				blocks := int64(benchSize / w.bs)
				b.SetBytes(int64(w.bs))
				b.ResetTimer()
				for i := range b.N {
					if target.dropPages && int64(i)%blocks == 0 {
						// Each pass starts cold, as one pass over a disk
						// (a backup) would.
						tree.Changed("d", 0, benchSize)
					}
					off := int64(i) % blocks * int64(w.bs)
					if w.random {
						off = r.Int64N(blocks) * int64(w.bs)
					}
					var err error
					if w.write {
						_, err = f.WriteAt(buf, off)
					} else {
						_, err = f.ReadAt(buf, off)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// benchFile returns a filled benchSize-byte file, writable or read-only:
// the backing file itself, or disk.raw over it (with its tree).
func benchFile(b *testing.B, fuse, backed bool, opts fusefs.Options, writable bool) (*os.File, *fusefs.Tree) {
	b.Helper()
	backing := newTestFile(b, b.TempDir(), benchSize)
	backing.backed.Store(backed)
	chunk := randomBytes(1<<20, 8)
	for off := int64(0); off < benchSize; off += int64(len(chunk)) {
		if _, err := backing.f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	path := backing.f.Name()
	var tree *fusefs.Tree
	if !fuse {
		b.Cleanup(func() { backing.f.Close() })
	} else {
		src := newTestSource()
		src.addDisk("d", backing)
		tree = mountTree(b, src, opts)
		path = livePath(tree, "d")
	}
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f, tree
}
