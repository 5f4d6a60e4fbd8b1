package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// Transmission phase, byte by byte, with the raw client.

func TestReadWriteRoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, structured := range []bool{true, false} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			c := open(t, f.sock, "disk", structured)
			data := bytes.Repeat([]byte("cairn!"), 40000)[:200000]
			if r := c.do(cCmdWrite, cFlagFUA, 4096, uint32(len(data)), data); r.errno != 0 {
				t.Fatalf("write: %v", r)
			}
			r := c.do(cCmdRead, 0, 4096, uint32(len(data)), nil)
			if r.errno != 0 || !bytes.Equal(r.data, data) {
				t.Fatalf("read back: %v, equal=%v", r, bytes.Equal(r.data, data))
			}
			got := make([]byte, len(data))
			f.disk.ReadAt(context.Background(), got, 4096)
			if !bytes.Equal(got, data) {
				t.Fatal("backing file does not hold what was written")
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	tests := []struct {
		name       string
		export     string
		typ, flags uint16
		off        uint64
		length     uint32
		payload    bool // a WRITE that sends its data (which must be skipped)
		want       uint32
	}{
		{"unknown command", "disk", 99, 0, 0, 0, false, cEINVAL},
		{"unknown flag", "disk", cCmdRead, 1 << 9, 0, 512, false, cEINVAL},
		{"REQ_ONE on read", "disk", cCmdRead, cFlagReqOne, 0, 512, false, cEINVAL},
		{"read past end", "disk", cCmdRead, 0, fixtureSize - 512, 1024, false, cEINVAL},
		{"read offset past end", "disk", cCmdRead, 0, 1 << 62, 512, false, cEINVAL},
		{"read offset overflows", "disk", cCmdRead, 0, ^uint64(0) - 10, 512, false, cEINVAL},
		{"write past end", "disk", cCmdWrite, 0, fixtureSize - 512, 1024, true, cENOSPC},
		{"zero past end", "disk", cCmdWriteZeroes, 0, fixtureSize, 1, false, cENOSPC},
		{"trim past end", "disk", cCmdTrim, 0, fixtureSize, 1, false, cEINVAL},
		{"cache past end", "disk", cCmdCache, 0, fixtureSize, 1, false, cEINVAL},
		{"read over 32 MiB", "disk", cCmdRead, 0, 0, 32<<20 + 1, false, cEINVAL},
		{"write over 32 MiB", "disk", cCmdWrite, 0, 0, 32<<20 + 512, true, cEINVAL},
		{"misaligned read", "mem", cCmdRead, 0, 100, 512, false, cEINVAL},
		{"misaligned write length", "mem", cCmdWrite, 0, 0, 100, true, cEINVAL},
		{"misaligned trim", "mem", cCmdTrim, 0, 512, 513, false, cEINVAL},
		{"write to read-only", "ro", cCmdWrite, 0, 0, 4096, true, cEPERM},
		{"trim read-only", "ro", cCmdTrim, 0, 0, 4096, false, cEPERM},
		{"zero read-only", "ro", cCmdWriteZeroes, 0, 0, 4096, false, cEPERM},
		{"block status without contexts", "disk", cCmdBlockStatus, 0, 0, 4096, false, cEINVAL},
	}
	f := newFixture(t)
	for _, tt := range tests {
		for _, structured := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/structured=%v", tt.name, structured), func(t *testing.T) {
				c := open(t, f.sock, tt.export, structured)
				var data []byte
				if tt.payload {
					data = bytes.Repeat([]byte{0xcc}, int(tt.length))
				}
				r := c.do(tt.typ, tt.flags, tt.off, tt.length, data)
				if r.errno != tt.want {
					t.Fatalf("%v, want errno %d", r, tt.want)
				}
				if structured && r.msg == "" {
					t.Error("structured error without a message")
				}
				// The connection lives on and has skipped any payload.
				if r := c.do(cCmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
					t.Fatalf("read after the error: %v", r)
				}
			})
		}
	}
	if got := f.disk.Size(); got != fixtureSize {
		t.Fatalf("a refused request changed the size to %d", got)
	}
}

