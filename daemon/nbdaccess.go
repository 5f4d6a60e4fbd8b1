package daemon

import (
	"context"
	"fmt"
	"path"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/internal/peercred"
	"github.com/cairn-storage/cairn/nbd"
)

// Who may open which NBD export: a Unix socket's client is known by its
// peer credentials, a TCP client by its verified TLS client certificate
// (cert:CN) or else gets nbd_tcp_role. Writing needs the operator role on
// the disk; a reader opens the live disk read-only; without a role the
// export does not open (and is not listed). Over TCP, an export that
// tls_required names opens only after STARTTLS.

// nbdCaller identifies the client of an NBD connection.
func nbdCaller(ctx context.Context) access.Caller {
	p := nbd.PeerFrom(ctx)
	if p == nil {
		return access.Caller{}
	}
	if cred, err := peercred.Of(p.Conn); err == nil {
		return access.Caller{Local: true, UID: cred.UID, GIDs: append([]uint32{cred.GID}, cred.Groups...)}
	}
	c := access.Caller{TCP: true}
	if p.TLS != nil && len(p.TLS.VerifiedChains) > 0 {
		c.Cert = p.TLS.PeerCertificates[0].Subject.CommonName
	}
	return c
}

// nbdAccess decides whether the client of ctx may open the export, and
// whether only read-only.
func (d *Daemon) nbdAccess(ctx context.Context, name exportName) (readOnly bool, err error) {
	who := nbdCaller(ctx)
	if who.TCP && d.tlsRequired(name) {
		if p := nbd.PeerFrom(ctx); p == nil || p.TLS == nil {
			return false, fmt.Errorf("%w: %s", nbd.ErrTLSRequired, name)
		}
	}
	role := d.policy.RoleOn(who, name.disk)
	d.log.Info("nbd open", "caller_uid", callerUID(who), "caller", who.String(), "action", "nbd.open", "target", name.String(), "role", role.String())
	switch {
	case role >= access.Operator:
		return false, nil
	case role == access.Reader:
		return true, nil
	}
	return false, errorf(block.ErrDenied, "export %s: %s has no role on disk %q (reading needs the reader role, writing the operator role)", name, who, name.disk)
}

// tlsRequired reports whether tls_required names the export.
func (d *Daemon) tlsRequired(name exportName) bool {
	for _, p := range d.cfg.TLSRequired {
		if ok, _ := path.Match(p, name.String()); ok {
			return true
		}
	}
	return false
}
