package cow

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/store"
)

// Benchmarks of the write path and snapshot mechanics. Results and the
// commands that made them are in docs/performance.md:
//
//	go test -run XXX -bench . -benchtime 2s ./cow

func benchDisk(b *testing.B, size int64, withStore bool, hooks *testHooks) *Volume {
	b.Helper()
	dir := b.TempDir()
	path := filepath.Join(dir, "live.raw")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		b.Fatal(err)
	}
	opts := Options{BlockSize: testBS, Logger: slog.New(slog.DiscardHandler), hooks: hooks}
	if withStore {
		st, err := store.Open(store.Options{Dir: filepath.Join(dir, "store")})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		opts.Store, opts.DiskID, opts.TrackPrefix = st, 1, filepath.Join(dir, "track")
	}
	v, err := Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v
}

// randomWrites4K runs b.N writes of 4 KiB at random places of a size-byte
// volume on parallelism goroutines per core (stream picks the sequence).
func randomWrites4K(b *testing.B, v *Volume, size int64, parallelism int, stream uint64) {
	ctx := context.Background()
	b.SetBytes(4096)
	b.SetParallelism(parallelism)
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), stream))
		buf := make([]byte, 4096)
		for pb.Next() {
			off := rng.Int64N(size/4096) * 4096
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWrite4K: 4 KiB random writes through the volume, with durable
// change tracking (store) and with in-memory tracking only, on 4
// goroutines. The first write to each block of an epoch pays a tracker sync.
func BenchmarkWrite4K(b *testing.B) {
	for _, tracked := range []bool{false, true} {
		b.Run(fmt.Sprintf("durable-tracking=%v", tracked), func(b *testing.B) {
			const size = 1 << 30
			v := benchDisk(b, size, tracked, nil)
			randomWrites4K(b, v, size, 4, 1)
		})
	}
}

// BenchmarkSnapshotHold: how long writes are held while a snapshot seals,
// with 4 writers running; reports the p50 and p99 hold.
func BenchmarkSnapshotHold(b *testing.B) {
	const size = 256 << 20
	v := benchDisk(b, size, true, nil)
	ctx := context.Background()
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			buf := make([]byte, 4096)
			for !stop.Load() {
				if err := v.WriteAt(ctx, buf, rng.Int64N(size/4096)*4096, false); err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	var holds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		in, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: fmt.Sprintf("h%d", i)})
		if err != nil {
			b.Fatal(err)
		}
		holds = append(holds, in.Hold)
		if len(v.Snapshots()) > 8 {
			first := v.Snapshots()[0].Name
			if err := v.WaitReady(ctx, first); err != nil {
				b.Fatal(err)
			}
			if _, err := v.DeleteSnapshot(ctx, first); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
	slices.Sort(holds)
	b.ReportMetric(float64(holds[len(holds)/2].Microseconds()), "p50-hold-µs")
	b.ReportMetric(float64(holds[len(holds)*99/100].Microseconds()), "p99-hold-µs")
}

// BenchmarkCopyOut: copy-out throughput of a snapshot of 256 MiB of
// freshly written data (random, so nothing dedups or compresses).
func BenchmarkCopyOut(b *testing.B) {
	const size = 256 << 20
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		v := benchDisk(b, size, true, nil)
		buf := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(uint64(i), 3))
		for off := int64(0); off < size; off += int64(len(buf)) {
			for j := 0; j < len(buf); j += 8 {
				v := rng.Uint64()
				for k := 0; k < 8; k++ {
					buf[j+k] = byte(v >> (8 * k))
				}
			}
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(size)
		b.StartTimer()
		if _, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: "full"}); err != nil {
			b.Fatal(err)
		}
		if err := v.WaitReady(ctx, "full"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteWhileCopying: 4 KiB random writes (32 goroutines) over a
// 4 GiB disk whose every block is pending for a copying first snapshot,
// next to the same disk with no snapshot. "held" keeps the copy-out
// worker from running (the cost of redirecting alone).
func BenchmarkWriteWhileCopying(b *testing.B) {
	for _, mode := range []string{"no-snapshot", "redirect", "redirect-held"} {
		b.Run(mode, func(b *testing.B) {
			const size = 4 << 30
			var hooks testHooks
			v := benchDisk(b, size, true, &hooks)
			ctx := context.Background()
			one := []byte{1}
			for off := int64(0); off < size; off += testBS {
				if err := v.WriteAt(ctx, one, off, false); err != nil {
					b.Fatal(err)
				}
			}
			if mode != "no-snapshot" {
				if mode == "redirect-held" {
					holdCopyOut(b, &hooks)
				}
				if _, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: "s", Kind: "manual"}); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			randomWrites4K(b, v, size, 16, 2) // 32 writers on 2 cores
		})
	}
}
