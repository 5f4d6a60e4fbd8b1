package daemon

import (
	"context"
	"net"
	"net/http"
	"strconv"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/internal/peercred"
)

// Who may call what (package access has the roles), and the audit log:
// every API call is logged with who made it, what it asked, on what, and
// how it ended (under systemd the attributes are journal fields:
// CALLER_UID=, ACTION=, TARGET=, RESULT=).

// scope says what a route's role is checked on.
type scope int

const (
	onAll  scope = iota // the caller's own role
	onDisk              // its role on the disk in the path ({name})
	onList              // a reader, or anyone with a grant: the handler lists what it may see
	onBody              // the handler checks, once it knows the disk from the body
)

type callerKey struct{}

// withCaller is the API server's ConnContext: it records who is at the
// other end of the connection, as the kernel says (SO_PEERCRED).
func withCaller(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, callerKey{}, callerOf(c))
}

// callerOf identifies a Unix socket's peer; a connection whose peer the
// kernel cannot name is an anonymous caller, with no role.
func callerOf(c net.Conn) access.Caller {
	cred, err := peercred.Of(c)
	if err != nil {
		return access.Caller{}
	}
	return access.Caller{Local: true, UID: cred.UID, GIDs: append([]uint32{cred.GID}, cred.Groups...)}
}

func callerFrom(ctx context.Context) access.Caller {
	c, _ := ctx.Value(callerKey{}).(access.Caller)
	return c
}

// callerUID is the audit log's caller_uid: the uid, or -1 when unknown.
func callerUID(c access.Caller) int64 {
	if !c.Local {
		return -1
	}
	return int64(c.UID)
}

// denied is the 403 of a call the caller's role does not allow; it names
// the role needed.
func denied(c access.Caller, have, need access.Role, action, disk string) error {
	on := ""
	if disk != "" {
		on = " on disk " + strconv.Quote(disk)
	}
	return errorf(block.ErrDenied, "%s needs the %s role%s; %s has %s (docs/security.md: roles)", action, need, on, c, roleText(have))
}

func roleText(r access.Role) string {
	if r == access.None {
		return "no role"
	}
	return "the " + r.String() + " role"
}

// authorize checks that the request's caller holds need, on disk when it
// is not "" (a grant on the disk counts), else on everything.
func (d *Daemon) authorize(r *http.Request, need access.Role, action, disk string) error {
	c := callerFrom(r.Context())
	have := d.policy.Role(c)
	if disk != "" {
		have = d.policy.RoleOn(c, disk)
	}
	if have < need {
		return denied(c, have, need, action, disk)
	}
	return nil
}

// mayRead reports whether the request's caller may see the disk (list
// endpoints show only those).
func (d *Daemon) mayRead(r *http.Request, disk string) bool {
	return d.policy.RoleOn(callerFrom(r.Context()), disk) >= access.Reader
}

// checkRoute applies a route's role before its handler runs.
func (d *Daemon) checkRoute(rt route, r *http.Request) error {
	switch rt.scope {
	case onAll:
		return d.authorize(r, rt.need, rt.action, "")
	case onDisk:
		return d.authorize(r, rt.need, rt.action, r.PathValue("name"))
	case onList:
		c := callerFrom(r.Context())
		if d.policy.Role(c) < rt.need && !d.policy.HasGrants(c) {
			return denied(c, d.policy.Role(c), rt.need, rt.action, "")
		}
	}
	return nil
}

// auditTarget is what a call acts on, for the audit log.
func auditTarget(r *http.Request) string {
	t := r.PathValue("name")
	if s := r.PathValue("snapshot"); s != "" {
		t += "@" + s
	}
	if id := r.PathValue("id"); id != "" {
		t = id
	}
	return t
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// auditKey carries the target a handler learns from the body (onBody).
type auditKey struct{}

// setAuditTarget records the target of a call whose body names it.
func setAuditTarget(r *http.Request, target string) {
	if p, ok := r.Context().Value(auditKey{}).(*string); ok {
		*p = target
	}
}

// audit logs one API call.
func (d *Daemon) audit(r *http.Request, action, target string, status int, err error) {
	c := callerFrom(r.Context())
	result := "ok"
	if err != nil {
		e, _ := apiError(err)
		result = e.Code
	}
	d.log.Info("api call", "caller_uid", callerUID(c), "action", action, "target", target, "result", result, "status", status,
		"method", r.Method, "path", r.URL.Path)
}
