package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// Option haggling, byte by byte, with the raw client.

func TestClientFlagsUnknownCloses(t *testing.T) {
	f := newFixture(t)
	c := dialRaw(t, f.sock)
	var hello [18]byte
	c.read(hello[:])
	c.u32(1 << 5)
	if !c.closed() {
		t.Fatal("server kept a connection whose client flags had unknown bits")
	}
}

func TestOptionMagicBadCloses(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	c.write(bytes.Repeat([]byte{0xee}, 16))
	c.flush()
	if !c.closed() {
		t.Fatal("server kept a connection after an option with bad magic")
	}
	open(t, f.sock, "disk", true) // others are unaffected
}

func TestOptionErrors(t *testing.T) {
	tests := []struct {
		name   string
		before []uint32 // options (without data) sent first, each expecting ACK
		opt    uint32
		data   []byte
		want   uint32
	}{
		{"unknown option", nil, 77, []byte("payload to drain"), cRepErrUnsup},
		{"unknown option without data", nil, 0x7fffffff, nil, cRepErrUnsup},
		{"STARTTLS", nil, cOptStartTLS, nil, cRepErrUnsup},
		{"LIST with data", nil, cOptList, []byte{1}, cRepErrInvalid},
		{"STRUCTURED_REPLY with data", nil, cOptStructured, []byte{1}, cRepErrInvalid},
		{"GO unknown export", nil, cOptGo, infoData("nope"), cRepErrUnknown},
		{"INFO unknown export", nil, cOptInfo, infoData("nope"), cRepErrUnknown},
		{"GO name runs past data", nil, cOptGo, binary.BigEndian.AppendUint32(nil, 100), cRepErrInvalid},
		{"GO info count mismatch", nil, cOptGo, append(infoData("disk", 1, 2), 0), cRepErrInvalid},
		{"GO truncated", nil, cOptGo, []byte{0, 0}, cRepErrInvalid},
		{"SET_META before STRUCTURED_REPLY", nil, cOptSetMeta, metaData("disk", "base:allocation"), cRepErrInvalid},
		{"SET_META query without namespace", []uint32{cOptStructured}, cOptSetMeta, metaData("disk", "allocation"), cRepErrInvalid},
		{"LIST_META unknown export", nil, cOptListMeta, metaData("nope"), cRepErrUnknown},
		{"LIST_META count too large", nil, cOptListMeta, binary.BigEndian.AppendUint32(metaData("disk")[:8], 1<<30), cRepErrInvalid},
		{"LIST_META trailing bytes", nil, cOptListMeta, append(metaData("disk", "base:"), 9), cRepErrInvalid},
	}
	f := newFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, f.sock)
			for _, o := range tt.before {
				if got := c.final(o, nil); got != cRepAck {
					t.Fatalf("option %d: reply %#x", o, got)
				}
			}
			c.opt(tt.opt, tt.data)
			rs := c.optReplies(tt.opt)
			last := rs[len(rs)-1]
			if last.typ != tt.want {
				t.Fatalf("reply %#x %q, want %#x", last.typ, last.data, tt.want)
			}
			if len(last.data) == 0 {
				t.Error("error reply carries no message for the user")
			}
			// The connection lives on: the client may still pick an export.
			c.goExport("disk")
			if r := c.do(cCmdRead, 0, 0, 512, nil); r.errno != 0 {
				t.Fatalf("read after the error: %v", r)
			}
		})
	}
}

func TestOptionOversized(t *testing.T) {
	f := newFixture(t)
	t.Run("skipped and refused", func(t *testing.T) {
		c := dial(t, f.sock)
		big := make([]byte, 1<<20)
		c.opt(cOptGo, big)
		if got := c.optReplies(cOptGo); got[0].typ != cRepErrTooBig {
			t.Fatalf("reply %#x %q, want NBD_REP_ERR_TOO_BIG", got[0].typ, got[0].data)
		}
		c.opt(99, big)
		if got := c.optReplies(99); got[0].typ != cRepErrUnsup {
			t.Fatalf("unknown oversized option: reply %#x, want NBD_REP_ERR_UNSUP", got[0].typ)
		}
		c.goExport("disk")
	})
	t.Run("absurd length closes", func(t *testing.T) {
		c := dial(t, f.sock)
		c.optLen(cOptGo, 1<<31, nil)
		if !c.closed() {
			t.Fatal("server waited for 2 GiB of option data")
		}
	})
}

func TestAbort(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	if got := c.final(cOptAbort, nil); got != cRepAck {
		t.Fatalf("NBD_OPT_ABORT: reply %#x, want ACK", got)
	}
	if !c.closed() {
		t.Fatal("connection still open after NBD_OPT_ABORT")
	}
}

