package access

import (
	"strings"
	"testing"
)

func TestPolicy(t *testing.T) {
	p, err := New(Config{
		Admin:    []string{"uid:1001"},
		Operator: []string{"gid:2000", "cert:backup-host"},
		Reader:   []string{"uid:1003"},
		Grant:    []string{"gid:3000 operator a-*", "uid:1003 admin scratch"},
		TCPRole:  "reader",
		SelfUID:  999,
	})
	if err != nil {
		t.Fatal(err)
	}
	local := func(uid uint32, gids ...uint32) Caller { return Caller{Local: true, UID: uid, GIDs: gids} }
	for _, tc := range []struct {
		name   string
		c      Caller
		disk   string
		global Role
		onDisk Role
	}{
		{"root", local(0), "x", Admin, Admin},
		{"the daemon's user", local(999), "x", Admin, Admin},
		{"admin by uid", local(1001), "x", Admin, Admin},
		{"operator by group", local(1002, 100, 2000), "x", Operator, Operator},
		{"reader", local(1003), "x", Reader, Reader},
		{"reader granted admin on one disk", local(1003), "scratch", Reader, Admin},
		{"nobody", local(1004, 1004), "x", None, None},
		{"tenant on its disk", local(1005, 3000), "a-web", None, Operator},
		{"tenant on another's disk", local(1005, 3000), "b-web", None, None},
		{"uid principal does not match TCP", Caller{TCP: true, UID: 1001}, "x", Reader, Reader},
		{"TCP with a known certificate", Caller{TCP: true, Cert: "backup-host"}, "x", Operator, Operator},
		{"TCP with another certificate", Caller{TCP: true, Cert: "other"}, "x", Reader, Reader},
		{"unknown caller on the API", Caller{}, "x", None, None},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Role(tc.c); got != tc.global {
				t.Errorf("Role = %v, want %v", got, tc.global)
			}
			if got := p.RoleOn(tc.c, tc.disk); got != tc.onDisk {
				t.Errorf("RoleOn(%s) = %v, want %v", tc.disk, got, tc.onDisk)
			}
		})
	}
	if !p.HasGrants(local(1005, 3000)) || p.HasGrants(local(1004)) {
		t.Error("HasGrants wrong")
	}
}

func TestPolicyErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Admin: []string{"bob"}}, `admin: "bob": a principal is`},
		{Config{Reader: []string{"uid:x"}}, "x is not a number"},
		{Config{Operator: []string{"group:no-such-group-here"}}, "no group named no-such-group-here"},
		{Config{Grant: []string{"uid:1 operator"}}, "a grant is"},
		{Config{Grant: []string{"uid:1 boss vm1"}}, `"boss" is not a role`},
		{Config{Grant: []string{"uid:1 reader [vm"}}, "bad disk pattern"},
		{Config{TCPRole: "root"}, "nbd_tcp_role"},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}
