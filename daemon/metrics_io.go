package daemon

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/nbd"
)

// I/O metrics, by frontend, disk and operation: operations and bytes
// (atomic adds on counters resolved when the export opens), and one
// latency histogram per frontend and operation.
//   - NBD: the server tells the export's nbd.Observer of each request
//     answered, with its length and the time from its header to its reply
//     (one count per request, however the read was served).
//   - FUSE: each file's device is wrapped in a meteredDevice, which times
//     the device's work. A read spliced from the live image (block.Backed)
//     counts its operation and bytes but no time, since its data moves
//     after the device answers.
// Measured cost: docs/performance.md ("Metrics").

// Frontends.
const (
	frontendNBD  = 0
	frontendFUSE = 1
)

var frontendNames = [...]string{"nbd", "fuse"}

// Operations, as the op label writes them (NBD's WRITE_ZEROES is zero,
// its BLOCK_STATUS extents).
const (
	opRead = iota
	opWrite
	opFlush
	opTrim
	opZero
	opCache
	opExtents
	nOps
)

var opNames = [nOps]string{"read", "write", "flush", "trim", "zero", "cache", "extents"}

// nbdOp maps an NBD command to its operation.
func nbdOp(cmd nbd.Command) (int, bool) {
	switch cmd {
	case nbd.CommandRead:
		return opRead, true
	case nbd.CommandWrite:
		return opWrite, true
	case nbd.CommandFlush:
		return opFlush, true
	case nbd.CommandTrim:
		return opTrim, true
	case nbd.CommandWriteZeroes:
		return opZero, true
	case nbd.CommandCache:
		return opCache, true
	case nbd.CommandBlockStatus:
		return opExtents, true
	}
	return 0, false
}

// ioCounters are one disk's counters on one frontend.
type ioCounters struct {
	ops, bytes [nOps]atomic.Uint64
}

type ioKey struct {
	frontend int
	disk     string
}

// ioMetrics holds the I/O counters and histograms; a prometheus.Collector.
type ioMetrics struct {
	mu       sync.Mutex
	counters map[ioKey]*ioCounters // guarded by mu
	latency  [2][nOps]prometheus.Histogram
}

var (
	descIOOps   = prometheus.NewDesc("cairn_io_operations_total", "I/O operations served, by frontend (nbd, fuse), disk and operation.", []string{"frontend", "disk", "op"}, nil)
	descIOBytes = prometheus.NewDesc("cairn_io_bytes_total", "Bytes read, written, trimmed or zeroed, by frontend, disk and operation.", []string{"frontend", "disk", "op"}, nil)
)

func newIOMetrics() *ioMetrics {
	m := &ioMetrics{counters: map[ioKey]*ioCounters{}}
	for f := range m.latency {
		for op := range m.latency[f] {
			m.latency[f][op] = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_io_duration_seconds",
				Help:        "Time the disk took to serve an I/O operation, by frontend and operation.",
				ConstLabels: prometheus.Labels{"frontend": frontendNames[f], "op": opNames[op]}, Buckets: latencyBuckets})
		}
	}
	return m
}

func (m *ioMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descIOOps
	ch <- descIOBytes
	for f := range m.latency {
		for op := range m.latency[f] {
			m.latency[f][op].Describe(ch)
		}
	}
}

func (m *ioMetrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, c := range m.counters {
		for op := range nOps {
			labels := []string{frontendNames[k.frontend], k.disk, opNames[op]}
			ch <- prometheus.MustNewConstMetric(descIOOps, prometheus.CounterValue, float64(c.ops[op].Load()), labels...)
			ch <- prometheus.MustNewConstMetric(descIOBytes, prometheus.CounterValue, float64(c.bytes[op].Load()), labels...)
		}
	}
	for f := range m.latency {
		for op := range m.latency[f] {
			m.latency[f][op].Collect(ch)
		}
	}
}

// of returns the counters of a disk on a frontend, made on first use.
func (m *ioMetrics) of(frontend int, disk string) *ioCounters {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := ioKey{frontend, disk}
	c := m.counters[k]
	if c == nil {
		c = &ioCounters{}
		m.counters[k] = c
	}
	return c
}

