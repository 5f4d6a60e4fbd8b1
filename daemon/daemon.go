// Package daemon is cairnd: it owns the disks of one data directory, serves
// them over NBD and the FUSE view, and answers the control API. It is the
// only package that knows the frontends (nbd, fusefs), the volumes (cow)
// and the store together.
//
// Lifecycle: New takes the data directory's lock, opens the store and every
// disk's live image and binds the listeners; Run serves until its context
// ends or Shutdown is called, then shuts down gracefully; Shutdown stops
// accepting, lets NBD requests in flight finish, flushes and closes every
// volume, closes the store and releases the lock.
//
// What the daemon guarantees:
//
//   - One cairnd per data directory (dirlock.go), and nothing a client
//     sends names a path inside it: live images are named by a disk's id,
//     and an adopted image must lie outside it, under adopt_allow, and is
//     checked again at every open (paths.go).
//   - Every API call and NBD open is checked against the caller's role,
//     known from the kernel (SO_PEERCRED) or a verified certificate, and
//     logged (authz.go, nbdaccess.go; package access has the roles).
//   - A request that changes a disk answers only once the change is durable
//     in the store (a disk's record, a snapshot's record); a request that
//     breaks a rule gets invalid_argument naming the field (validate.go).
//   - An export (DISK, DISK@SNAPSHOT) is listed and opened one way for NBD,
//     FUSE and the API (exports.go); every open handle is a holder of its
//     disk (holders.go). A disk is not deleted, and its live image not
//     rolled back, while it has holders, unless the request forces it,
//     which disconnects NBD clients and waits, bounded, for the rest; a
//     snapshot is not deleted while it is read, on the same terms.
//   - Once shutdown begins no export opens and nothing changes.
//
// Where things are: daemon.go (this: wiring and lifecycle), config.go,
// dirlock.go, records.go (the store records' wire format); disk.go (the
// Disk and its lookups), disk_load.go (start-up), disk_create.go,
// disk_grow.go, disk_delete.go; exports.go, holders.go, fuse.go;
// attach*.go (kernel attach: exports as /dev/nbdN);
// snapshot.go (create, list, get), snapshot_delete.go, rollback.go,
// changes.go, capacity.go, verify.go, tasks.go (long operations);
// transfer.go (exports and imports the client runs, with a lease),
// transfer_export.go, transfer_image.go (image:NAME/DISK exports),
// transfer_import.go, transfer_handlers.go;
// policy.go, policy_run.go (the scheduler), policy_retention.go,
// events.go, capacity_history.go; metrics.go, metrics_io.go;
// http.go (routes and request decoding), handlers.go, errors.go (errors
// to API codes), status.go (info and health), validate.go; authz.go (who
// may call what, the audit log), nbdaccess.go (who may open which
// export), paths.go (what an adopted image may be), tls.go (NBD's TLS
// files and their reload), filesize.go (the filesystem's file-size limit).
//
// Locks:
//
//  1. Daemon.snapMu makes the quota check and the snapshot one step, and a
//     disk delete's count of snapshots and its start another. Daemon.mu
//     may be taken under it (briefly: a lookup), never it under Daemon.mu.
//  2. Daemon.mu guards the disk map and every Disk's mutable state (its
//     holders among them). A volume's own locks (cow) may be taken under
//     it, never the other way round; NBD calls (Disconnect, Connections)
//     are made without it.
//  3. taskList.mu guards the task registry; nothing else is taken under it.
//  4. policies.mu guards the policies and their targets (policy.go); it
//     may be taken under Daemon.mu and snapMu, nothing is taken under it.
//
// Daemon.attachMu (attach.go) serialises kernel attach and detach; it is
// taken before Daemon.mu and never under it or Daemon.snapMu.
//
// The FUSE tree calls back into the daemon (taking Daemon.mu), so the
// daemon never calls into the tree while holding Daemon.mu.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/fusefs"
	"github.com/cairn-storage/cairn/internal/clock"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/kernel"
	"github.com/cairn-storage/cairn/store"
)