func TestProtocolViolationsClose(t *testing.T) {
	tests := []struct {
		name string
		send func(c *client)
	}{
		{"bad request magic", func(c *client) {
			c.write(bytes.Repeat([]byte{0x42}, 28))
		}},
		{"invalid write too long to skip", func(c *client) {
			c.send(cCmdWrite, 0, 1, 0, 1<<30, nil)
		}},
	}
	f := newFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := open(t, f.sock, "disk", true)
			c := open(t, f.sock, "disk", true)
			tt.send(c)
			c.flush()
			if !c.closed() {
				t.Fatal("connection still open")
			}
			if r := other.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
				t.Fatalf("another connection was affected: %v", r)
			}
		})
	}
}

func TestDisconnectMidRequest(t *testing.T) {
	f := newFixture(t)
	c := open(t, f.sock, "disk", true)
	c.send(cCmdWrite, 0, 1, 0, 65536, make([]byte, 1000)) // header and part of the data
	c.flush()
	c.nc.Close()
	waitFor(t, "the server to drop the connection", func() bool { return len(f.srv.Connections()) == 0 })
	c2 := open(t, f.sock, "disk", true)
	if r := c2.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("read on a new connection: %v", r)
	}
}

func TestSparseRead(t *testing.T) {
	f := newFixture(t)
	c := open(t, f.sock, "mem", true)
	data := bytes.Repeat([]byte{7}, 8192)
	if r := c.do(cCmdWrite, 0, 128<<10, 8192, data); r.errno != 0 {
		t.Fatal(r)
	}
	want := make([]byte, 256<<10)
	copy(want[128<<10:], data)
	tests := []struct {
		name   string
		flags  uint16
		chunks []uint16
	}{
		{"holes as hole chunks", 0, []uint16{cChunkOffsetHole, cChunkOffsetData, cChunkOffsetHole}},
		{"DF: one data chunk", cFlagDF, []uint16{cChunkOffsetData}},
	}
	for _, tt := range tests {
		r := c.do(cCmdRead, tt.flags, 0, 256<<10, nil)
		if r.errno != 0 || !bytes.Equal(r.data, want) {
			t.Fatalf("%s: %v, content equal=%v", tt.name, r, bytes.Equal(r.data, want))
		}
		if !slices.Equal(r.chunks, tt.chunks) {
			t.Errorf("%s: chunks %v, want %v", tt.name, r.chunks, tt.chunks)
		}
	}
	simple := open(t, f.sock, "mem", false)
	if r := simple.do(cCmdRead, 0, 0, 256<<10, nil); !bytes.Equal(r.data, want) {
		t.Fatal("simple read differs")
	}
}

func TestBlockStatus(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	c.structuredReplies()
	ids := c.setMeta("mem", "base:allocation", "qemu:dirty-bitmap:x")
	c.goExport("mem")
	byName := map[string]uint32{}
	for id, name := range ids {
		byName[name] = id
	}
	if r := c.do(cCmdWrite, 0, 0, 8192, make([]byte, 8192)); r.errno != 0 {
		t.Fatal(r)
	}
	// dirty ranges: [64K, 128K) and [1M, 1M+128K)
	tests := []struct {
		name        string
		flags       uint16
		off         uint64
		length      uint32
		alloc, dirt [][2]uint32
	}{
		{"whole", 0, 0, 1 << 20, [][2]uint32{{8192, 0}, {1<<20 - 8192, 3}}, [][2]uint32{{64 << 10, 0}, {64 << 10, 1}, {1<<20 - 128<<10, 0}}},
		{"clipped", 0, 4096, 96 << 10, [][2]uint32{{4096, 0}, {92 << 10, 3}}, [][2]uint32{{60 << 10, 0}, {36 << 10, 1}}},
		{"REQ_ONE", cFlagReqOne, 0, 1 << 20, [][2]uint32{{8192, 0}}, [][2]uint32{{64 << 10, 0}}},
		{"REQ_ONE clipped", cFlagReqOne, 64 << 10, 1024, [][2]uint32{{1024, 3}}, [][2]uint32{{1024, 1}}},
		{"end of export", 0, fixtureSize - 4096, 4096, [][2]uint32{{4096, 3}}, [][2]uint32{{4096, 0}}},
	}
	for _, tt := range tests {
		r := c.do(cCmdBlockStatus, tt.flags, tt.off, tt.length, nil)
		if r.errno != 0 {
			t.Fatalf("%s: %v", tt.name, r)
		}
		if len(r.chunks) != 2 {
			t.Errorf("%s: %d chunks, want one per context", tt.name, len(r.chunks))
		}
		if got := r.status[byName["base:allocation"]]; !slices.Equal(got, tt.alloc) {
			t.Errorf("%s: base:allocation %v, want %v", tt.name, got, tt.alloc)
		}
		if got := r.status[byName["qemu:dirty-bitmap:x"]]; !slices.Equal(got, tt.dirt) {
			t.Errorf("%s: dirty bitmap %v, want %v", tt.name, got, tt.dirt)
		}
	}
}

