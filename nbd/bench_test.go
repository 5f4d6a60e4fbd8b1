package nbd_test

import (
	"context"
	"fmt"
	"math/bits"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// Benchmarks of the server's own cost: an in-memory backend, the raw
// client over a unix socket, a queue depth of 32 (as fio's nbd engine in
// the comparisons with nbdkit). Allocations are the whole process's,
// client included: the steady state allocates nothing.
//
//	go test ./nbd -run '^$' -bench . -benchmem

const benchQD = 32

func BenchmarkRead4K(b *testing.B)         { benchIO(b, cCmdRead, 4096, true) }
func BenchmarkRead4KSimple(b *testing.B)   { benchIO(b, cCmdRead, 4096, false) }
func BenchmarkRead64K(b *testing.B)        { benchIO(b, cCmdRead, 64<<10, true) }
func BenchmarkRead1M(b *testing.B)         { benchIO(b, cCmdRead, 1<<20, true) }
func BenchmarkWrite4K(b *testing.B)        { benchIO(b, cCmdWrite, 4096, true) }
func BenchmarkWrite1M(b *testing.B)        { benchIO(b, cCmdWrite, 1<<20, true) }
func BenchmarkBlockStatus1M(b *testing.B)  { benchIO(b, cCmdBlockStatus, 1<<20, true) }
func BenchmarkWriteZeroes64K(b *testing.B) { benchIO(b, cCmdWriteZeroes, 64<<10, true) }

// With an Observer (metrics) on the export: what the hook costs the
// server (docs/performance.md, "Metrics").
func BenchmarkRead4KObserved(b *testing.B)  { benchObserved(b, cCmdRead, 4096) }
func BenchmarkWrite4KObserved(b *testing.B) { benchObserved(b, cCmdWrite, 4096) }

// benchObserver does what the daemon's does per request: two atomic adds
// and a histogram bucket's.
type benchObserver struct {
	ops, bytes [8]atomic.Uint64
	buckets    [16]atomic.Uint64
}

func (o *benchObserver) Request(cmd nbd.Command, length uint32, took time.Duration) {
	o.ops[cmd&7].Add(1)
	o.bytes[cmd&7].Add(uint64(length))
	o.buckets[min(bits.Len64(uint64(took/time.Microsecond)), 15)].Add(1)
}

const benchSize = 256 << 20

// dataBackend is an in-memory disk that is all data, and says so without
// allocating (the server clips the one endless extent to each request).
type dataBackend struct{ *blocktest.Memory }

var allData = []block.Extent{{Length: 1 << 62}}

func (dataBackend) Extents(context.Context, int64, int64) ([]block.Extent, error) {
	return allData, nil
}

func benchServe(tb testing.TB) string { return benchServeObserved(tb, nil) }

func benchServeObserved(tb testing.TB, obs nbd.Observer) string {
	mem := blocktest.NewMemory(benchSize)
	exp := &nbd.Export{Name: "m", Device: dataBackend{mem}, Observer: obs}
	sock, _ := nbdtest.Serve(tb, nbdtest.NewExports(exp), nbd.Options{})
	return sock
}

func benchIO(b *testing.B, typ uint16, size uint32, structured bool) {
	benchIOOn(b, benchServe(b), typ, size, structured)
}

func benchObserved(b *testing.B, typ uint16, size uint32) {
	obs := &benchObserver{}
	benchIOOn(b, benchServeObserved(b, obs), typ, size, true)
	// The last replies may reach the client before their requests are
	// recycled (and observed) on the server.
	if n := obs.ops[typ&7].Load(); n+benchQD < uint64(b.N) {
		b.Fatalf("observer saw %d requests of %d", n, b.N)
	}
}

func benchIOOn(b *testing.B, sock string, typ uint16, size uint32, structured bool) {
	c := dial(b, sock)
	if structured {
		c.structuredReplies()
		if typ == cCmdBlockStatus {
			c.setMeta("m", "base:allocation")
		}
	}
	c.goExport("m")
	var payload []byte
	if typ == cCmdWrite {
		payload = make([]byte, size)
		for i := range payload {
			payload[i] = byte(i)
		}
	}
	blocks := uint64(benchSize / size)
	off := func(i int) uint64 { return (uint64(i) * 7919 % blocks) * uint64(size) }
	inflight := min(benchQD, b.N)
	for i := range inflight {
		c.send(typ, 0, uint64(i), off(i), size, payload)
	}
	c.flush()
	if typ != cCmdBlockStatus {
		b.SetBytes(int64(size))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		r := c.reply()
		if r.errno != 0 {
			b.Fatalf("errno %d", r.errno)
		}
		if !r.done() {
			continue
		}
		i++
		if next := i + inflight - 1; next < b.N {
			c.send(typ, 0, uint64(next), off(next), size, payload)
			if c.br.Buffered() == 0 {
				c.flush()
			}
		} else {
			c.flush()
		}
	}
}

// TestSteadyStateAllocs: once warm, a request costs no allocation, in the
// server or in the benchmark client.
func TestSteadyStateAllocs(t *testing.T) {
	for _, tt := range []struct {
		typ        uint16
		size       uint32
		structured bool
	}{
		{cCmdRead, 4096, true},
		{cCmdRead, 4096, false},
		{cCmdRead, 256 << 10, true},
		{cCmdWrite, 4096, true},
		{cCmdWrite, 1 << 20, false},
		{cCmdFlush, 0, true},
	} {
		t.Run(fmt.Sprintf("cmd%d/%d/structured=%v", tt.typ, tt.size, tt.structured), func(t *testing.T) {
			// A server of its own: the teardown of another subtest's
			// connection (and its log line) would count here.
			c := open(t, benchServe(t), "m", tt.structured)
			var payload []byte
			if tt.typ == cCmdWrite {
				payload = make([]byte, tt.size)
			}
			roundTrip := func() {
				c.send(tt.typ, 0, 1, 0, tt.size, payload)
				c.flush()
				for r := c.reply(); !r.done(); r = c.reply() {
				}
			}
			for range 100 {
				roundTrip() // warm pools, workers and buffers
			}
			if n := testing.AllocsPerRun(200, roundTrip); n > 0 {
				t.Fatalf("%v allocations per request", n)
			}
		})
	}
}
