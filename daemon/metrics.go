package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Prometheus metrics (docs/metrics.md), served at /metrics on the API
// socket and, with --metrics-listen, on TCP. Names follow Prometheus'
// conventions: the cairn_ prefix, base units (bytes, seconds), _total for
// counters. Labels are bounded: a disk's name (bounded by the disks that
// exist: a deleted disk's series go), an operation, a state, a kind, a
// policy's name (at most policy_quota); never a snapshot's name.
//
// Most figures are read when Prometheus scrapes (snapshot counts, copy-out
// backlog, tasks, connections, free space): from memory, never a walk of
// the store. The store's byte and ratio figures come from the last
// capacity sample (capacity_history.go), whose time is
// cairn_store_stats_timestamp_seconds. Events counted as they happen:
// I/O (metrics_io.go), snapshot holds and drains, freezes, policy runs,
// verify runs.

// metrics is the daemon's registry and the collectors it updates.
type metrics struct {
	d   *Daemon
	reg *prometheus.Registry
	io  *ioMetrics

	hold, drain, freeze prometheus.Histogram
	policyEvents        *prometheus.CounterVec // by policy and event kind
	verifyRuns          prometheus.Counter
	verifyFaults        prometheus.Counter

	mu       sync.Mutex
	copied   map[copyKey]uint64 // guarded by mu: each snapshot's copied bytes at the last scrape
	copiedTo uint64             // guarded by mu: cairn_copyout_bytes_total
}

// copyKey names a snapshot for the copy-out counter.
type copyKey struct{ disk, seq uint64 }

// Buckets of the duration histograms, in seconds.
var (
	holdBuckets    = prometheus.ExponentialBuckets(1e-6, 4, 12) // 1 µs to 4 s
	freezeBuckets  = prometheus.ExponentialBuckets(1e-3, 2, 15) // 1 ms to 16 s
	latencyBuckets = prometheus.ExponentialBuckets(5e-6, 3, 14) // 5 µs to 8 s
)

func newMetrics(d *Daemon) *metrics {
	m := &metrics{d: d, reg: prometheus.NewRegistry(), copied: map[copyKey]uint64{}}
	m.io = newIOMetrics()
	m.hold = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_snapshot_hold_seconds",
		Help: "How long a snapshot held its disk's new writes (the seal), per disk snapshot taken.", Buckets: holdBuckets})
	m.drain = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_snapshot_drain_seconds",
		Help: "From a snapshot's seal until the writes already in flight had finished, per disk snapshot taken.", Buckets: holdBuckets})
	m.freeze = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cairn_freeze_duration_seconds",
		Help: "How long a guest's filesystems stayed frozen for a machine snapshot.", Buckets: freezeBuckets})
	m.policyEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cairn_policy_events_total",
		Help: "What policies did: event taken (a run), skipped, missed, failed, expired, evicted, kept, dropped (the events log's kinds)."},
		[]string{"policy", "event"})
	m.verifyRuns = prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_verify_runs_total", Help: "Verify runs finished."})
	m.verifyFaults = prometheus.NewCounter(prometheus.CounterOpts{Name: "cairn_verify_faults_total", Help: "Faults found by verify runs."})
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cairn_build_info", Help: "cairnd's version (always 1).",
		ConstLabels: prometheus.Labels{"version": Version}})
	build.Set(1)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.hold, m.drain, m.freeze, m.policyEvents, m.verifyRuns, m.verifyFaults, build, m.io, stateCollector{m})
	return m
}

// handler serves the registry in Prometheus' text format.
func (m *metrics) handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError})
}

// handleMetrics serves GET /metrics on the API socket.
func (d *Daemon) handleMetrics(w http.ResponseWriter, r *http.Request) error {
	d.metrics.handler(d.log).ServeHTTP(w, r)
	return nil
}

// serveMetrics serves /metrics on the --metrics-listen listener, and
// nothing else there.
func (d *Daemon) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.handler(d.log))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
}