func TestExportName(t *testing.T) {
	for _, tt := range []struct {
		name        string
		clientFlags uint32
		replyLen    int
	}{
		{"no zeroes", 3, 10},
		{"with zeroes", 1, 134},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			c := dialRaw(t, f.sock)
			var hello [18]byte
			c.read(hello[:])
			c.u32(tt.clientFlags)
			c.opt(cOptExportName, []byte("ro"))
			b := make([]byte, tt.replyLen)
			c.read(b)
			if size := binary.BigEndian.Uint64(b); size != fixtureSize {
				t.Errorf("size %d, want %d", size, fixtureSize)
			}
			if fl := binary.BigEndian.Uint16(b[8:]); fl&3 != 3 {
				t.Errorf("flags %#x lack HAS_FLAGS|READ_ONLY", fl)
			}
			if !bytes.Equal(b[10:], make([]byte, tt.replyLen-10)) {
				t.Error("reserved bytes are not zero")
			}
			if r := c.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 || r.data[0] != 0xab {
				t.Fatalf("read after NBD_OPT_EXPORT_NAME: %v", r)
			}
		})
	}
	t.Run("unknown export closes", func(t *testing.T) {
		f := newFixture(t)
		c := dial(t, f.sock)
		c.opt(cOptExportName, []byte("nope"))
		if !c.closed() {
			t.Fatal("NBD_OPT_EXPORT_NAME of an unknown export must end the session")
		}
	})
}

