package peercred

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The credentials of a real connection are this process's own.
func TestOf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			buf := make([]byte, 1)
			c.Read(buf)
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred, err := Of(c)
	if err != nil {
		t.Fatal(err)
	}
	if cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) || cred.PID != int32(os.Getpid()) {
		t.Fatalf("cred %+v, want uid %d gid %d pid %d", cred, os.Getuid(), os.Getgid(), os.Getpid())
	}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		if !slices.Contains(cred.Groups, uint32(g)) || !cred.InGroup(uint32(g)) {
			t.Errorf("supplementary group %d missing from %v", g, cred.Groups)
		}
	}
	if _, err := Of(&net.TCPConn{}); err != ErrNotUnix {
		t.Errorf("Of(TCP) = %v, want ErrNotUnix", err)
	}
}
