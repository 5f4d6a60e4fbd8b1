package nbd_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// A minimal NBD client for byte-level tests and benchmarks: it sends what
// it is told, including what no real client would, and decodes replies
// without judging them. Constants are spelled out here, independently of
// the server's, so a wrong constant in the server shows up as a failure.

const (
	cNBDMagic    = 0x4e42444d41474943
	cOptMagic    = 0x49484156454F5054
	cOptRepMagic = 0x0003e889045565a9
	cReqMagic    = 0x25609513
	cSimpleMagic = 0x67446698
	cChunkMagic  = 0x668e33ef

	cOptExportName = 1
	cOptAbort      = 2
	cOptList       = 3
	cOptStartTLS   = 5
	cOptInfo       = 6
	cOptGo         = 7
	cOptStructured = 8
	cOptListMeta   = 9
	cOptSetMeta    = 10

	cRepAck         = 1
	cRepServer      = 2
	cRepInfo        = 3
	cRepMetaContext = 4
	cRepErrUnsup    = 1<<31 + 1
	cRepErrInvalid  = 1<<31 + 3
	cRepErrUnknown  = 1<<31 + 6
	cRepErrTooBig   = 1<<31 + 9

	cCmdRead        = 0
	cCmdWrite       = 1
	cCmdDisc        = 2
	cCmdFlush       = 3
	cCmdTrim        = 4
	cCmdCache       = 5
	cCmdWriteZeroes = 6
	cCmdBlockStatus = 7

	cFlagFUA      = 1 << 0
	cFlagNoHole   = 1 << 1
	cFlagDF       = 1 << 2
	cFlagReqOne   = 1 << 3
	cFlagFastZero = 1 << 4

	cChunkNone        = 0
	cChunkOffsetData  = 1
	cChunkOffsetHole  = 2
	cChunkBlockStatus = 5
	cChunkError       = 1<<15 + 1

	cEPERM    = 1
	cEIO      = 5
	cEINVAL   = 22
	cENOSPC   = 28
	cENOTSUP  = 95
	cESHUTDWN = 108
)

type client struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	bw         *bufio.Writer
	structured bool
	size       uint64
	tflags     uint16
	reads      map[uint64]uint32 // simple replies: cookie -> read length
	buf        []byte            // payload of the last reply
	scratch    [32]byte          // headers, kept here so that benchmarks do not allocate
}

