package nbd_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// Fuzz targets feed arbitrary client bytes to a real connection
// (Server.ServeConn over an in-memory net.Conn) and check the server's
// output. Seeds live in testdata/fuzz and run with go test; longer runs:
//
//	go test ./nbd -run '^$' -fuzz FuzzOptionParser -fuzztime 10m
//	go test ./nbd -run '^$' -fuzz FuzzRequestParser -fuzztime 10m

// pipeConn is a net.Conn whose reads come from a byte slice (then EOF) and
// whose writes are collected.
type pipeConn struct {
	in  *bytes.Reader
	mu  sync.Mutex
	out bytes.Buffer // guarded by mu
}

func (p *pipeConn) Read(b []byte) (int, error) { return p.in.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}
func (p *pipeConn) Close() error                     { return nil }
func (p *pipeConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (p *pipeConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (p *pipeConn) SetDeadline(time.Time) error      { return nil }
func (p *pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (p *pipeConn) SetWriteDeadline(time.Time) error { return nil }

const fuzzExportSize = 64 << 10

// fuzzServe runs one connection over input and returns what the server
// wrote.
func fuzzServe(input []byte) []byte {
	mem := blocktest.NewMemory(fuzzExportSize)
	dirty := &blocktest.Ranges{Size: fuzzExportSize, Flags: block.StateDirty, Ranges: [][2]int64{{4096, 8192}}}
	exps := nbdtest.NewExports(
		&nbd.Export{Name: "a", Device: mem, MinBlock: 512, Contexts: func() map[string]block.ExtentMap {
			return map[string]block.ExtentMap{"qemu:dirty-bitmap:x": dirty}
		}},
		&nbd.Export{Name: "", Description: "default", Device: blocktest.NewMemory(4096), ReadOnly: true},
	)
	srv := nbd.NewServer(nbd.Options{Exporter: exps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TLS: fuzzTLS()})
	pc := &pipeConn{in: bytes.NewReader(input)}
	done := make(chan struct{})
	go func() {
		srv.ServeConn(pc)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		buf := make([]byte, 1<<20)
		panic(fmt.Sprintf("connection still being served after 10s; goroutines:\n%s", buf[:runtime.Stack(buf, true)]))
	}
	return pc.out.Bytes()
}

// fuzzTLS is a server TLS config (STARTTLS is then offered, and the
// handshake over fuzzed bytes fails), made once.
var fuzzTLS = sync.OnceValue(func() *tls.Config {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
})

// Builders of well-formed client input, for seeds.

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, cOptMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func reqBytes(typ, flags uint16, cookie, off uint64, length uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, cReqMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, data...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// requestPreamble negotiates structured replies and both contexts of
// export "a", then enters transmission.
var requestPreamble = concat(
	binary.BigEndian.AppendUint32(nil, 3),
	optBytes(cOptStructured, nil),
	optBytes(cOptSetMeta, metaData("a", "base:allocation", "qemu:dirty-bitmap:x")),
	optBytes(cOptGo, infoData("a")),
)

func FuzzOptionParser(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, 3)
	for _, seed := range [][]byte{
		concat(flags, optBytes(cOptList, nil), optBytes(cOptAbort, nil)),
		concat(flags, optBytes(cOptInfo, infoData("a", 0, 1, 2, 3)), optBytes(cOptGo, infoData(""))),
		concat(flags, optBytes(cOptStructured, nil), optBytes(cOptListMeta, metaData("a")), optBytes(cOptListMeta, metaData("a", "qemu:", "base:"))),
		concat(flags, optBytes(cOptStructured, nil), optBytes(cOptSetMeta, metaData("a", "qemu:dirty-bitmap:x")), optBytes(cOptExportName, []byte("a"))),
		concat(binary.BigEndian.AppendUint32(nil, 1), optBytes(cOptExportName, nil)),
		concat(flags, optBytes(42, []byte("unknown")), optBytes(cOptStartTLS, nil), optBytes(cOptGo, infoData("nope"))),
		concat(flags, optBytes(cOptStartTLS, []byte("x")), optBytes(cOptStartTLS, nil), []byte("\x16\x03\x01\x00\x05hello")),
		concat(flags, optBytes(cOptSetMeta, metaData("a", "base:allocation")), optBytes(cOptListMeta, []byte{0, 0, 0, 1, 'a', 0xff, 0xff, 0xff, 0xff})),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		checkOptionReplies(t, fuzzServe(input))
	})
}

// checkOptionReplies checks the framing of the server's side of option
// haggling: the greeting, then option replies, each with its magic and a
// length that fits, up to the end or to where the transmission phase
// begins (an NBD_OPT_EXPORT_NAME reply).
func checkOptionReplies(t *testing.T, out []byte) {
	if len(out) < 18 || binary.BigEndian.Uint64(out) != cNBDMagic || binary.BigEndian.Uint64(out[8:]) != cOptMagic {
		t.Fatalf("bad greeting %x", out[:min(len(out), 18)])
	}
	for p := out[18:]; len(p) > 0; {
		if len(p) < 20 || binary.BigEndian.Uint64(p) != cOptRepMagic {
			return // transmission phase (or EXPORT_NAME's reply)
		}
		typ := binary.BigEndian.Uint32(p[12:])
		n := binary.BigEndian.Uint32(p[16:])
		if uint64(n) > uint64(len(p)-20) {
			t.Fatalf("option reply type %#x claims %d bytes, %d follow", typ, n, len(p)-20)
		}
		if typ&(1<<31) == 0 && (typ < cRepAck || typ > cRepMetaContext) {
			t.Fatalf("unknown option reply type %#x", typ)
		}
		p = p[20+n:]
	}
}

func FuzzRequestParser(f *testing.F) {
	data := bytes.Repeat([]byte{0x5a}, 4096)
	for _, seed := range [][]byte{
		concat(reqBytes(cCmdWrite, cFlagFUA, 1, 0, 4096, data), reqBytes(cCmdRead, 0, 2, 0, 8192, nil), reqBytes(cCmdFlush, 0, 3, 0, 0, nil), reqBytes(cCmdDisc, 0, 4, 0, 0, nil)),
		concat(reqBytes(cCmdBlockStatus, 0, 1, 0, fuzzExportSize, nil), reqBytes(cCmdBlockStatus, cFlagReqOne, 2, 4096, 512, nil)),
		concat(reqBytes(cCmdWriteZeroes, cFlagNoHole|cFlagFastZero, 1, 512, 1024, nil), reqBytes(cCmdTrim, 0, 2, 0, 4096, nil), reqBytes(cCmdCache, 0, 3, 0, 4096, nil)),
		concat(reqBytes(cCmdRead, cFlagDF, 1, 0, fuzzExportSize, nil), reqBytes(cCmdRead, 0, 2, fuzzExportSize, 512, nil), reqBytes(cCmdWrite, 0, 3, 100, 10, make([]byte, 10))),
		concat(reqBytes(99, 0, 1, 0, 0, nil), reqBytes(cCmdRead, 1<<15, 2, 0, 512, nil), reqBytes(cCmdWrite, 0, 3, 0, 40<<20, nil)),
		concat(reqBytes(cCmdRead, 0, 1, 0, 512, nil), []byte("garbage that is not a request header")),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		out := fuzzServe(concat(requestPreamble, input))
		checkRequestReplies(t, input, out)
	})
}

// checkRequestReplies checks that every complete request in input got
// exactly one final reply in out, and that out is a well-formed stream of
// structured replies (structured replies are on, so every message says
// its own length).
func checkRequestReplies(t *testing.T, input, out []byte) {
	want := map[uint64]int{} // cookie -> requests
	for p := input; len(p) >= 28; {
		h := parseReq(p)
		if h.magic != cReqMagic || h.typ == cCmdDisc {
			break
		}
		p = p[28:]
		if h.typ == cCmdWrite {
			if uint64(h.length) > uint64(len(p)) {
				break // incomplete (or too long to skip): never answered
			}
			p = p[h.length:]
		}
		want[h.cookie]++
	}
	// Skip the greeting and option replies up to GO's ACK.
	p := out[18:]
	for {
		if len(p) < 20 || binary.BigEndian.Uint64(p) != cOptRepMagic {
			t.Fatalf("handshake output malformed")
		}
		opt, typ, n := binary.BigEndian.Uint32(p[8:]), binary.BigEndian.Uint32(p[12:]), binary.BigEndian.Uint32(p[16:])
		p = p[20+n:]
		if opt == cOptGo && typ == cRepAck {
			break
		}
	}
	got := map[uint64]int{}
	for len(p) > 0 {
		if len(p) < 16 {
			t.Fatalf("truncated reply %x", p)
		}
		switch binary.BigEndian.Uint32(p) {
		case cSimpleMagic:
			got[binary.BigEndian.Uint64(p[8:])]++
			p = p[16:]
		case cChunkMagic:
			if len(p) < 20 {
				t.Fatalf("truncated chunk header %x", p)
			}
			flags, typ := binary.BigEndian.Uint16(p[4:]), binary.BigEndian.Uint16(p[6:])
			cookie, n := binary.BigEndian.Uint64(p[8:]), binary.BigEndian.Uint32(p[16:])
			if uint64(n) > uint64(len(p)-20) {
				t.Fatalf("chunk type %d claims %d bytes, %d follow", typ, n, len(p)-20)
			}
			checkChunk(t, typ, p[20:20+n])
			if flags&1 != 0 {
				got[cookie]++
			}
			p = p[20+n:]
		default:
			t.Fatalf("reply magic %#x", binary.BigEndian.Uint32(p))
		}
	}
	for cookie, n := range want {
		if got[cookie] != n {
			t.Fatalf("cookie %#x: %d requests, %d final replies", cookie, n, got[cookie])
		}
	}
	for cookie, n := range got {
		if want[cookie] != n {
			t.Fatalf("cookie %#x: %d final replies, %d requests", cookie, n, want[cookie])
		}
	}
}

// checkChunk checks a chunk's payload against its type's layout.
func checkChunk(t *testing.T, typ uint16, p []byte) {
	switch typ {
	case cChunkOffsetData:
		if len(p) < 9 || binary.BigEndian.Uint64(p)+uint64(len(p)-8) > fuzzExportSize {
			t.Fatalf("bad OFFSET_DATA chunk of %d bytes", len(p))
		}
	case cChunkOffsetHole:
		if len(p) != 12 || binary.BigEndian.Uint32(p[8:]) == 0 || binary.BigEndian.Uint64(p)+uint64(binary.BigEndian.Uint32(p[8:])) > fuzzExportSize {
			t.Fatalf("bad OFFSET_HOLE chunk %x", p)
		}
	case cChunkBlockStatus:
		if len(p) < 12 || (len(p)-4)%8 != 0 {
			t.Fatalf("bad BLOCK_STATUS chunk of %d bytes", len(p))
		}
		for d := p[4:]; len(d) > 0; d = d[8:] {
			if binary.BigEndian.Uint32(d) == 0 {
				t.Fatal("BLOCK_STATUS descriptor of length 0")
			}
		}
	case cChunkNone:
		if len(p) != 0 {
			t.Fatalf("NONE chunk with %d bytes", len(p))
		}
	case cChunkError:
		if len(p) < 6 || int(binary.BigEndian.Uint16(p[4:])) != len(p)-6 || binary.BigEndian.Uint32(p) == 0 {
			t.Fatalf("bad ERROR chunk %x", p)
		}
	default:
		t.Fatalf("unexpected chunk type %d", typ)
	}
}

type reqHeader struct {
	magic       uint32
	flags, typ  uint16
	cookie, off uint64
	length      uint32
}

func parseReq(p []byte) reqHeader {
	return reqHeader{binary.BigEndian.Uint32(p), binary.BigEndian.Uint16(p[4:]), binary.BigEndian.Uint16(p[6:]),
		binary.BigEndian.Uint64(p[8:]), binary.BigEndian.Uint64(p[16:]), binary.BigEndian.Uint32(p[24:])}
}
