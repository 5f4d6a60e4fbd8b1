package nbd

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/block"
	"golang.org/x/sys/unix"
)

// readBufSize is the per-connection read buffer of the transmission
// phase: large enough that one read system call picks up a queue depth's
// worth of request headers and small write payloads. Option haggling
// reads through handshakeBufSize, so a connection that never gets past it
// costs little memory.
const (
	readBufSize      = 128 << 10
	handshakeBufSize = 4 << 10
)

// conn is one client connection through its whole life: option haggling
// (handshake.go), then the transmission phase (transmission.go), then
// teardown. One goroutine (the one running serve) owns the socket's read
// side; workers share the write side through replies.
type conn struct {
	srv *Server
	// nc is the accepted socket: deadlines and closing act on it. io is
	// what requests and replies go through: nc, or the TLS session over it
	// (set by the reader during option haggling, fixed after).
	nc       net.Conn
	io       net.Conn
	peer     Peer // the Exporter reads it through ctx (PeerFrom)
	forceTLS bool // FORCEDTLS: the listener requires TLS (ServeTLS)
	id       uint64
	since    time.Time
	remote   string
	log      *slog.Logger
	done     chan struct{} // closed when serve has returned

	// ctx is passed to every backend call; kill and the end of serve
	// cancel it.
	ctx    context.Context
	cancel context.CancelFunc

	// stopping is set by stop: read no further requests, finish those in
	// flight, flush, close.
	stopping atomic.Bool

	mu         sync.Mutex
	exportName string    // guarded by mu; "" until the transmission phase
	readOnly   bool      // guarded by mu
	logTokens  int       // guarded by mu: backend-error log lines allowed now
	logRefill  time.Time // guarded by mu: when logTokens was last refilled
	logDropped int       // guarded by mu: lines suppressed since the last one

	br *bufio.Reader // read side; owned by the goroutine running serve

	// Negotiated state: written during the handshake, read-only once the
	// transmission phase starts.
	structured bool
	exp        *Export
	tryReader  block.TryReader // exp.Device's, if it has one
	backed     block.Backed    // exp.Device's, if it has one
	release    func()
	lim        limits
	contexts   []selectedContext

	tx transmission // transmission-phase machinery
}

// newConn makes connection id on nc; remote names the peer ("": found
// from the socket, remoteName); forceTLS makes the client start TLS
// before anything else (a TCP listener off loopback).
func newConn(s *Server, nc net.Conn, id uint64, remote string, forceTLS bool) *conn {
	if remote == "" {
		remote = remoteName(nc)
	}
	c := &conn{
		srv:      s,
		nc:       nc,
		io:       nc,
		peer:     Peer{Conn: nc},
		forceTLS: forceTLS,
		id:       id,
		since:    time.Now(),
		remote:   remote,
		log:      s.log.With("conn", id, "remote", remote),
		done:     make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.WithValue(context.Background(), peerKey{}, &c.peer))
	return c
}

// remoteName describes the peer: its address, or for a unix socket (whose
// clients are unnamed) the peer's process and user ids.
func remoteName(nc net.Conn) string {
	if uc, ok := nc.(*net.UnixConn); ok {
		if raw, err := uc.SyscallConn(); err == nil {
			var cred *unix.Ucred
			raw.Control(func(fd uintptr) {
				cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			})
			if cred != nil {
				return fmt.Sprintf("unix:pid=%d,uid=%d", cred.Pid, cred.Uid)
			}
		}
	}
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "unknown"
}

func (c *conn) info() ConnInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ConnInfo{ID: c.id, Export: c.exportName, Remote: c.remote, Since: c.since, ReadOnly: c.readOnly}
}

// serve runs the connection to its end: negotiation, then, when it
// reaches one, the transmission phase.
func (c *conn) serve() { c.run(c.negotiate) }

// run runs the connection to its end: start prepares the transmission
// phase (false ends the connection), then transmit serves it. A panic (in
// the Exporter, say) ends this connection only.
func (c *conn) run(start func() bool) {
	defer close(c.done)
	defer c.cancel()
	defer c.teardown()
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("nbd: internal error; closing connection", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	c.br = bufio.NewReaderSize(c.io, handshakeBufSize)
	if start() {
		c.transmit()
	}
}

// stop asks the connection to end gracefully: it reads no more requests,
// answers those in flight, flushes a written export and closes.
func (c *conn) stop() {
	c.stopping.Store(true)
	// Wake a reader blocked on the socket. serve re-checks stopping after
	// every change of deadline, so this cannot be lost.
	c.nc.SetReadDeadline(time.Now())
}

// kill ends the connection at once: the socket closes and backend calls
// see a cancelled context.
func (c *conn) kill() {
	c.cancel()
	c.nc.Close()
}

// teardown flushes what this connection wrote, closes the socket and
// releases the export.
func (c *conn) teardown() {
	if c.exp != nil && c.tx.dirty.Load() {
		if err := c.callFlush(); err != nil {
			c.log.Warn("nbd: flush at disconnect failed; data written by this client may not be durable",
				"export", c.exp.Name, "err", err)
		}
	}
	c.io.Close()
	if c.release != nil {
		c.release()
	}
	c.log.Debug("nbd: connection closed")
}

// callFlush flushes the backend, recovering a panic into an error.
func (c *conn) callFlush() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = panicError(p)
		}
	}()
	return c.exp.Device.Flush(c.ctx)
}

// logBackendError logs a backend failure, at most ten lines a second per
// connection so a failing disk cannot flood the journal.
func (c *conn) logBackendError(msg string, args ...any) {
	c.mu.Lock()
	now := time.Now()
	if c.logTokens < 10 && now.Sub(c.logRefill) >= 100*time.Millisecond {
		c.logTokens += min(10-c.logTokens, int(now.Sub(c.logRefill)/(100*time.Millisecond)))
		c.logRefill = now
	}
	if c.logTokens == 0 {
		c.logDropped++
		c.mu.Unlock()
		return
	}
	c.logTokens--
	dropped := c.logDropped
	c.logDropped = 0
	c.mu.Unlock()
	if dropped > 0 {
		args = append(args, "suppressed", dropped)
	}
	c.log.Warn(msg, args...)
}