func TestInfo(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	c.opt(cOptInfo, infoData("disk", 1, 2, 3, 42))
	infos := map[uint16][]byte{}
	rs := c.optReplies(cOptInfo)
	for _, r := range rs[:len(rs)-1] {
		if r.typ != cRepInfo {
			t.Fatalf("reply %#x before the final one", r.typ)
		}
		infos[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	if rs[len(rs)-1].typ != cRepAck {
		t.Fatalf("final reply %#x", rs[len(rs)-1].typ)
	}
	exp := infos[0]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != fixtureSize {
		t.Errorf("NBD_INFO_EXPORT %x", exp)
	}
	if got := string(infos[1]); got != "disk" {
		t.Errorf("NBD_INFO_NAME %q", got)
	}
	if got := string(infos[2]); got != "test disk" {
		t.Errorf("NBD_INFO_DESCRIPTION %q", got)
	}
	bs := infos[3]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != 32<<20 {
		t.Errorf("NBD_INFO_BLOCK_SIZE %x, want 1, 4096, 32 MiB", bs)
	}
	// INFO leaves the client in negotiation.
	c.goExport("disk")
	if c.size != fixtureSize {
		t.Errorf("GO size %d", c.size)
	}
}

func TestList(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	c.opt(cOptList, nil)
	var got []string
	for _, r := range c.optReplies(cOptList) {
		if r.typ == cRepServer {
			n := binary.BigEndian.Uint32(r.data)
			got = append(got, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
		}
	}
	want := []string{"disk|test disk", "mem|", "ro|read-only disk"}
	if !slices.Equal(got, want) {
		t.Fatalf("NBD_OPT_LIST: %q, want %q", got, want)
	}
}

func TestMetaContextQueries(t *testing.T) {
	tests := []struct {
		export  string
		set     bool
		queries []string
		want    []string
	}{
		{"mem", false, nil, []string{"base:allocation", "qemu:dirty-bitmap:x"}},
		{"disk", false, nil, []string{"base:allocation"}},
		{"mem", false, []string{"base:"}, []string{"base:allocation"}},
		{"mem", false, []string{"qemu:"}, []string{"qemu:dirty-bitmap:x"}},
		{"mem", false, []string{"qemu:dirty-bitmap:"}, []string{"qemu:dirty-bitmap:x"}},
		{"mem", false, []string{"qemu:dirty-bitmap:x", "base:allocation"}, []string{"base:allocation", "qemu:dirty-bitmap:x"}},
		{"mem", false, []string{"qemu:dirty-bitmap:y", "base:nope", "x-other:"}, nil},
		{"mem", true, nil, nil},
		{"mem", true, []string{"base:", "qemu:"}, nil},
		{"mem", true, []string{"base:allocation", "qemu:dirty-bitmap:x"}, []string{"base:allocation", "qemu:dirty-bitmap:x"}},
		{"mem", true, []string{"qemu:dirty-bitmap:x"}, []string{"qemu:dirty-bitmap:x"}},
	}
	f := newFixture(t)
	for _, tt := range tests {
		c := dial(t, f.sock)
		c.structuredReplies()
		opt := uint32(cOptListMeta)
		if tt.set {
			opt = cOptSetMeta
		}
		c.opt(opt, metaData(tt.export, tt.queries...))
		var got []string
		ids := map[uint32]bool{}
		for _, r := range c.optReplies(opt) {
			switch r.typ {
			case cRepMetaContext:
				id := binary.BigEndian.Uint32(r.data)
				if !tt.set && id != 0 {
					t.Errorf("LIST reply id %d, want 0", id)
				}
				if tt.set && (id == 0 || ids[id]) {
					t.Errorf("SET reply id %d is zero or repeated", id)
				}
				ids[id] = true
				got = append(got, string(r.data[4:]))
			case cRepAck:
			default:
				t.Fatalf("%s %q: reply %#x", tt.export, tt.queries, r.typ)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("set=%v %s %q: %q, want %q", tt.set, tt.export, tt.queries, got, tt.want)
		}
	}
}

func TestTransmissionFlags(t *testing.T) {
	const (
		hasFlags  = 1 << 0
		readOnly  = 1 << 1
		flush     = 1 << 2
		fua       = 1 << 3
		trim      = 1 << 5
		zeroes    = 1 << 6
		df        = 1 << 7
		multiConn = 1 << 8
		cache     = 1 << 10
		fastZero  = 1 << 11
	)
	tests := []struct {
		export     string
		structured bool
		want       uint16
	}{
		{"disk", true, hasFlags | flush | fua | trim | zeroes | df | multiConn | cache | fastZero},
		{"disk", false, hasFlags | flush | fua | trim | zeroes | multiConn | cache | fastZero},
		{"mem", true, hasFlags | flush | fua | trim | zeroes | df | cache | fastZero},
		{"ro", true, hasFlags | readOnly | df | cache},
	}
	f := newFixture(t)
	for _, tt := range tests {
		c := open(t, f.sock, tt.export, tt.structured)
		if c.tflags != tt.want {
			t.Errorf("%s structured=%v: flags %#x, want %#x", tt.export, tt.structured, c.tflags, tt.want)
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	exps := nbdtest.NewExports(&nbd.Export{Name: "m", Device: blocktest.NewMemory(1 << 20)})
	sock, _ := nbdtest.Serve(t, exps, nbd.Options{HandshakeTimeout: 50 * time.Millisecond})
	c := dial(t, sock)
	if !c.closed() {
		t.Fatal("a silent client kept its connection past the handshake timeout")
	}
}

func TestExportsReleased(t *testing.T) {
	f := newFixture(t)
	c := dial(t, f.sock)
	c.structuredReplies()
	c.opt(cOptInfo, infoData("disk"))
	c.optReplies(cOptInfo)
	c.setMeta("disk", "base:allocation")
	c.goExport("disk")
	if n := f.exports.OpenCount("disk"); n != 1 {
		t.Fatalf("%d opens held during transmission, want 1", n)
	}
	c.send(cCmdDisc, 0, 1, 0, 0, nil)
	c.flush()
	if !c.closed() {
		t.Fatal("connection open after NBD_CMD_DISC")
	}
	waitFor(t, "export release", func() bool { return f.exports.OpenCount("disk") == 0 })
}

// waitFor polls cond (the server's teardown runs after the client sees the
// socket close, with no event to wait on).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// panickyExporter panics when asked for "boom".
type panickyExporter struct{ *nbdtest.Exports }

func (p panickyExporter) Open(ctx context.Context, name string) (*nbd.Export, func(), error) {
	if name == "boom" {
		panic("exporter bug")
	}
	return p.Exports.Open(ctx, name)
}

func TestExporterPanicClosesOneConnection(t *testing.T) {
	exps := nbdtest.NewExports(&nbd.Export{Name: "m", Device: blocktest.NewMemory(1 << 20)})
	sock, _ := nbdtest.Serve(t, panickyExporter{exps}, nbd.Options{})
	other := open(t, sock, "m", true)
	c := dial(t, sock)
	c.opt(cOptGo, infoData("boom"))
	if !c.closed() {
		t.Fatal("connection open after the exporter panicked")
	}
	if r := other.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
		t.Fatalf("other connection: %v", r)
	}
	open(t, sock, "m", true)
}

// freshExporter returns a new Export on every Open, whose context
// x-test:open reports (as its flags) which open created it.
type freshExporter struct {
	mem   *blocktest.Memory
	opens atomic.Uint32
}

func (e *freshExporter) Open(context.Context, string) (*nbd.Export, func(), error) {
	n := e.opens.Add(1)
	ctx := &blocktest.Ranges{Size: e.mem.Size(), Flags: n, Ranges: [][2]int64{{0, e.mem.Size()}}}
	return &nbd.Export{Name: "f", Device: e.mem, Contexts: func() map[string]block.ExtentMap {
		return map[string]block.ExtentMap{"x-test:open": ctx}
	}}, func() {}, nil
}

func (e *freshExporter) List(context.Context) []nbd.ExportInfo { return nil }

func TestContextsFollowTheOpenedExport(t *testing.T) {
	sock, _ := nbdtest.Serve(t, &freshExporter{mem: blocktest.NewMemory(1 << 20)}, nbd.Options{})
	c := dial(t, sock)
	c.structuredReplies()
	ids := c.setMeta("f", "x-test:open") // open 1
	c.goExport("f")                      // open 2
	r := c.do(cCmdBlockStatus, 0, 0, 4096, nil)
	for id := range ids {
		if got := r.status[id]; len(got) != 1 || got[0][1] != 2 {
			t.Fatalf("x-test:open answered %v, want flags 2 (the export GO opened)", got)
		}
	}
}