// Daemon is one running cairnd.
type Daemon struct {
	cfg     Config // defaults applied; never changes
	log     *slog.Logger
	started time.Time

	lock   *dirLock
	store  *store.Store
	policy *access.Policy // who may do what (authz.go)
	tls    *tlsFiles      // nil without tls_cert
	nbd    *nbd.Server
	api    *http.Server
	fuse   *fusefs.Tree // nil without the FUSE view

	apiListener, nbdListener, tcpListener net.Listener // tcpListener may be nil

	mu sync.Mutex
	// disks by name; guarded by mu, as is every Disk's mutable state.
	disks map[string]*Disk
	// machines by name (machine.go); guarded by mu.
	machines map[string]*machine
	// images by name (image.go); guarded by mu.
	images map[string]*image
	// attachments by device index (attach.go); guarded by mu. attachMu
	// serialises attach, detach and their restoring at start-up.
	attachments map[int]*attachment
	attachMu    sync.Mutex
	kernel      *kernel.Driver
	// tasks are the long operations (rollback, verify); own lock. They run
	// under bg, which shutdown cancels before the disks close.
	tasks taskList
	// transfers are the exports and imports whose clients report to
	// them (transfer.go); own lock.
	transfers transferList
	snapMu    sync.Mutex // serialises snapshot creation so the quota holds
	// gcRunning is set while a GC kicked by a delete runs.
	gcRunning atomic.Bool
	// spaceDone is done when watchSpace, which bg stops, has returned.
	spaceDone sync.WaitGroup
	bg        context.Context
	bgCancel  context.CancelFunc
	// closing is set when shutdown begins: no new exports, no changes.
	closing bool
	// nbdErr is why an NBD listener stopped serving (health); guarded by mu.
	nbdErr error

	// clock is the time of policies, retention, events and capacity
	// samples (Config.Clock). pol are the policies (policy.go), events the
	// events log, capHist the capacity sampler, metrics the Prometheus
	// registry; loops are the scheduler's and the sampler's goroutines.
	clock           clock.Clock
	pol             policies
	events          eventLog
	capHist         capacityHistory
	metrics         *metrics
	metricsListener net.Listener // nil without --metrics-listen
	metricsHTTP     *http.Server
	loops           sync.WaitGroup

	stop         chan struct{} // closed by Shutdown to wake Run
	stopOnce     sync.Once
	shutdownOnce sync.Once
	shutdownErr  error
	serving      sync.WaitGroup // Run's serve goroutines
}

// New validates cfg, takes the data directory's lock, opens the store and
// the disks, and binds the API and NBD listeners. Connections made after
// New returns wait until Run serves them. On error everything New took is
// released.
func New(cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:     cfg,
		log:     cfg.Logger,
		started: time.Now(),
		disks:   make(map[string]*Disk),
		stop:    make(chan struct{}),

		attachments: make(map[int]*attachment),
		kernel:      &kernel.Driver{},
		clock:       cfg.Clock,
	}
	if d.clock == nil {
		d.clock = clock.Real{}
	}
	d.events.d = d
	d.metrics = newMetrics(d)
	d.bg, d.bgCancel = context.WithCancel(context.Background())
	if d.policy, err = access.New(access.Config{Admin: cfg.Admin, Operator: cfg.Operator, Reader: cfg.Reader,
		Grant: cfg.Grant, TCPRole: cfg.NBDTCPRole, SelfUID: uint32(os.Getuid())}); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.release(context.Background())
		}
	}()
	for _, dir := range []string{cfg.DataDir, d.disksDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
	}
	if d.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	reserve, _ := cfg.storeReserve() // checked by Validate
	if d.store, err = store.Open(store.Options{Dir: filepath.Join(cfg.DataDir, "store"), Logger: cfg.Logger, ReserveBytes: reserve}); err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	if why := d.store.Suspect(); why != "" {
		d.log.Warn("the snapshot store may hold damaged chunks: " + why)
	}
	if err := d.loadDisks(); err != nil {
		return nil, err
	}
	if err := d.loadMachines(); err != nil {
		return nil, err
	}
	if err := d.loadImages(); err != nil {
		return nil, err
	}
	if err := d.loadPolicies(); err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	d.reconcileAllRetention(d.bg)
	d.metrics.baseline()
	d.thawLeftovers()
	if err := d.loadTasks(); err != nil {
		return nil, fmt.Errorf("load tasks: %w", err)
	}
	d.spaceDone.Add(1)
	go d.watchSpace()
	if err := d.mountFUSE(); err != nil {
		return nil, err
	}
	if d.tls, err = newTLSFiles(cfg); err != nil {
		return nil, err
	}
	nopts := nbd.Options{Exporter: exporter{d}, Logger: cfg.Logger.With("component", "nbd"),
		MaxConns: cfg.NBDMaxConnections, IdleTimeout: time.Duration(cfg.NBDIdleTimeout)}
	if d.tls != nil {
		nopts.TLS = d.tls.serverConfig()
		go d.tls.watch(d.bg, d)
	}
	d.nbd = nbd.NewServer(nopts)
	if err := d.listen(); err != nil {
		return nil, err
	}
	if err := d.listenMetrics(); err != nil {
		return nil, err
	}
	d.api = &http.Server{
		Handler:           d.apiHandler(),
		ConnContext:       withCaller,
		ReadHeaderTimeout: apiHeaderTimeout,
		IdleTimeout:       apiIdleTimeout,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	return d, nil
}

