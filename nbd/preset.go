package nbd

import (
	"net"

	"github.com/cairn-storage/cairn/block"
)

// Connections that skip negotiation. The Linux kernel's nbd driver speaks
// only the transmission phase: whoever configures /dev/nbdX (over
// netlink, nbd/kernel) tells it the export's size and transmission flags
// and hands it a socket already past the handshake. The server side of
// that socket is served here, in the transmission phase of one export
// from its first byte.

// Flags returns the transmission flags a client of e gets without
// structured replies ("Transmission flags"): what a peer that skips
// negotiation (ServeTransmission) must be told, with the size,
// e.Device.Size(). The error says why e cannot be served at all (a block
// size that breaks "Size constraints").
func (e *Export) Flags() (uint16, error) {
	lim, err := exportLimits(e, false)
	return lim.tflags, err
}

// ServeTransmission serves nc from the start of the transmission phase of
// exp, with no negotiation, for a peer that was told exp's size and Flags
// some other way. Replies are simple (the peer negotiated no structured
// replies) and no meta context is selected; every other rule of the
// transmission phase is the one negotiated connections follow (doc.go).
// remote names the peer in Connections ("": found from the socket).
//
// The connection is one of the server's: Connections lists it under
// exp.Name, and Disconnect and Shutdown stop it. It does not release
// anything at its end: whoever opened exp keeps it and releases it.
//
// It closes nc and returns when the connection ends (the peer sent
// NBD_CMD_DISC or hung up, broke the protocol, or was stopped), or at once
// with an error when exp cannot be served or Shutdown has begun
// (block.ErrShutdown).
func (s *Server) ServeTransmission(nc net.Conn, exp *Export, remote string) error {
	lim, err := exportLimits(exp, false)
	if err != nil {
		nc.Close()
		return err
	}
	c := s.register(nc, remote, false)
	if c == nil {
		nc.Close()
		return block.Errorf(block.ErrShutdown, "nbd: the server is shutting down or at its connection limit (nbd_max_connections)")
	}
	defer s.unregister(c)
	c.run(func() bool {
		c.enter(exp, nil, lim, false, nil)
		return true
	})
	return nil
}