// hookedFixture serves one export whose backend calls hook first.
func hookedFixture(t *testing.T, opts nbd.Options, hook func(ctx context.Context, op blocktest.Op, off, length int64) error) (string, *nbd.Server, *blocktest.Memory) {
	t.Helper()
	mem := blocktest.NewMemory(8 << 20)
	exp := &nbd.Export{Name: "h", Device: &blocktest.Hooked{Device: mem, Before: hook}}
	sock, srv := nbdtest.Serve(t, nbdtest.NewExports(exp), opts)
	return sock, srv, mem
}

// gate holds backend calls until opened, and says when one arrives.
type gate struct {
	arrived chan int64
	open    chan struct{}
}

func newGate() *gate { return &gate{arrived: make(chan int64, 100), open: make(chan struct{})} }

func (g *gate) hold(off int64) {
	g.arrived <- off
	<-g.open
}

func TestRepliesOutOfOrder(t *testing.T) {
	g := newGate()
	sock, _, _ := hookedFixture(t, nbd.Options{}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		if op == blocktest.OpRead && off == 0 {
			g.hold(off)
		}
		return nil
	})
	c := open(t, sock, "h", true)
	c.send(cCmdRead, 0, 1, 0, 4096, nil)
	c.flush()
	readOvertakes(t, c, g)
}

// readOvertakes checks that while the request with cookie 1 is held in
// the backend by g, a read (cookie 2) is answered; then it releases g and
// expects request 1's reply.
func readOvertakes(t *testing.T, c *client, g *gate) {
	t.Helper()
	<-g.arrived
	c.send(cCmdRead, 0, 2, 4096, 4096, nil)
	c.flush()
	if r := c.reply(); r.cookie != 2 {
		t.Fatalf("first reply is for cookie %d; the held request blocked the read", r.cookie)
	}
	close(g.open)
	if r := c.reply(); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("held request's reply: cookie %d errno %d", r.cookie, r.errno)
	}
}

func TestFlushWaitsForEarlierWrites(t *testing.T) {
	g := newGate()
	var mu sync.Mutex
	var events []string
	record := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	sock, _, _ := hookedFixture(t, nbd.Options{WritesOnWorkers: true}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		switch op {
		case blocktest.OpWrite:
			g.hold(off)
			record("write done")
		case blocktest.OpFlush:
			record("flush")
		}
		return nil
	})
	c := open(t, sock, "h", true)
	c.send(cCmdWrite, 0, 1, 0, 512, make([]byte, 512))
	c.send(cCmdFlush, 0, 2, 0, 0, nil)
	c.flush()
	<-g.arrived
	// The FLUSH must not reach the backend while the write is held: give
	// it every chance to (a correct server blocks here regardless).
	c.send(cCmdRead, 0, 3, 0, 512, nil)
	c.flush()
	if r := c.reply(); r.cookie != 3 {
		t.Fatalf("reply for cookie %d while the write was held", r.cookie)
	}
	close(g.open)
	got := map[uint64]uint32{}
	for range 2 {
		r := c.reply()
		got[r.cookie] = r.errno
	}
	if got[1] != 0 || got[2] != 0 {
		t.Fatalf("write/flush errnos %v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(events, []string{"write done", "flush"}) {
		t.Fatalf("backend saw %q, want the write to complete before the flush", events)
	}
}

