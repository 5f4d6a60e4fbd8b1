package nbd

import (
	"context"
	"log/slog"
	"net"
	"time"
)

// Options configure a Server.
type Options struct {
	Exporter Exporter
	Logger   *slog.Logger // nil: slog.Default()
}

// Server speaks NBD on any number of listeners.
type Server struct {
	opts Options
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
func NewServer(opts Options) *Server { return &Server{opts: opts} }

// Serve accepts connections on l until l is closed or Shutdown is called.
// It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error { panic("nbd: Serve not yet written") }

// Shutdown stops accepting, lets in-flight requests finish and be answered,
// flushes, and closes every connection. If ctx ends first the remaining
// connections are closed at once.
func (s *Server) Shutdown(ctx context.Context) error { panic("nbd: Shutdown not yet written") }

// Connections lists the connected clients.
func (s *Server) Connections() []ConnInfo { panic("nbd: Connections not yet written") }

// Disconnect closes every connection whose export is name (after letting
// requests in flight finish) and returns how many it closed.
func (s *Server) Disconnect(ctx context.Context, name string) int { panic("nbd: Disconnect not yet written") }