// listenMetrics binds --metrics-listen, unless a listener was given.
func (d *Daemon) listenMetrics() error {
	var err error
	if d.metricsListener = d.cfg.MetricsListener; d.metricsListener == nil && d.cfg.MetricsListen != "" {
		if d.metricsListener, err = net.Listen("tcp", d.cfg.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
	}
	return nil
}

// metricsAddr is the --metrics-listen address served ("" when none).
func (d *Daemon) metricsAddr() string {
	if d.metricsListener == nil {
		return ""
	}
	return d.metricsListener.Addr().String()
}

// tookSnapshot observes a disk snapshot's hold and drain.
func (m *metrics) tookSnapshot(in cow.SnapshotInfo) {
	m.hold.Observe(in.Hold.Seconds())
	m.drain.Observe(in.Drain.Seconds())
}

// froze observes how long a guest stayed frozen.
func (m *metrics) froze(d time.Duration) { m.freeze.Observe(d.Seconds()) }

// verified counts a verify run and its faults.
func (m *metrics) verified(faults int) {
	m.verifyRuns.Inc()
	m.verifyFaults.Add(float64(faults))
}

// policyEvent counts an event of the events log.
func (m *metrics) policyEvent(e api.Event) {
	if e.Policy != "" {
		m.policyEvents.WithLabelValues(e.Policy, e.Kind).Inc()
	}
}

// forgetPolicy drops a deleted policy's series.
func (m *metrics) forgetPolicy(name string) {
	m.policyEvents.DeletePartialMatch(prometheus.Labels{"policy": name})
}

// stateCollector reports what is true at the scrape.
type stateCollector struct{ m *metrics }

var (
	descSnapshots = prometheus.NewDesc("cairn_snapshots", "Disk snapshots by state and kind (manual, auto).", []string{"state", "kind"}, nil)
	descBacklog   = prometheus.NewDesc("cairn_copyout_backlog_bytes", "Bytes of copying snapshots not yet in the store.", nil, nil)
	descOldest    = prometheus.NewDesc("cairn_copyout_oldest_seconds", "Age of the oldest snapshot still copying out (0: none).", nil, nil)
	descCopied    = prometheus.NewDesc("cairn_copyout_bytes_total", "Bytes snapshots copied into the store since cairnd started.", nil, nil)
	descDisks     = prometheus.NewDesc("cairn_disks", "Disks.", nil, nil)
	descNBDConns  = prometheus.NewDesc("cairn_nbd_connections", "Open NBD connections, by disk.", []string{"disk"}, nil)
	descFUSEOpen  = prometheus.NewDesc("cairn_fuse_open_files", "Open FUSE files of a disk and its snapshots, by disk.", []string{"disk"}, nil)
	descTasks     = prometheus.NewDesc("cairn_tasks", "Tasks kept (running and finished within task_history), by kind and state.", []string{"kind", "state"}, nil)
	descStore     = prometheus.NewDesc("cairn_store_bytes", "The store's bytes at the last capacity sample: logical (every reference), unique (after dedup), stored (after compression), disk (its files).", []string{"kind"}, nil)
	descDedup     = prometheus.NewDesc("cairn_store_dedup_ratio", "Logical over unique bytes at the last capacity sample (1: no sharing).", nil, nil)
	descCompress  = prometheus.NewDesc("cairn_store_compression_ratio", "Unique over stored bytes at the last capacity sample (1: incompressible).", nil, nil)
	descStatsTime = prometheus.NewDesc("cairn_store_stats_timestamp_seconds", "When the store's byte figures were sampled (unix time; 0: not yet).", nil, nil)
	descFSFree    = prometheus.NewDesc("cairn_store_filesystem_free_bytes", "Free bytes, for cairnd, on the store's filesystem.", nil, nil)
	descFSSize    = prometheus.NewDesc("cairn_store_filesystem_size_bytes", "Size of the store's filesystem.", nil, nil)
	descReserve   = prometheus.NewDesc("cairn_store_reserve_bytes", "The store's reserve (store_reserve): its full size, and what it holds now (less while the store's upkeep uses it).", []string{"kind"}, nil)
	descStopBelow = prometheus.NewDesc("cairn_store_snapshots_stop_below_bytes", "Free bytes below which snapshots are refused and copying ones fail.", nil, nil)
	descSpace     = prometheus.NewDesc("cairn_store_space_state", "1 for the store's space state (ok, low, full, reserve), 0 for the others.", []string{"state"}, nil)
	descBroken    = prometheus.NewDesc("cairn_store_broken", "1 while the store takes no more changes because a write to its disk failed (restart cairnd once the disk is healthy).", nil, nil)
	descGCRuns    = prometheus.NewDesc("cairn_store_gc_runs_total", "Value-log garbage collections run since cairnd started.", nil, nil)
	descPolicies  = prometheus.NewDesc("cairn_policies", "Automatic snapshot policies.", nil, nil)
	descTargets   = prometheus.NewDesc("cairn_policy_targets", "Disks and machines a policy is applied to.", []string{"policy"}, nil)
	descNextRun   = prometheus.NewDesc("cairn_policy_next_run_timestamp_seconds", "A policy's next time point on any target (unix time).", []string{"policy"}, nil)
	descLastRun   = prometheus.NewDesc("cairn_policy_last_point_timestamp_seconds", "A policy's last time point handled on any target (unix time).", []string{"policy"}, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSnapshots, descBacklog, descOldest, descCopied, descDisks, descNBDConns, descFUSEOpen,
		descTasks, descStore, descDedup, descCompress, descStatsTime, descFSFree, descFSSize, descReserve, descStopBelow, descSpace, descBroken, descGCRuns,
		descPolicies, descTargets, descNextRun, descLastRun} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.m.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	c.collectSnapshots(gauge, ch)
	c.collectClients(gauge)
	tasks := map[[2]string]int{}
	for _, t := range d.tasks.list(api.TaskFilter{}) {
		tasks[[2]string{t.Kind, t.State}]++
	}
	for k, n := range tasks {
		gauge(descTasks, float64(n), k[0], k[1])
	}
	c.collectStore(gauge, ch)
	c.collectPolicies(gauge)
}

// collectSnapshots reports snapshot counts and copy-out figures.
func (c stateCollector) collectSnapshots(gauge func(*prometheus.Desc, float64, ...string), ch chan<- prometheus.Metric) {
	d, m := c.m.d, c.m
	type vol struct {
		id  uint64
		vol *cow.Volume
	}
	var vols []vol
	d.mu.Lock()
	disks := len(d.disks)
	for _, k := range d.disks {
		if k.vol != nil {
			vols = append(vols, vol{k.rec.ID, k.vol})
		}
	}
	d.mu.Unlock()
	gauge(descDisks, float64(disks))
	counts := map[[2]string]int{}
	for _, st := range []string{api.SnapshotCopying, api.SnapshotReady, api.SnapshotFailed, api.SnapshotDeleting} {
		for _, kind := range []string{api.SnapshotManual, api.SnapshotAuto} {
			counts[[2]string{st, kind}] = 0
		}
	}
	var backlog uint64
	var oldest time.Time
	seen := map[copyKey]uint64{}
	for _, v := range vols {
		for _, in := range v.vol.Snapshots() {
			counts[[2]string{in.State, in.Kind}]++
			done := in.CopyBytes
			if in.State == cow.StateCopying {
				done = uint64(float64(in.CopyBytes) * in.Progress / 100)
				backlog += in.CopyBytes - min(done, in.CopyBytes)
				if oldest.IsZero() || in.Created.Before(oldest) {
					oldest = in.Created
				}
			}
			seen[copyKey{v.id, in.Seq}] = done
		}
	}
	for k, n := range counts {
		gauge(descSnapshots, float64(n), k[0], k[1])
	}
	gauge(descBacklog, float64(backlog))
	age := 0.0
	if !oldest.IsZero() {
		age = max(d.clock.Now().Sub(oldest).Seconds(), 0)
	}
	gauge(descOldest, age)
	m.mu.Lock()
	for k, done := range seen {
		if prev, ok := m.copied[k]; done > prev || !ok && done > 0 {
			m.copiedTo += done - min(prev, done)
		}
	}
	m.copied = seen
	total := m.copiedTo
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descCopied, prometheus.CounterValue, float64(total))
}

