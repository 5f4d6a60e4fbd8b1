package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Parsers of option payloads ("Option types"). Each consumes exactly the
// payload or reports why not; none allocates more than the payload's own
// size, whatever counts the client claims.

var errOptSyntax = errors.New("malformed option data")

// optReader walks an option payload.
type optReader struct {
	b   []byte
	err error
}

func (r *optReader) u32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.fail("truncated 32-bit field")
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *optReader) u16() uint16 {
	if r.err != nil || len(r.b) < 2 {
		r.fail("truncated 16-bit field")
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

// str reads a string of n bytes, at most 4096 ("Conventions").
func (r *optReader) str(n uint32, what string) string {
	if r.err != nil {
		return ""
	}
	if n > maxStringLen {
		r.fail(fmt.Sprintf("%s is %d bytes, more than the 4096 allowed", what, n))
		return ""
	}
	if uint32(len(r.b)) < n {
		r.fail(fmt.Sprintf("%s length %d runs past the option data", what, n))
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *optReader) fail(why string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", errOptSyntax, why)
	}
}

func (r *optReader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Sprintf("%d trailing bytes", len(r.b)))
	}
	return r.err
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest parses NBD_OPT_INFO / NBD_OPT_GO data: a 32-bit name
// length, the name, a 16-bit count and that many 16-bit info types.
func parseInfoRequest(b []byte) (infoRequest, error) {
	r := optReader{b: b}
	var req infoRequest
	req.name = r.str(r.u32(), "export name")
	n := r.u16()
	if r.err == nil && int(n)*2 != len(r.b) {
		r.fail(fmt.Sprintf("%d information requests need %d bytes, %d remain", n, int(n)*2, len(r.b)))
	}
	for i := 0; i < int(n) && r.err == nil; i++ {
		req.infos = append(req.infos, r.u16())
	}
	return req, r.end()
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// parseMetaRequest parses meta-context option data: a 32-bit name length,
// the name, a 32-bit query count, then each query as a 32-bit length and
// the string.
func parseMetaRequest(b []byte) (metaRequest, error) {
	r := optReader{b: b}
	var req metaRequest
	req.name = r.str(r.u32(), "export name")
	n := r.u32()
	// Every query takes at least its 4-byte length: a larger count cannot
	// be honest, and must not size an allocation.
	if r.err == nil && uint64(n)*4 > uint64(len(r.b)) {
		r.fail(fmt.Sprintf("%d queries cannot fit in %d bytes", n, len(r.b)))
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		req.queries = append(req.queries, r.str(r.u32(), "query"))
	}
	return req, r.end()
}
