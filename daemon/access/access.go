// Package access decides what a caller of cairnd may do: the roles
// (admin, operator, reader), who holds them (users, groups, TLS client
// certificates) and per-disk grants. It holds no I/O beyond resolving user
// and group names once, when the policy is built; callers identify
// themselves through the kernel (peercred) or a verified certificate, never
// by what they claim.
//
// Roles, each including the one below it:
//
//   - reader: list and show disks, snapshots, exports, tasks, capacity;
//     changed-block reads; NBD exports read-only.
//   - operator: + create and grow disks (not adopt), create, delete and
//     roll back snapshots, verify; NBD exports read-write.
//   - admin: + delete disks, adopt existing files and devices.
//
// Root and the daemon's own user are always admin.
package access

import (
	"fmt"
	"os/user"
	"path"
	"strconv"
	"strings"
)

// Role is what a caller may do; each role includes the ones below it.
type Role int

const (
	None Role = iota
	Reader
	Operator
	Admin
)

var roleNames = [...]string{"none", "reader", "operator", "admin"}

func (r Role) String() string {
	if r < None || r > Admin {
		return "role(" + strconv.Itoa(int(r)) + ")"
	}
	return roleNames[r]
}

// ParseRole parses none, reader, operator or admin.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if s == n {
			return Role(i), nil
		}
	}
	return None, fmt.Errorf("%q is not a role: want admin, operator, reader or none", s)
}

// Caller is who makes a request.
type Caller struct {
	// Local: UID and GIDs come from the kernel (a Unix socket's peer).
	Local bool
	UID   uint32
	GIDs  []uint32 // primary and supplementary groups
	// TCP: an NBD client over TCP (its role is TCPRole unless its
	// certificate names it).
	TCP bool
	// Cert is the common name of a TLS client certificate the daemon
	// verified against its CA; "" when there is none.
	Cert string
}

func (c Caller) inGroup(gid uint32) bool {
	for _, g := range c.GIDs {
		if g == gid {
			return true
		}
	}
	return false
}

// String names the caller for logs: "uid 1000", "cert web1", "anonymous".
func (c Caller) String() string {
	switch {
	case c.Local:
		return "uid " + strconv.FormatUint(uint64(c.UID), 10)
	case c.Cert != "":
		return "cert " + c.Cert
	case c.TCP:
		return "a TCP client"
	}
	return "anonymous"
}

// principal is one way of naming callers: uid:N, user:NAME, gid:N,
// group:NAME or cert:CN (names resolved when the policy is built).
type principal struct {
	kind string // "uid", "gid" or "cert"
	id   uint32
	cn   string
}

func (p principal) matches(c Caller) bool {
	switch p.kind {
	case "uid":
		return c.Local && c.UID == p.id
	case "gid":
		return c.Local && c.inGroup(p.id)
	case "cert":
		return c.Cert != "" && c.Cert == p.cn
	}
	return false
}

// PrincipalSyntax is how a principal is written, for error messages.
const PrincipalSyntax = "uid:N, user:NAME, gid:N, group:NAME or cert:COMMON-NAME"

func parsePrincipal(s string) (principal, error) {
	kind, val, ok := strings.Cut(s, ":")
	if !ok || val == "" {
		return principal{}, fmt.Errorf("%q: a principal is %s", s, PrincipalSyntax)
	}
	switch kind {
	case "uid", "gid":
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil {
			return principal{}, fmt.Errorf("%q: %s is not a number", s, val)
		}
		return principal{kind: kind, id: uint32(n)}, nil
	case "user":
		u, err := user.Lookup(val)
		if err != nil {
			return principal{}, fmt.Errorf("%q: no user named %s", s, val)
		}
		n, _ := strconv.ParseUint(u.Uid, 10, 32)
		return principal{kind: "uid", id: uint32(n)}, nil
	case "group":
		g, err := user.LookupGroup(val)
		if err != nil {
			return principal{}, fmt.Errorf("%q: no group named %s", s, val)
		}
		n, _ := strconv.ParseUint(g.Gid, 10, 32)
		return principal{kind: "gid", id: uint32(n)}, nil
	case "cert":
		return principal{kind: "cert", cn: val}, nil
	}
	return principal{}, fmt.Errorf("%q: a principal is %s", s, PrincipalSyntax)
}