// baseline records the snapshots' copied bytes at start, so that
// cairn_copyout_bytes_total counts only what is copied from then on.
func (m *metrics) baseline() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	for _, k := range m.d.disks {
		if k.vol == nil {
			continue
		}
		for _, in := range k.vol.Snapshots() {
			done := in.CopyBytes
			if in.State == cow.StateCopying {
				done = uint64(float64(in.CopyBytes) * in.Progress / 100)
			}
			m.copied[copyKey{k.rec.ID, in.Seq}] = done
		}
	}
}

// collectClients reports NBD connections and open FUSE files by disk.
func (c stateCollector) collectClients(gauge func(*prometheus.Desc, float64, ...string)) {
	d := c.m.d
	conns := map[string]int{}
	for _, cn := range d.nbd.Connections() {
		if cn.Export != "" {
			if x, ok := parseExport(cn.Export); ok {
				conns[x.disk]++
			}
		}
	}
	fuse := map[string]int{}
	d.mu.Lock()
	names := make([]string, 0, len(d.disks))
	for name, k := range d.disks {
		names = append(names, name)
		for h, n := range k.holders {
			if h.kind == fuseFile {
				fuse[name] += n
			}
		}
	}
	d.mu.Unlock()
	for _, name := range names {
		gauge(descNBDConns, float64(conns[name]), name)
		gauge(descFUSEOpen, float64(fuse[name]), name)
	}
	c.m.io.prune(names)
}

