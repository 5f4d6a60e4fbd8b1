package daemon

import (
	"testing"
	"time"

	"github.com/cairn-storage/cairn/nbd"
)

// BenchmarkNBDObserver is what the daemon's metrics cost one NBD request:
// its counters' atomic adds and its latency histogram's observation
// (docs/performance.md, "Metrics").
//
//	go test ./daemon -run '^$' -bench NBDObserver -cpu 1,2
func BenchmarkNBDObserver(b *testing.B) {
	o := newIOMetrics().observeNBD("d")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			o.Request(nbd.CommandRead, 4096, 20*time.Microsecond)
		}
	})
}