func TestBackendFailures(t *testing.T) {
	tests := []struct {
		name       string
		typ, flags uint16
		op         blocktest.Op // the backend call that fails
		fail       func() error // how it fails
		want       uint32
	}{
		{"read panics", cCmdRead, 0, blocktest.OpRead, func() error { panic("backend bug") }, cEIO},
		{"read fails", cCmdRead, 0, blocktest.OpRead, func() error { return errors.New("disk on fire") }, cEIO},
		{"write no space", cCmdWrite, 0, blocktest.OpWrite, func() error { return fmt.Errorf("quota: %w", block.ErrNoSpace) }, cENOSPC},
		{"write read-only", cCmdWrite, 0, blocktest.OpWrite, func() error { return block.ErrReadOnly }, cEPERM},
		{"fast zero not fast", cCmdWriteZeroes, cFlagFastZero, blocktest.OpZero, func() error { return block.ErrNotFast }, cENOTSUP},
		{"trim invalid", cCmdTrim, 0, blocktest.OpTrim, func() error { return block.ErrInvalid }, cEINVAL},
		{"flush panics", cCmdFlush, 0, blocktest.OpFlush, func() error { panic(errors.New("flush bug")) }, cEIO},
		{"shutting down", cCmdRead, 0, blocktest.OpRead, func() error { return block.ErrShutdown }, cESHUTDWN},
	}
	for _, tt := range tests {
		for _, structured := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/structured=%v", tt.name, structured), func(t *testing.T) {
				sock, _, _ := hookedFixture(t, nbd.Options{}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
					if op == tt.op && off == 4096 || op == tt.op && op == blocktest.OpFlush {
						return tt.fail()
					}
					return nil
				})
				c := open(t, sock, "h", structured)
				off, length := uint64(4096), uint32(4096)
				var data []byte
				switch tt.typ {
				case cCmdFlush:
					off, length = 0, 0
				case cCmdWrite:
					data = make([]byte, length)
				}
				if r := c.do(tt.typ, tt.flags, off, length, data); r.errno != tt.want {
					t.Fatalf("%v, want errno %d", r, tt.want)
				}
				if r := c.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
					t.Fatalf("connection broken after the failure: %v", r)
				}
			})
		}
	}
}

func TestInFlightBound(t *testing.T) {
	const limit = 4
	g := newGate()
	sock, _, _ := hookedFixture(t, nbd.Options{MaxInFlight: limit}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		if op == blocktest.OpRead {
			g.hold(off)
		}
		return nil
	})
	c := open(t, sock, "h", true)
	for i := range 3 * limit {
		c.send(cCmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
	}
	c.flush()
	for range limit {
		<-g.arrived
	}
	select {
	case off := <-g.arrived:
		t.Fatalf("request at %d reached the backend beyond the in-flight limit of %d", off, limit)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.open)
	for range 3 * limit {
		if r := c.reply(); r.errno != 0 {
			t.Fatalf("reply %v", r)
		}
	}
}

