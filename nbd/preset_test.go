package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
	"golang.org/x/sys/unix"
)

// The transmission-only entry point, as the kernel's nbd driver uses it:
// the peer says nothing before its first request. The kernel itself is
// the real peer of this mode; it runs in the test VM (nbd/kernel's
// TestAttachInVM). Here the byte-level client plays it, over a real
// socketpair like the one cairnd hands the kernel.

// socketPair returns both ends of a Unix stream socketpair as net.Conns.
func socketPair(t *testing.T) (server, peer net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	t.Cleanup(func() { conns[0].Close(); conns[1].Close() })
	return conns[0], conns[1]
}

// presetClient is the byte-level client on a connection already in the
// transmission phase.
func presetClient(t *testing.T, nc net.Conn) *client {
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), bw: bufio.NewWriter(nc), reads: map[uint64]uint32{}}
}

// servePreset serves exp on one end of a socketpair and returns the
// client on the other end and the result of ServeTransmission.
func servePreset(t *testing.T, srv *nbd.Server, exp *nbd.Export, remote string) (*client, <-chan error) {
	t.Helper()
	server, peer := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTransmission(server, exp, remote) }()
	return presetClient(t, peer), done
}

func TestExportFlags(t *testing.T) {
	dev := blocktest.NewMemory(1 << 20)
	const (
		hasFlags, readOnly, sendFlush, sendFUA, sendTrim = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 5
		writeZeroes, sendDF, multiConn, cache, fastZero  = 1 << 6, 1 << 7, 1 << 8, 1 << 10, 1 << 11
	)
	for _, tc := range []struct {
		name string
		exp  nbd.Export
		want uint16
	}{
		{"writable", nbd.Export{Name: "rw", Device: dev},
			hasFlags | sendFlush | sendFUA | sendTrim | writeZeroes | cache | fastZero},
		{"writable multi-conn", nbd.Export{Name: "rw", Device: dev, MultiConn: true},
			hasFlags | sendFlush | sendFUA | sendTrim | writeZeroes | cache | fastZero | multiConn},
		{"read-only", nbd.Export{Name: "ro", Device: dev, ReadOnly: true, MultiConn: true},
			hasFlags | readOnly | cache | multiConn},
	} {
		got, err := tc.exp.Flags()
		if err != nil || got != tc.want {
			t.Errorf("%s: Flags() = %#x, %v; want %#x (never SEND_DF: no structured replies)", tc.name, got, err, tc.want)
		}
		if got&sendDF != 0 {
			t.Errorf("%s: SEND_DF offered without structured replies", tc.name)
		}
	}
	bad := nbd.Export{Name: "bad", Device: dev, MinBlock: 3}
	if _, err := bad.Flags(); err == nil {
		t.Error("Flags of an export with a 3-byte minimum block: no error")
	}
}