// grant gives a principal a role on the disks whose names match pattern.
type grant struct {
	who     principal
	role    Role
	pattern string // path.Match syntax over disk names
}

// GrantSyntax is how a grant is written, for error messages.
const GrantSyntax = "\"PRINCIPAL ROLE DISKS\", such as \"group:tenant-a operator a-*\" (DISKS is a disk name or a pattern with * ? [...])"

func parseGrant(s string) (grant, error) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return grant{}, fmt.Errorf("%q: a grant is %s", s, GrantSyntax)
	}
	who, err := parsePrincipal(f[0])
	if err != nil {
		return grant{}, err
	}
	role, err := ParseRole(f[1])
	if err != nil {
		return grant{}, fmt.Errorf("%q: %v", s, err)
	}
	if _, err := path.Match(f[2], ""); err != nil {
		return grant{}, fmt.Errorf("%q: bad disk pattern %s", s, f[2])
	}
	return grant{who: who, role: role, pattern: f[2]}, nil
}

// Config is what a Policy is built from: cairnd's settings.
type Config struct {
	Admin, Operator, Reader []string // principals
	Grant                   []string // grants
	// TCPRole is the role of an NBD client over TCP whose certificate (if
	// any) names no principal above: "" is operator.
	TCPRole string
	// SelfUID is the daemon's own user, always admin (as is root).
	SelfUID uint32
}

// Policy answers who may do what. It does not change once built.
type Policy struct {
	roles   [Admin + 1][]principal // by role
	grants  []grant
	tcpRole Role
	selfUID uint32
}

// New builds a policy, resolving user and group names now. The error
// names every entry that does not parse or resolve.
func New(cfg Config) (*Policy, error) {
	p := &Policy{selfUID: cfg.SelfUID, tcpRole: Operator}
	var errs []string
	for role, list := range map[Role][]string{Admin: cfg.Admin, Operator: cfg.Operator, Reader: cfg.Reader} {
		for _, s := range list {
			pr, err := parsePrincipal(s)
			if err != nil {
				errs = append(errs, role.String()+": "+err.Error())
				continue
			}
			p.roles[role] = append(p.roles[role], pr)
		}
	}
	for _, s := range cfg.Grant {
		g, err := parseGrant(s)
		if err != nil {
			errs = append(errs, "grant: "+err.Error())
			continue
		}
		p.grants = append(p.grants, g)
	}
	if cfg.TCPRole != "" {
		r, err := ParseRole(cfg.TCPRole)
		if err != nil {
			errs = append(errs, "nbd_tcp_role: "+err.Error())
		}
		p.tcpRole = r
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return p, nil
}

// Role is the caller's role on everything (grants aside).
func (p *Policy) Role(c Caller) Role {
	if c.Local && (c.UID == 0 || c.UID == p.selfUID) {
		return Admin
	}
	for r := Admin; r > None; r-- {
		for _, pr := range p.roles[r] {
			if pr.matches(c) {
				return r
			}
		}
	}
	if c.TCP {
		return p.tcpRole
	}
	return None
}

// RoleOn is the caller's role on one disk: its role, or a grant's on
// that disk, whichever is higher.
func (p *Policy) RoleOn(c Caller, disk string) Role {
	r := p.Role(c)
	for _, g := range p.grants {
		if g.role > r && g.who.matches(c) {
			if ok, _ := path.Match(g.pattern, disk); ok {
				r = g.role
			}
		}
	}
	return r
}

// HasGrants reports whether the caller holds a grant on some disk (it may
// then list what it is granted even without a role of its own).
func (p *Policy) HasGrants(c Caller) bool {
	for _, g := range p.grants {
		if g.role > None && g.who.matches(c) {
			return true
		}
	}
	return false
}