func TestShutdownAnswersInFlight(t *testing.T) {
	g := newGate()
	flushed := make(chan struct{}, 10)
	sock, srv, mem := hookedFixture(t, nbd.Options{}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		switch {
		case op == blocktest.OpWrite && off == 8192:
			g.hold(off)
		case op == blocktest.OpFlush:
			flushed <- struct{}{}
		}
		return nil
	})
	c := open(t, sock, "h", true)
	negotiating := dial(t, sock)
	c.send(cCmdWrite, 0, 1, 8192, 4096, bytes.Repeat([]byte{9}, 4096))
	c.flush()
	<-g.arrived
	done := make(chan error)
	go func() { done <- srv.Shutdown(context.Background()) }()
	waitFor(t, "the listener to close", func() bool { _, err := dialErr(sock); return err != nil })
	close(g.open)
	if r := c.reply(); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("in-flight write answered %v", r)
	}
	if !c.closed() {
		t.Fatal("connection open after shutdown")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !negotiating.closed() {
		t.Fatal("a negotiating connection survived shutdown")
	}
	select {
	case <-flushed:
	default:
		t.Fatal("shutdown did not flush the written export")
	}
	if mem.Bytes()[8192] != 9 {
		t.Fatal("the write was lost")
	}
}

func TestShutdownDeadline(t *testing.T) {
	g := newGate()
	sock, srv, _ := hookedFixture(t, nbd.Options{}, func(ctx context.Context, op blocktest.Op, off, _ int64) error {
		if op == blocktest.OpRead {
			g.arrived <- off
			<-ctx.Done() // hangs until the connection is killed
			return ctx.Err()
		}
		return nil
	})
	c := open(t, sock, "h", true)
	c.send(cCmdRead, 0, 1, 0, 4096, nil)
	c.flush()
	<-g.arrived
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a hung backend: %v, want deadline exceeded", err)
	}
	if !c.closed() {
		t.Fatal("connection survived a forced shutdown")
	}
}

func TestDisconnectAndConnections(t *testing.T) {
	f := newFixture(t)
	d1 := open(t, f.sock, "disk", true)
	d2 := open(t, f.sock, "disk", false)
	ro := open(t, f.sock, "ro", true)
	negotiating := dial(t, f.sock)
	conns := f.srv.Connections()
	count := map[string]int{}
	for _, ci := range conns {
		count[ci.Export]++
		if ci.Export == "ro" != ci.ReadOnly {
			t.Errorf("%+v: ReadOnly does not match the export", ci)
		}
		if ci.Remote != fmt.Sprintf("unix:pid=%d,uid=%d", os.Getpid(), os.Getuid()) || ci.Since.IsZero() || ci.ID == 0 {
			t.Errorf("%+v: missing fields", ci)
		}
	}
	if count["disk"] != 2 || count["ro"] != 1 || count[""] != 1 {
		t.Fatalf("Connections: %+v", conns)
	}
	if n := f.srv.Disconnect(context.Background(), "disk"); n != 2 {
		t.Fatalf("Disconnect closed %d, want 2", n)
	}
	if !d1.closed() || !d2.closed() {
		t.Fatal("disk connections still open")
	}
	if r := ro.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("ro connection affected: %v", r)
	}
	negotiating.goExport("disk")
	if n := f.srv.Disconnect(context.Background(), "nope"); n != 0 {
		t.Fatalf("Disconnect of an unused export closed %d", n)
	}
}

func TestCommandsReachBackend(t *testing.T) {
	f := newFixture(t)
	c := open(t, f.sock, "mem", true)
	fill := bytes.Repeat([]byte{1}, 64<<10)
	steps := []struct {
		typ, flags uint16
		off        uint64
		length     uint32
		data       []byte
	}{
		{cCmdWrite, cFlagFUA, 0, 64 << 10, fill},
		{cCmdWriteZeroes, cFlagNoHole, 0, 4096, nil},
		{cCmdWriteZeroes, cFlagFastZero, 8192, 4096, nil},
		{cCmdTrim, 0, 16384, 8192, nil},
		{cCmdCache, 0, 0, 64 << 10, nil},
		{cCmdFlush, 0, 0, 0, nil},
		{cCmdWriteZeroes, 0, 0, 0, nil},
	}
	for _, s := range steps {
		if r := c.do(s.typ, s.flags, s.off, s.length, s.data); r.errno != 0 {
			t.Fatalf("command %d: %v", s.typ, r)
		}
	}
	want := slices.Clone(fill)
	clear(want[0:4096])
	clear(want[8192:12288])
	clear(want[16384:24576])
	if !bytes.Equal(f.mem.Bytes()[:64<<10], want) {
		t.Fatal("backend content differs from the commands' effect")
	}
}