func TestServeTransmission(t *testing.T) {
	dev := blocktest.NewMemory(1 << 20)
	srv := nbd.NewServer(nbd.Options{Exporter: nbdtest.NewExports(), Logger: nbdtest.Logger(t)})
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	exp := &nbd.Export{Name: "disk", Device: dev, MultiConn: true}
	c, done := servePreset(t, srv, exp, "kernel:/dev/nbd7")

	// The first bytes are a request: no greeting comes first.
	data := bytes.Repeat([]byte("cairn"), 820)[:4096]
	if r := c.do(cCmdWrite, cFlagFUA, 8192, 4096, data); r.errno != 0 {
		t.Fatalf("WRITE: errno %d", r.errno)
	}
	if r := c.do(cCmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("FLUSH: errno %d", r.errno)
	}
	r := c.do(cCmdRead, 0, 8192, 4096, nil)
	if r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("READ: errno %d, data equal %v", r.errno, bytes.Equal(r.data, data))
	}
	if r := c.do(cCmdTrim, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("TRIM: errno %d", r.errno)
	}
	// Past the end: the size is the device's, as the peer was told.
	if r := c.do(cCmdRead, 0, 1<<20, 512, nil); r.errno != cEINVAL {
		t.Fatalf("READ past the end: errno %d, want EINVAL", r.errno)
	}
	// No structured replies, so no block status.
	if r := c.do(cCmdBlockStatus, 0, 0, 4096, nil); r.errno != cEINVAL {
		t.Fatalf("BLOCK_STATUS without structured replies: errno %d, want EINVAL", r.errno)
	}

	conns := srv.Connections()
	if len(conns) != 1 || conns[0].Export != "disk" || conns[0].Remote != "kernel:/dev/nbd7" {
		t.Fatalf("Connections() = %+v, want one on disk from kernel:/dev/nbd7", conns)
	}

	c.send(cCmdDisc, 0, 1, 0, 0, nil)
	c.flush()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ServeTransmission after DISC: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeTransmission did not return after NBD_CMD_DISC")
	}
	if !c.closed() {
		t.Fatal("the connection is still open after NBD_CMD_DISC")
	}
	if n := len(srv.Connections()); n != 0 {
		t.Fatalf("%d connections listed after the end", n)
	}
}

func TestServeTransmissionReadOnly(t *testing.T) {
	dev := blocktest.NewMemory(1 << 20)
	srv := nbd.NewServer(nbd.Options{Exporter: nbdtest.NewExports(), Logger: nbdtest.Logger(t)})
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	c, _ := servePreset(t, srv, &nbd.Export{Name: "disk@s1", Device: dev, ReadOnly: true}, "")
	for _, req := range []struct {
		name string
		typ  uint16
		data []byte
	}{{"WRITE", cCmdWrite, make([]byte, 512)}, {"TRIM", cCmdTrim, nil}, {"WRITE_ZEROES", cCmdWriteZeroes, nil}} {
		if r := c.do(req.typ, 0, 0, 512, req.data); r.errno != cEPERM {
			t.Errorf("%s on a read-only export: errno %d, want EPERM", req.name, r.errno)
		}
	}
	if r := c.do(cCmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Errorf("READ on the read-only export: errno %d", r.errno)
	}
}

func TestServeTransmissionStops(t *testing.T) {
	dev := blocktest.NewMemory(1 << 20)
	srv := nbd.NewServer(nbd.Options{Exporter: nbdtest.NewExports(), Logger: nbdtest.Logger(t)})
	exp := &nbd.Export{Name: "disk", Device: dev}

	// A misconfigured export is refused before anything is served.
	server, peer := socketPair(t)
	if err := srv.ServeTransmission(server, &nbd.Export{Name: "bad", Device: dev, MinBlock: 3}, ""); err == nil {
		t.Fatal("ServeTransmission of a misconfigured export: no error")
	}
	if !presetClient(t, peer).closed() {
		t.Fatal("the socket of a refused export stayed open")
	}

	// Disconnect by export name stops it as it stops negotiated clients.
	c, done := servePreset(t, srv, exp, "")
	if r := c.do(cCmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatalf("READ: errno %d", r.errno)
	}
	if n := srv.Disconnect(context.Background(), "disk"); n != 1 {
		t.Fatalf("Disconnect closed %d connections, want 1", n)
	}
	<-done
	if !c.closed() {
		t.Fatal("still open after Disconnect")
	}

	// Shutdown stops it, and refuses new ones.
	c, done = servePreset(t, srv, exp, "")
	if r := c.do(cCmdRead, 0, 0, 512, nil); r.errno != 0 { // served, so listed
		t.Fatalf("READ: errno %d", r.errno)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	server, _ = socketPair(t)
	if err := srv.ServeTransmission(server, exp, ""); !errors.Is(err, block.ErrShutdown) {
		t.Fatalf("ServeTransmission after Shutdown: %v, want block.ErrShutdown", err)
	}
}