// prune forgets the counters of disks that no longer exist (a disk
// created again under the name starts from zero, which Prometheus' rate
// reads as a counter reset).
func (m *ioMetrics) prune(disks []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.counters {
		if !slices.Contains(disks, k.disk) {
			delete(m.counters, k)
		}
	}
}

// nbdObserver counts an NBD export's requests.
type nbdObserver struct {
	c       *ioCounters
	latency *[nOps]prometheus.Histogram
}

var _ nbd.Observer = nbdObserver{}

// observeNBD is the observer of an export of disk.
func (m *ioMetrics) observeNBD(disk string) nbdObserver {
	return nbdObserver{c: m.of(frontendNBD, disk), latency: &m.latency[frontendNBD]}
}

func (o nbdObserver) Request(cmd nbd.Command, length uint32, took time.Duration) {
	op, ok := nbdOp(cmd)
	if !ok {
		return
	}
	o.c.ops[op].Add(1)
	switch op {
	case opRead, opWrite, opTrim, opZero:
		o.c.bytes[op].Add(uint64(length))
	}
	o.latency[op].Observe(took.Seconds())
}

// meter wraps dev so its I/O is counted for disk on frontend. The wrapper
// offers the optional capabilities (block.Backed, block.TryReader) only
// when dev has them, so frontends take the same paths as without it.
func (m *ioMetrics) meter(dev block.Device, frontend int, disk string) block.Device {
	md := meteredDevice{dev: dev, c: m.of(frontend, disk), latency: &m.latency[frontend]}
	b, backed := dev.(block.Backed)
	t, tries := dev.(block.TryReader)
	if backed && tries {
		return meteredLive{meteredDevice: md, backed: b, tries: t}
	}
	return md
}

// meteredDevice counts a device's operations.
type meteredDevice struct {
	dev     block.Device
	c       *ioCounters
	latency *[nOps]prometheus.Histogram
}

var _ block.Device = meteredDevice{}

func (m meteredDevice) done(op int, n int64, start time.Time) {
	m.c.ops[op].Add(1)
	if n > 0 {
		m.c.bytes[op].Add(uint64(n))
	}
	m.latency[op].Observe(time.Since(start).Seconds())
}

func (m meteredDevice) Size() int64 { return m.dev.Size() }

func (m meteredDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := time.Now()
	err := m.dev.ReadAt(ctx, p, off)
	m.done(opRead, int64(len(p)), start)
	return err
}

func (m meteredDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	start := time.Now()
	err := m.dev.WriteAt(ctx, p, off, fua)
	m.done(opWrite, int64(len(p)), start)
	return err
}

func (m meteredDevice) Flush(ctx context.Context) error {
	start := time.Now()
	err := m.dev.Flush(ctx)
	m.done(opFlush, 0, start)
	return err
}

func (m meteredDevice) Trim(ctx context.Context, off, length int64, fua bool) error {
	start := time.Now()
	err := m.dev.Trim(ctx, off, length, fua)
	m.done(opTrim, length, start)
	return err
}

func (m meteredDevice) Zero(ctx context.Context, off, length int64, flags block.ZeroFlags) error {
	start := time.Now()
	err := m.dev.Zero(ctx, off, length, flags)
	m.done(opZero, length, start)
	return err
}

func (m meteredDevice) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	start := time.Now()
	ext, err := m.dev.Extents(ctx, off, length)
	m.done(opExtents, 0, start)
	return ext, err
}

// meteredLive is a meteredDevice over a device that is also
// block.Backed and block.TryReader (a live volume).
type meteredLive struct {
	meteredDevice
	backed block.Backed
	tries  block.TryReader
}

var (
	_ block.Backed    = meteredLive{}
	_ block.TryReader = meteredLive{}
)

// Backing counts a read that the frontend splices from the live image.
func (m meteredLive) Backing(off, length int64) (uintptr, int64, bool) {
	fd, fdOff, ok := m.backed.Backing(off, length)
	if ok {
		m.c.ops[opRead].Add(1)
		m.c.bytes[opRead].Add(uint64(length))
	}
	return fd, fdOff, ok
}

// TryReadAt counts a read served from memory; one that would wait is
// counted by the ReadAt that follows.
func (m meteredLive) TryReadAt(p []byte, off int64) bool {
	start := time.Now()
	ok := m.tries.TryReadAt(p, off)
	if ok {
		m.done(opRead, int64(len(p)), start)
	}
	return ok
}