func (d *Daemon) disksDir() string { return filepath.Join(d.cfg.DataDir, "disks") }

// listen binds every listener the config names and does not supply.
func (d *Daemon) listen() error {
	var err error
	if d.apiListener = d.cfg.APIListener; d.apiListener == nil {
		if d.apiListener, err = listenUnix(d.cfg.APISocket); err != nil {
			return fmt.Errorf("--api-socket: %w", err)
		}
	}
	if d.nbdListener = d.cfg.NBDListener; d.nbdListener == nil {
		if d.nbdListener, err = listenUnix(d.cfg.NBDSocket); err != nil {
			return fmt.Errorf("--nbd-socket: %w", err)
		}
	}
	if d.tcpListener = d.cfg.NBDTCPListener; d.tcpListener == nil && d.cfg.NBDListen != "" {
		if d.tcpListener, err = net.Listen("tcp", d.cfg.NBDListen); err != nil {
			return fmt.Errorf("--nbd-listen: %w", err)
		}
	}
	return nil
}

// listenUnix listens on a Unix socket with mode 0660. A socket file left by
// a cairnd that died is replaced; one that still answers is not.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it or choose another path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another process; stop it or choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// Run serves the API and NBD until ctx ends or Shutdown is called, then
// shuts down gracefully (bounded by Config.ShutdownTimeout). It returns
// nil after a clean shutdown and the first error that stopped it
// otherwise. Call it once.
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	disks := len(d.disks)
	d.mu.Unlock()
	// Before the API answers: it lists the attachments as restored, and
	// no attach can take a recorded device meanwhile.
	d.restoreAttachments()
	fatal := make(chan error, 1)
	d.serve(func() error { return d.api.Serve(d.apiListener) }, "api", fatal)
	d.serve(func() error { return d.nbd.Serve(d.nbdListener) }, "nbd", nil)
	if d.tcpListener != nil {
		serveTCP := d.nbd.Serve
		if d.tls != nil && !isLoopbackAddr(d.tcpListener.Addr()) {
			serveTCP = d.nbd.ServeTLS // off loopback every client must use TLS
		}
		d.serve(func() error { return serveTCP(d.tcpListener) }, "nbd-tcp", nil)
	}
	d.serveMetricsListener()
	d.startLoops()
	d.log.Info("cairnd ready", "version", Version, "data_dir", d.cfg.DataDir,
		"api_socket", d.apiAddr(), "nbd_socket", d.nbdListener.Addr().String(), "nbd_listen", d.tcpAddr(),
		"metrics_listen", d.metricsAddr(), "disks", disks)
	d.notify("READY=1")
	var runErr error
	select {
	case <-ctx.Done():
		d.log.Info("shutting down", "reason", context.Cause(ctx))
	case <-d.stop:
	case runErr = <-fatal:
		d.log.Error("shutting down", "reason", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(d.cfg.ShutdownTimeout))
	defer cancel()
	err := d.Shutdown(sctx)
	d.serving.Wait()
	return errors.Join(runErr, err)
}

