package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Options configure a Server.
type Options struct {
	Exporter Exporter
	Logger   *slog.Logger // nil: slog.Default()
	// HandshakeTimeout bounds option haggling, from accept to the start of
	// the transmission phase. Zero means one minute.
	HandshakeTimeout time.Duration
	// MaxInFlight bounds the requests one connection may have in flight;
	// the connection stops reading requests until one completes. Zero
	// means 128.
	MaxInFlight int
	// MaxWorkers bounds the goroutines that call the backend for one
	// connection. Zero means 32.
	MaxWorkers int
	// MaxInFlightBytes bounds the READ and WRITE payload buffers one
	// connection holds at a time (a single request may always proceed
	// alone). Zero means 64 MiB.
	MaxInFlightBytes int
	// TLS, when set, offers NBD_OPT_STARTTLS with this configuration on
	// every listener (use GetConfigForClient or GetCertificate to change
	// certificates without a restart). ServeTLS requires it.
	TLS *tls.Config
	// MaxConns bounds the connections the server holds at once, over
	// every listener; one more is closed as soon as it is accepted. Zero
	// means 1024.
	MaxConns int
	// IdleTimeout, when set, closes a connection in the transmission
	// phase that has no request in flight and has sent none for this long.
	IdleTimeout time.Duration
	// WritesOnWorkers turns off running small writes on the connection's
	// reader while the backend answers them quickly (see transmission.go),
	// so that no write can delay the requests behind it.
	WritesOnWorkers bool
}

const (
	defaultHandshakeTimeout = time.Minute
	defaultMaxInFlight      = 128
	defaultMaxWorkers       = 32
	defaultMaxInFlightBytes = 64 << 20
	defaultMaxConns         = 1024
)

// Server speaks NBD on any number of listeners.
type Server struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{} // guarded by mu
	conns     map[*conn]struct{}        // guarded by mu
	nextID    uint64                    // guarded by mu
	closing   bool                      // guarded by mu: Shutdown was called
	refused   int                       // guarded by mu: connections over MaxConns since the last log line
	refusedAt time.Time                 // guarded by mu: when that line was logged
}

// ConnInfo describes one connected client.
type ConnInfo struct {
	ID       uint64
	Export   string // "" while still negotiating
	Remote   string
	Since    time.Time
	ReadOnly bool
}

// NewServer returns a server for the exports opts.Exporter resolves.
func NewServer(opts Options) *Server {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = defaultMaxInFlight
	}
	if opts.MaxWorkers <= 0 {
		opts.MaxWorkers = defaultMaxWorkers
	}
	if opts.MaxInFlightBytes <= 0 {
		opts.MaxInFlightBytes = defaultMaxInFlightBytes
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = defaultMaxConns
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{
		opts:      opts,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
}

// Serve accepts connections on l until l is closed or Shutdown is called.
// It returns nil after Shutdown. Shutdown closes l.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, false) }

// ServeTLS is Serve in FORCEDTLS mode: a client must start TLS before any
// other option (docs in tls.go). Options.TLS must be set.
func (s *Server) ServeTLS(l net.Listener) error {
	if s.opts.TLS == nil {
		l.Close()
		return errors.New("nbd: ServeTLS without Options.TLS")
	}
	return s.serve(l, true)
}

func (s *Server) serve(l net.Listener, forceTLS bool) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return nil
			}
			if transientAcceptError(err) {
				// Out of file descriptors or a transient failure: wait and
				// retry rather than spin or give up the listener.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "addr", l.Addr().String(), "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go s.serveConn(nc, forceTLS)
	}
}

// transientAcceptError reports whether Accept may succeed if retried: out
// of file descriptors, or a timeout.
func transientAcceptError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// ServeConn speaks NBD on one already accepted connection (for example a
// socket handed over by systemd) and returns when it is closed. It closes
// nc.
func (s *Server) ServeConn(nc net.Conn) { s.serveConn(nc, false) }

func (s *Server) serveConn(nc net.Conn, forceTLS bool) {
	c := s.register(nc, "", forceTLS)
	if c == nil {
		nc.Close()
		return
	}
	defer s.unregister(c)
	c.serve()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// register adds a connection on nc (remote, forceTLS: see newConn), or
// returns nil once Shutdown has begun or at the connection limit.
func (s *Server) register(nc net.Conn, remote string, forceTLS bool) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil
	}
	if len(s.conns) >= s.opts.MaxConns {
		// One line a second at most, however many are refused.
		if s.refused++; time.Since(s.refusedAt) >= time.Second {
			s.log.Warn("nbd: connection limit reached; closing new connections", "limit", s.opts.MaxConns,
				"refused", s.refused, "remote", remoteName(nc))
			s.refused, s.refusedAt = 0, time.Now()
		}
		return nil
	}
	s.nextID++
	c := newConn(s, nc, s.nextID, remote, forceTLS)
	s.conns[c] = struct{}{}
	return c
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops accepting, lets in-flight requests finish and be answered,
// flushes, and closes every connection. If ctx ends first the remaining
// connections are closed at once and Shutdown returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	return stopAll(ctx, conns)
}

// Connections lists the connected clients, including those still
// negotiating.
func (s *Server) Connections() []ConnInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConnInfo, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c.info())
	}
	return out
}

// Disconnect closes every connection whose export is name (after letting
// requests in flight finish and be answered, and flushing the export if it
// is writable) and returns how many it closed. If ctx ends first the
// remaining ones are closed at once.
func (s *Server) Disconnect(ctx context.Context, name string) int {
	s.mu.Lock()
	var conns []*conn
	for c := range s.conns {
		if c.info().Export == name {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	stopAll(ctx, conns)
	return len(conns)
}

// stopAll asks every connection to stop and waits for them; when ctx ends
// first it closes the rest at once.
func stopAll(ctx context.Context, conns []*conn) error {
	for _, c := range conns {
		c.stop()
	}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns {
				c.kill()
			}
			return ctx.Err()
		}
	}
	return nil
}
