package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(Options{Dir: b.TempDir(), ReserveBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// uniqueBlock makes block n of a kind: random (incompressible) or text
// (compresses about 4:1), distinct for every n so nothing dedups.
func uniqueBlock(kind string, n, size int) []byte {
	var data []byte
	if kind == "random" {
		data = randomBlock(rand.New(rand.NewPCG(uint64(n), 1)), size)
	} else {
		data = textBlock(n, size)
	}
	binary.LittleEndian.PutUint64(data, uint64(n))
	return data
}

// BenchmarkPutEntries measures copy-out: 64 blocks of 64 KiB per call,
// hashed, compressed when it helps, committed (no Sync).
func BenchmarkPutEntries(b *testing.B) {
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) { benchPut(b, kind, 64, false) })
	}
}

// BenchmarkPutEntriesSync is copy-out as cow does it: 32 blocks of 64 KiB
// per call, each call followed by Sync.
func BenchmarkPutEntriesSync(b *testing.B) {
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) { benchPut(b, kind, 32, true) })
	}
}

// benchPut stores batch new 64 KiB blocks of kind per iteration. Besides
// MB/s and allocations it reports the process's CPU time per GiB stored
// over the loop, so that Badger's background goroutines (flushes,
// compactions, value-log writes) count too: cpu-s/GiB in all, and
// sys-s/GiB of it in the kernel (mostly page faults on Badger's
// memory-mapped value log, and Sync's writeback).
func benchPut(b *testing.B, kind string, batch int, sync bool) {
	const size = 64 << 10
	s := benchStore(b)
	pool := make([][]byte, 4*batch)
	for i := range pool {
		pool[i] = uniqueBlock(kind, i, size)
	}
	ctx := context.Background()
	b.SetBytes(int64(batch * size))
	b.ReportAllocs()
	user0, sys0 := cpuTimes(b)
	for i := 0; b.Loop(); i++ {
		entries := make([]Entry, batch)
		for j := range entries {
			n := i*batch + j
			data := pool[n%len(pool)]
			binary.LittleEndian.PutUint64(data[8:], uint64(n)) // new content each time
			entries[j] = Entry{uint64(n), data}
		}
		if err := s.PutEntries(ctx, 1, 1, entries); err != nil {
			b.Fatal(err)
		}
		if sync {
			if err := s.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	}
	user1, sys1 := cpuTimes(b)
	gib := float64(b.N*batch*size) / (1 << 30)
	b.ReportMetric((user1-user0+sys1-sys0).Seconds()/gib, "cpu-s/GiB")
	b.ReportMetric((sys1-sys0).Seconds()/gib, "sys-s/GiB")
}

// cpuTimes is the user and system CPU time of the whole process so far.
func cpuTimes(b *testing.B) (user, sys time.Duration) {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// BenchmarkEncodeChunk is the compression step of PutEntries alone, on a
// 64 KiB block: S2 when it helps, raw otherwise.
func BenchmarkEncodeChunk(b *testing.B) {
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) {
			raw := uniqueBlock(kind, 1, 64<<10)
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				_, buf := encodeChunk(raw)
				releaseChunkBuf(buf)
			}
		})
	}
}

// BenchmarkReadBlock reads 64 KiB blocks back (page-cached store):
// lookup, value-log read, decompression, BLAKE3 verification.
func BenchmarkReadBlock(b *testing.B) {
	const blocks, size = 512, 64 << 10
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) {
			s := benchStore(b)
			entries := make([]Entry, blocks)
			for i := range entries {
				entries[i] = Entry{uint64(i), uniqueBlock(kind, i, size)}
			}
			put(b, s, 1, 1, entries...)
			ctx := context.Background()
			buf := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 1))
			b.SetBytes(size)
			b.ResetTimer()
			for b.Loop() {
				if _, err := s.ReadBlock(ctx, 1, uint64(rng.IntN(blocks)), 1, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookupDeepChain reads through chains of 1, 16 and 64 snapshots
// that each rewrote every block: one seek per read whatever the depth,
// so the figures should stay flat.
func BenchmarkLookupDeepChain(b *testing.B) {
	const blocks, size = 256, 4 << 10
	for _, depth := range []int{1, 16, 64} {
		s := benchStore(b)
		for seq := 1; seq <= depth; seq++ {
			entries := make([]Entry, blocks)
			for i := range entries {
				entries[i] = Entry{uint64(i), uniqueBlock("text", seq*blocks+i, size)}
			}
			put(b, s, 1, uint64(seq), entries...)
		}
		ctx := context.Background()
		for _, at := range []struct {
			name string
			seq  uint64
		}{{"oldest", 1}, {"newest", uint64(depth)}} {
			b.Run(fmt.Sprintf("depth=%d/lookup/%s", depth, at.name), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(2, 2))
				for b.Loop() {
					if _, found, err := s.Lookup(ctx, 1, uint64(rng.IntN(blocks)), at.seq); err != nil || !found {
						b.Fatal(found, err)
					}
				}
			})
			b.Run(fmt.Sprintf("depth=%d/read/%s", depth, at.name), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(2, 2))
				buf := make([]byte, size)
				b.SetBytes(size)
				for b.Loop() {
					if _, err := s.ReadBlock(ctx, 1, uint64(rng.IntN(blocks)), at.seq, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