// serve runs fn in a goroutine Run owns. An error from it (other than a
// normal close) goes to fatal when fatal is non-nil, else to health.
func (d *Daemon) serve(fn func() error, what string, fatal chan<- error) {
	d.serving.Add(1)
	go func() {
		defer d.serving.Done()
		err := fn()
		if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
			return
		}
		err = fmt.Errorf("%s listener: %w", what, err)
		if fatal != nil {
			select {
			case fatal <- err:
			default:
			}
			return
		}
		d.log.Error("listener stopped", "err", err)
		d.mu.Lock()
		d.nbdErr = err
		d.mu.Unlock()
	}()
}

func (d *Daemon) notify(state string) {
	if d.cfg.Notify != nil {
		d.cfg.Notify(state)
	}
}

func (d *Daemon) apiAddr() string { return d.apiListener.Addr().String() }

func (d *Daemon) tcpAddr() string {
	if d.tcpListener == nil {
		return ""
	}
	return d.tcpListener.Addr().String()
}

// Shutdown stops the daemon: the API and NBD stop accepting, API requests
// and NBD requests in flight finish (NBD connections are cut when ctx
// ends first), every volume is flushed and closed, the store is synced and
// closed and the lock released. Safe to call more than once and
// concurrently with Run; every call returns the first call's result.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.stopOnce.Do(func() { close(d.stop) })
	d.shutdownOnce.Do(func() {
		d.notify("STOPPING=1")
		d.mu.Lock()
		d.closing = true
		d.stopAttachments() // their devices wait for the next start
		d.mu.Unlock()
		d.shutdownErr = d.release(ctx)
		if d.shutdownErr != nil {
			d.log.Error("shutdown", "err", d.shutdownErr)
		} else {
			d.log.Info("cairnd stopped")
		}
	})
	return d.shutdownErr
}

// release frees whatever New took, in reverse order; fields still nil are
// skipped, so it also cleans up after a New that failed halfway.
func (d *Daemon) release(ctx context.Context) error {
	var errs []error
	if d.api != nil {
		if err := d.api.Shutdown(ctx); err != nil {
			d.api.Close()
			errs = append(errs, fmt.Errorf("stop api: %w", err))
		}
	}
	if d.nbd != nil {
		if err := d.nbd.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop nbd: %w", err))
		}
	}
	if d.metricsHTTP != nil {
		if err := d.metricsHTTP.Shutdown(ctx); err != nil {
			d.metricsHTTP.Close()
		}
	}
	for _, l := range []net.Listener{d.apiListener, d.nbdListener, d.tcpListener, d.metricsListener} {
		if l != nil {
			l.Close() // already closed by a server's shutdown unless Run never served it
		}
	}
	d.closeAttachments() // their sockets are closed: release their exports
	if d.bgCancel != nil {
		d.bgCancel() // a rollback stops between blocks; run it again to finish
		d.loops.Wait()
		d.tasks.wait()
		d.spaceDone.Wait()
	}
	d.unmountFUSE() // before the volumes close; FUSE requests take d.mu
	d.mu.Lock()
	for _, disk := range d.disks {
		if err := disk.close(); err != nil {
			errs = append(errs, fmt.Errorf("close disk %s: %w", disk.rec.Name, err))
		}
	}
	d.mu.Unlock()
	if d.store != nil {
		if err := d.store.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("sync store: %w", err))
		}
		if err := d.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	if d.lock != nil {
		if err := d.lock.release(); err != nil {
			errs = append(errs, fmt.Errorf("release lock: %w", err))
		}
	}
	return errors.Join(errs...)
}
