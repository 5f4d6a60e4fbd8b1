package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(Options{Dir: b.TempDir(), MinFreeBytes: 1 << 20})
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
	const batch, size = 64, 64 << 10
	for _, kind := range []string{"random", "text"} {
		b.Run(kind, func(b *testing.B) {
			s := benchStore(b)
			pool := make([][]byte, 4*batch)
			for i := range pool {
				pool[i] = uniqueBlock(kind, i, size)
			}
			ctx := context.Background()
			b.SetBytes(batch * size)
			b.ResetTimer()
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