// dial connects and completes the greeting (fixed newstyle, no zeroes).
func dial(t testing.TB, sock string) *client {
	t.Helper()
	c := dialRaw(t, sock)
	var hello [18]byte
	c.read(hello[:])
	if m := binary.BigEndian.Uint64(hello[0:]); m != cNBDMagic {
		t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(hello[8:]); m != cOptMagic {
		t.Fatalf("greeting IHAVEOPT %#x", m)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != 3 {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	c.u32(3)
	return c
}

func dialErr(sock string) (net.Conn, error) {
	nc, err := net.Dial("unix", sock)
	if err == nil {
		nc.Close()
	}
	return nc, err
}

// dialRaw connects without saying anything.
func dialRaw(t testing.TB, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, br: bufio.NewReaderSize(nc, 256<<10), bw: bufio.NewWriterSize(nc, 256<<10), reads: map[uint64]uint32{}}
}

func (c *client) read(p []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read from server: %v", err)
	}
}

func (c *client) write(p []byte) {
	c.t.Helper()
	if _, err := c.bw.Write(p); err != nil {
		c.t.Fatalf("write to server: %v", err)
	}
}

func (c *client) flush() {
	c.t.Helper()
	if err := c.bw.Flush(); err != nil {
		c.t.Fatalf("write to server: %v", err)
	}
}

func (c *client) u32(v uint32) {
	c.write(binary.BigEndian.AppendUint32(nil, v))
	c.flush()
}

// closed reports whether the server has closed the connection (reading
// returns EOF or a reset).
func (c *client) closed() bool {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.br.ReadByte()
	return err != nil
}

// drainedToClose reads whatever the server still sends and reports
// whether it then closed the connection (rather than going quiet).
func (c *client) drainedToClose() bool {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.br)
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

// opt sends an option.
func (c *client) opt(opt uint32, data []byte) {
	c.t.Helper()
	c.optLen(opt, uint32(len(data)), data)
}

// optLen sends an option header claiming length n, then data.
func (c *client) optLen(opt, n uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, cOptMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, n)
	c.write(append(b, data...))
	c.flush()
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) optReply() optReply {
	c.t.Helper()
	var h [20]byte
	c.read(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != cOptRepMagic {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	c.read(r.data)
	return r
}

// optReplies reads replies to opt up to and including the final one (an
// ACK or an error).
func (c *client) optReplies(opt uint32) []optReply {
	c.t.Helper()
	var out []optReply
	for {
		r := c.optReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == cRepAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

// final sends opt and returns the type of its final reply.
func (c *client) final(opt uint32, data []byte) uint32 {
	c.t.Helper()
	c.opt(opt, data)
	rs := c.optReplies(opt)
	return rs[len(rs)-1].typ
}

func (c *client) structuredReplies() {
	c.t.Helper()
	if typ := c.final(cOptStructured, nil); typ != cRepAck {
		c.t.Fatalf("NBD_OPT_STRUCTURED_REPLY: reply %#x", typ)
	}
	c.structured = true
}

// infoData is the data of NBD_OPT_INFO / NBD_OPT_GO.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaData is the data of the meta-context options.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// setMeta selects contexts and returns their names by id.
func (c *client) setMeta(name string, queries ...string) map[uint32]string {
	c.t.Helper()
	c.opt(cOptSetMeta, metaData(name, queries...))
	ids := map[uint32]string{}
	for _, r := range c.optReplies(cOptSetMeta) {
		switch r.typ {
		case cRepMetaContext:
			ids[binary.BigEndian.Uint32(r.data)] = string(r.data[4:])
		case cRepAck:
		default:
			c.t.Fatalf("NBD_OPT_SET_META_CONTEXT: reply %#x %q", r.typ, r.data)
		}
	}
	return ids
}

// goExport enters the transmission phase with NBD_OPT_GO.
func (c *client) goExport(name string) {
	c.t.Helper()
	c.opt(cOptGo, infoData(name))
	for _, r := range c.optReplies(cOptGo) {
		switch r.typ {
		case cRepInfo:
			if binary.BigEndian.Uint16(r.data) == 0 {
				c.size = binary.BigEndian.Uint64(r.data[2:])
				c.tflags = binary.BigEndian.Uint16(r.data[10:])
			}
		case cRepAck:
		default:
			c.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, r.typ, r.data)
		}
	}
}

// open dials, negotiates structured replies (if structured) and enters
// the transmission phase on export name.
func open(t testing.TB, sock, name string, structured bool) *client {
	t.Helper()
	c := dial(t, sock)
	if structured {
		c.structuredReplies()
	}
	c.goExport(name)
	return c
}

// send queues a request (flush sends it).
func (c *client) send(typ, flags uint16, cookie, off uint64, length uint32, data []byte) {
	b := c.scratch[:28]
	binary.BigEndian.PutUint32(b[0:], cReqMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.bw.Write(b)
	c.bw.Write(data)
	if typ == cCmdRead && !c.structured {
		c.reads[cookie] = length
	}
}

// reply is one simple reply or one structured chunk.
type reply struct {
	cookie     uint64
	structured bool
	errno      uint32 // simple replies and error chunks
	flags, typ uint16 // structured chunks
	data       []byte // READ data of a simple reply, or the chunk payload; valid until the next reply
}

func (r reply) done() bool { return !r.structured || r.flags&1 != 0 }

func (c *client) reply() reply {
	c.t.Helper()
	m := c.scratch[:4]
	c.read(m)
	switch binary.BigEndian.Uint32(m) {
	case cSimpleMagic:
		h := c.scratch[4:16]
		c.read(h)
		r := reply{errno: binary.BigEndian.Uint32(h[0:]), cookie: binary.BigEndian.Uint64(h[4:])}
		if n, ok := c.reads[r.cookie]; ok {
			if r.errno == 0 {
				r.data = c.payload(int(n))
			}
			delete(c.reads, r.cookie)
		}
		return r
	case cChunkMagic:
		h := c.scratch[4:20]
		c.read(h)
		r := reply{structured: true, flags: binary.BigEndian.Uint16(h[0:]), typ: binary.BigEndian.Uint16(h[2:]),
			cookie: binary.BigEndian.Uint64(h[4:])}
		r.data = c.payload(int(binary.BigEndian.Uint32(h[12:])))
		if r.typ&(1<<15) != 0 {
			r.errno = binary.BigEndian.Uint32(r.data)
		}
		return r
	default:
		c.t.Fatalf("reply magic %#x", m)
		return reply{}
	}
}

func (c *client) payload(n int) []byte {
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	c.buf = c.buf[:n]
	c.read(c.buf)
	return c.buf
}

// result is a whole reply to one request.
type result struct {
	errno  uint32
	msg    string
	data   []byte   // READ: the bytes, holes filled with zeros
	chunks []uint16 // structured: chunk types in order
	status map[uint32][][2]uint32
}

// do sends one request and collects its whole reply.
func (c *client) do(typ, flags uint16, off uint64, length uint32, data []byte) result {
	c.t.Helper()
	const cookie = 0xc0ffee
	c.send(typ, flags, cookie, off, length, data)
	c.flush()
	return c.collect(cookie, off, length)
}

// collect reads chunks of cookie until its reply is done.
func (c *client) collect(cookie, off uint64, length uint32) result {
	c.t.Helper()
	var res result
	for {
		r := c.reply()
		if r.cookie != cookie {
			c.t.Fatalf("reply for cookie %#x, want %#x", r.cookie, cookie)
		}
		res.add(c.t, r, off, length)
		if r.done() {
			return res
		}
	}
}

func (res *result) add(t testing.TB, r reply, off uint64, length uint32) {
	t.Helper()
	if !r.structured {
		res.errno = r.errno
		res.data = append([]byte(nil), r.data...)
		return
	}
	res.chunks = append(res.chunks, r.typ)
	p := r.data
	switch r.typ {
	case cChunkOffsetData, cChunkOffsetHole:
		if res.data == nil {
			res.data = make([]byte, length)
		}
		at := binary.BigEndian.Uint64(p) - off
		if r.typ == cChunkOffsetData {
			copy(res.data[at:], p[8:])
		}
	case cChunkBlockStatus:
		if res.status == nil {
			res.status = map[uint32][][2]uint32{}
		}
		id := binary.BigEndian.Uint32(p)
		for p = p[4:]; len(p) >= 8; p = p[8:] {
			res.status[id] = append(res.status[id], [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
	case cChunkNone:
	default:
		if r.typ&(1<<15) == 0 {
			t.Fatalf("unexpected chunk type %d", r.typ)
		}
		res.errno = r.errno
		n := binary.BigEndian.Uint16(p[4:])
		res.msg = string(p[6 : 6+n])
	}
}

func (r result) String() string {
	return fmt.Sprintf("errno %d %q chunks %v", r.errno, r.msg, r.chunks)
}