// collectStore reports the store's figures.
func (c stateCollector) collectStore(gauge func(*prometheus.Desc, float64, ...string), ch chan<- prometheus.Metric) {
	d := c.m.d
	st, at := d.capHist.storeStats()
	if !at.IsZero() {
		gauge(descStore, float64(st.LogicalBytes), "logical")
		gauge(descStore, float64(st.UniqueBytes), "unique")
		gauge(descStore, float64(st.StoredBytes), "stored")
		gauge(descStore, float64(st.DiskBytes), "disk")
		if st.UniqueBytes > 0 {
			gauge(descDedup, float64(st.LogicalBytes)/float64(st.UniqueBytes))
		}
		if st.StoredBytes > 0 {
			gauge(descCompress, float64(st.UniqueBytes)/float64(st.StoredBytes))
		}
		gauge(descStatsTime, float64(at.UnixMilli())/1000)
	} else {
		gauge(descStatsTime, 0)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(d.cfg.DataDir, "store"), &fs); err == nil {
		gauge(descFSSize, float64(fs.Blocks)*float64(fs.Bsize))
	}
	sp := d.StoreSpace()
	gauge(descFSFree, float64(sp.FreeBytes))
	gauge(descReserve, float64(sp.ReserveBytes), "size")
	gauge(descReserve, float64(sp.ReserveHeldBytes), "held")
	gauge(descStopBelow, float64(sp.StopBelowBytes))
	for _, st := range []string{api.SpaceOK, api.SpaceLow, api.SpaceFull, api.SpaceReserve} {
		v := 0.0
		if sp.State == st {
			v = 1
		}
		gauge(descSpace, v, st)
	}
	broken := 0.0
	if sp.Broken != "" {
		broken = 1
	}
	gauge(descBroken, broken)
	ch <- prometheus.MustNewConstMetric(descGCRuns, prometheus.CounterValue, float64(d.store.GCRuns()))
}

// collectPolicies reports the policies, their targets and their points.
func (c stateCollector) collectPolicies(gauge func(*prometheus.Desc, float64, ...string)) {
	d := c.m.d
	live := d.liveTargets()
	now := d.clock.Now()
	p := &d.pol
	p.mu.Lock()
	defer p.mu.Unlock()
	gauge(descPolicies, float64(len(p.byName)))
	targets := map[string]int{}
	next := map[string]time.Time{}
	last := map[string]time.Time{}
	for k, t := range p.targets {
		if _, ok := live[k]; !ok {
			continue
		}
		name := t.rec.Policy
		targets[name]++
		from := now
		if t.rec.Last.After(from) {
			from = t.rec.Last
		}
		if n, ok := p.byName[name].sched.Next(from); ok && (next[name].IsZero() || n.Before(next[name])) {
			next[name] = n
		}
		if t.rec.LastResult != resultApplied && t.rec.Last.After(last[name]) {
			last[name] = t.rec.Last
		}
	}
	for name := range p.byName {
		gauge(descTargets, float64(targets[name]), name)
		if n := next[name]; !n.IsZero() {
			gauge(descNextRun, float64(n.Unix()), name)
		}
		if l := last[name]; !l.IsZero() {
			gauge(descLastRun, float64(l.Unix()), name)
		}
	}
}

// serveMetricsListener serves --metrics-listen until shutdown.
func (d *Daemon) serveMetricsListener() {
	if d.metricsListener == nil {
		return
	}
	d.metricsHTTP = d.metricsServer()
	d.serve(func() error { return d.metricsHTTP.Serve(d.metricsListener) }, "metrics", nil)
}