// tryBackend is a Memory whose TryReadAt answers as try says.
type tryBackend struct {
	*blocktest.Memory
	try func(off int64) bool
}

func (b tryBackend) TryReadAt(p []byte, off int64) bool {
	if !b.try(off) {
		return false
	}
	return b.Memory.TryReadAt(p, off)
}

func TestInlineReads(t *testing.T) {
	mem := blocktest.NewMemory(1 << 20)
	for off := 0; off < 1<<20; off += 4096 {
		mem.WriteAt(context.Background(), bytes.Repeat([]byte{byte(off >> 12)}, 4096), int64(off), false)
	}
	var mu sync.Mutex
	tried := map[int64]int{}
	b := tryBackend{mem, func(off int64) bool {
		mu.Lock()
		defer mu.Unlock()
		tried[off]++
		switch off {
		case 8192:
			return false // not cached: the worker reads it
		case 12288:
			panic("TryReadAt bug")
		}
		return true
	}}
	sock, _ := nbdtest.Serve(t, nbdtest.NewExports(&nbd.Export{Name: "t", Device: b}), nbd.Options{})
	for _, structured := range []bool{true, false} {
		c := open(t, sock, "t", structured)
		for _, tt := range []struct {
			off    int64
			length uint32
			tries  int
		}{
			{0, 4096, 1}, {8192, 4096, 1}, {12288, 4096, 1}, {16384, 60 << 10, 1}, {128 << 10, 64 << 10, 0},
		} {
			before := tried[tt.off]
			r := c.do(cCmdRead, 0, uint64(tt.off), tt.length, nil)
			if r.errno != 0 || !bytes.Equal(r.data, mem.Bytes()[tt.off:tt.off+int64(tt.length)]) {
				t.Fatalf("read %d at %d: %v", tt.length, tt.off, r)
			}
			mu.Lock()
			if got := tried[tt.off] - before; got != tt.tries {
				t.Errorf("read %d at %d: TryReadAt called %d times, want %d", tt.length, tt.off, got, tt.tries)
			}
			mu.Unlock()
		}
	}
}

// TestSlowWriteMovesWritesToWorkers: writes run on the reader only while
// they are fast; after a slow one, a held write no longer holds up the
// requests behind it.
func TestSlowWriteMovesWritesToWorkers(t *testing.T) {
	g := newGate()
	sock, _, _ := hookedFixture(t, nbd.Options{}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		switch {
		case op == blocktest.OpWrite && off == 0:
			time.Sleep(20 * time.Millisecond) // slow, not held: the reader waits it out
		case op == blocktest.OpWrite && off == 4096:
			g.hold(off)
		}
		return nil
	})
	c := open(t, sock, "h", true)
	if r := c.do(cCmdWrite, 0, 0, 4096, make([]byte, 4096)); r.errno != 0 {
		t.Fatal(r)
	}
	c.send(cCmdWrite, 0, 1, 4096, 4096, make([]byte, 4096))
	c.flush()
	readOvertakes(t, c, g)
}

func TestInFlightBytesBound(t *testing.T) {
	g := newGate()
	sock, _, _ := hookedFixture(t, nbd.Options{MaxInFlightBytes: 300 << 10}, func(_ context.Context, op blocktest.Op, off, _ int64) error {
		if op == blocktest.OpRead {
			g.hold(off)
		}
		return nil
	})
	c := open(t, sock, "h", false)
	for i := range 4 {
		c.send(cCmdRead, 0, uint64(i), uint64(i)<<20, 128<<10, nil) // 128 KiB each: two fit
	}
	c.flush()
	<-g.arrived
	<-g.arrived
	select {
	case off := <-g.arrived:
		t.Fatalf("read at %d reached the backend beyond the 300 KiB payload budget", off)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.open)
	for range 4 {
		if r := c.reply(); r.errno != 0 || len(r.data) != 128<<10 {
			t.Fatalf("reply %v", r)
		}
	}
}
