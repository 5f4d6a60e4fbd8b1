package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
)

// TLS ("TLS support"): NBD_OPT_STARTTLS upgrades the connection during
// option haggling. A server with Options.TLS offers it on every listener
// (SELECTIVETLS: an export may still require it, which the Exporter says
// by an error wrapping ErrTLSRequired); ServeTLS runs a listener in
// FORCEDTLS mode, where every option but STARTTLS and ABORT is refused
// with NBD_REP_ERR_TLS_REQD until the client has started TLS. A failed TLS
// handshake closes the connection: after the ACK there is no way back.

// ErrTLSRequired is wrapped by Exporter.Open for an export the client may
// open only over TLS: it gets NBD_REP_ERR_TLS_REQD (or, for
// NBD_OPT_EXPORT_NAME, which cannot be refused, a closed connection).
var ErrTLSRequired = errors.New("nbd: the export requires TLS")

// Peer is who is at the other end of a connection, for the Exporter:
// PeerFrom(ctx) in Open and List.
type Peer struct {
	// Conn is the accepted connection (under TLS, the socket beneath it):
	// its address, or a Unix socket's peer credentials.
	Conn net.Conn
	// TLS is the state of the TLS session once STARTTLS succeeded (with
	// the client's verified certificates when the config asks for them);
	// nil before.
	TLS *tls.ConnectionState
}

type peerKey struct{}

// PeerFrom returns the peer of the connection whose context ctx is (the
// one given to Exporter.Open and List), or nil.
func PeerFrom(ctx context.Context) *Peer {
	p, _ := ctx.Value(peerKey{}).(*Peer)
	return p
}

// startTLS answers NBD_OPT_STARTTLS.
func (h *handshake) startTLS(data []byte) (optResult, error) {
	c := h.c
	switch {
	case c.srv.opts.TLS == nil:
		return optNext, h.replyErr(optStartTLS, repErrUnsup, "TLS is not configured on this server")
	case c.peer.TLS != nil:
		return optNext, h.replyErr(optStartTLS, repErrInvalid, "TLS is already on")
	case len(data) != 0:
		return optNext, h.replyErr(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	}
	if err := h.reply(optStartTLS, repAck, nil); err != nil {
		return optEnd, err
	}
	if err := h.bw.Flush(); err != nil {
		return optEnd, err
	}
	if c.br.Buffered() > 0 {
		// The client sent more before the ACK: bytes meant to be in the
		// clear or inside TLS, either way not to be trusted.
		return optEnd, protocolErrorf("data sent after NBD_OPT_STARTTLS before the server's reply")
	}
	tc := tls.Server(c.nc, c.srv.opts.TLS)
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Warn("nbd: closing connection: TLS handshake failed", "err", err)
		return optEnd, nil
	}
	st := tc.ConnectionState()
	c.peer.TLS = &st
	c.io = tc
	c.br = bufio.NewReaderSize(tc, handshakeBufSize)
	h.bw = bufio.NewWriterSize(tc, 4096)
	// "The server MUST NOT preserve any negotiation state ... issued
	// before this command."
	h.structured, h.metaExport, h.meta = false, "", nil
	c.log.Debug("nbd: TLS started", "version", tls.VersionName(st.Version), "client_certificates", len(st.PeerCertificates))
	return optNext, nil
}

// tlsGate is FORCEDTLS's rule: before TLS only STARTTLS and ABORT are
// answered; it reports whether opt was refused.
func (h *handshake) tlsGate(opt uint32) (refused bool, res optResult, err error) {
	if !h.c.forceTLS || h.c.peer.TLS != nil || opt == optStartTLS || opt == optAbort {
		return false, optNext, nil
	}
	if opt == optExportName {
		h.c.log.Info("nbd: closing connection: NBD_OPT_EXPORT_NAME before STARTTLS on a listener that requires TLS")
		return true, optEnd, nil
	}
	return true, optNext, h.replyErr(opt, repErrTLSReqd, "this listener requires TLS: send NBD_OPT_STARTTLS first")
}
