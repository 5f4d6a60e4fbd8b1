package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cairn-storage/cairn/block"
)

// Option haggling ("Fixed newstyle negotiation", "Option types").

const (
	// maxOptionLen is the largest option payload read into memory: far
	// more than any real option needs (a GO carries one name of at most
	// 4096 bytes).
	maxOptionLen = 64 << 10
	// maxOptionDrain is the largest payload the server skips to answer an
	// oversized option with an error; beyond it the client is hung up on.
	maxOptionDrain = 16 << 20
)

// protocolError is a client's breach of a MUST of the protocol: the
// connection is closed with one log line.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{fmt.Sprintf(format, args...)}
}

// handshake is the state of option haggling on one connection.
type handshake struct {
	c          *conn
	bw         *bufio.Writer
	noZeroes   bool
	structured bool
	payload    []byte            // scratch for option data, at most maxOptionLen
	metaExport string            // export named by the last SET_META_CONTEXT
	meta       []selectedContext // what it selected
}

type optResult int

const (
	optNext     optResult = iota // wait for the next option
	optTransmit                  // enter the transmission phase
	optEnd                       // close the connection
)

// negotiate runs option haggling and reports whether the transmission
// phase starts.
func (c *conn) negotiate() bool {
	c.nc.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	if c.stopping.Load() { // stopped before the deadline above replaced stop's
		return false
	}
	h := &handshake{c: c, bw: bufio.NewWriterSize(c.io, 4096)}
	ok, err := h.run()
	if err != nil {
		var pe *protocolError
		switch {
		case errors.As(err, &pe):
			c.log.Warn("nbd: closing connection: client broke the protocol during negotiation", "err", err)
		case c.stopping.Load():
			c.log.Debug("nbd: negotiation interrupted by shutdown")
		default:
			c.log.Debug("nbd: negotiation ended", "err", err)
		}
		return false
	}
	if !ok {
		return false
	}
	c.nc.SetDeadline(time.Time{})
	return true
}

func (h *handshake) run() (bool, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := h.bw.Write(hello[:]); err != nil {
		return false, err
	}
	if err := h.bw.Flush(); err != nil {
		return false, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.c.br, cf[:]); err != nil {
		return false, err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientFlagsKnown != 0 {
		return false, protocolErrorf("client flags %#x set bits this server did not offer", flags)
	}
	h.noZeroes = flags&flagCNoZeroes != 0
	for {
		if h.c.stopping.Load() {
			return false, errors.New("server is shutting down")
		}
		var hdr [optHeaderLen]byte
		if _, err := io.ReadFull(h.c.br, hdr[:]); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
			return false, protocolErrorf("option magic %#x, want IHAVEOPT", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		n := binary.BigEndian.Uint32(hdr[12:])
		data, ok, err := h.readPayload(opt, n)
		if err != nil {
			return false, err
		}
		res := optNext
		if ok {
			if res, err = h.option(opt, data); err != nil {
				return false, err
			}
		}
		if err := h.bw.Flush(); err != nil {
			return false, err
		}
		switch res {
		case optTransmit:
			return true, nil
		case optEnd:
			return false, nil
		}
	}
}

// readPayload reads an option's data. An oversized payload is skipped and
// answered with an error (ok false); an absurd one ends the connection.
func (h *handshake) readPayload(opt, n uint32) (data []byte, ok bool, err error) {
	if n <= maxOptionLen {
		if cap(h.payload) < int(n) {
			h.payload = make([]byte, n)
		}
		data = h.payload[:n]
		_, err = io.ReadFull(h.c.br, data)
		return data, err == nil, err
	}
	if n > maxOptionDrain {
		return nil, false, protocolErrorf("option %d carries %d bytes of data, more than the %d this server will skip", opt, n, maxOptionDrain)
	}
	if _, err := h.c.br.Discard(int(n)); err != nil {
		return nil, false, err
	}
	h.c.log.Info("nbd: refused an oversized option", "option", opt, "length", n, "limit", maxOptionLen)
	if !knownOption(opt) {
		return nil, false, h.replyErr(opt, repErrUnsup, "option %d is not supported by this server", opt)
	}
	return nil, false, h.replyErr(opt, repErrTooBig, "option data of %d bytes is larger than the %d bytes this server accepts", n, maxOptionLen)
}

func knownOption(opt uint32) bool {
	switch opt {
	case optExportName, optAbort, optList, optInfo, optGo, optStructuredReply, optListMetaContext, optSetMetaContext, optStartTLS:
		return true
	}
	return false
}

// option answers one option.
func (h *handshake) option(opt uint32, data []byte) (optResult, error) {
	if refused, res, err := h.tlsGate(opt); refused {
		return res, err
	}
	switch opt {
	case optExportName:
		return h.exportName(data)
	case optAbort:
		// "The server MUST reply with NBD_REP_ACK"; the client may already
		// have gone, so a failed write is not an error.
		h.reply(opt, repAck, nil)
		h.bw.Flush()
		return optEnd, nil
	case optList:
		return optNext, h.list(data)
	case optInfo, optGo:
		return h.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return optNext, h.replyErr(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		h.structured = true
		return optNext, h.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return optNext, h.metaContext(opt, data)
	case optStartTLS:
		return h.startTLS(data)
	default:
		return optNext, h.replyErr(opt, repErrUnsup, "option %d is not supported by this server", opt)
	}
}

// open resolves an export name; on failure it returns the option error to
// send and a message.
func (h *handshake) open(name string) (*Export, func(), uint32, string) {
	exp, release, err := h.c.srv.opts.Exporter.Open(h.c.ctx, name)
	if err == nil && (exp == nil || exp.Device == nil) {
		err = fmt.Errorf("%w: %q", ErrUnknownExport, name)
	}
	if err != nil {
		if release != nil {
			release()
		}
		switch {
		case errors.Is(err, ErrTLSRequired):
			return nil, nil, repErrTLSReqd, fmt.Sprintf("export %q requires TLS: send NBD_OPT_STARTTLS first", name)
		case errors.Is(err, block.ErrDenied):
			return nil, nil, repErrPolicy, err.Error()
		case errors.Is(err, ErrUnknownExport):
			return nil, nil, repErrUnknown, fmt.Sprintf("no export named %q", name)
		case errors.Is(err, block.ErrShutdown):
			return nil, nil, repErrShutdown, "the server is shutting down"
		}
		return nil, nil, repErrPolicy, err.Error()
	}
	if release == nil {
		release = func() {}
	}
	return exp, release, 0, ""
}

// exportName handles NBD_OPT_EXPORT_NAME, which cannot return an error:
// a bad name closes the connection ("NBD_OPT_EXPORT_NAME").
func (h *handshake) exportName(data []byte) (optResult, error) {
	if len(data) > maxStringLen {
		return optEnd, protocolErrorf("NBD_OPT_EXPORT_NAME with a %d-byte name (limit 4096)", len(data))
	}
	name := string(data)
	exp, release, _, msg := h.open(name)
	if exp == nil {
		h.c.log.Info("nbd: closing connection: NBD_OPT_EXPORT_NAME cannot be refused any other way", "export", name, "reason", msg)
		return optEnd, nil
	}
	lim, err := exportLimits(exp, h.structured)
	if err != nil {
		release()
		h.c.log.Error("nbd: export is misconfigured; closing connection", "err", err)
		return optEnd, nil
	}
	var b [8 + 2 + exportNameZeroesLn]byte
	binary.BigEndian.PutUint64(b[0:], uint64(lim.size))
	binary.BigEndian.PutUint16(b[8:], lim.tflags)
	reply := b[:]
	if h.noZeroes {
		reply = b[:10]
	}
	if _, err := h.bw.Write(reply); err != nil {
		release()
		return optEnd, err
	}
	h.enter(name, exp, release, lim)
	return optTransmit, nil
}

// list handles NBD_OPT_LIST.
func (h *handshake) list(data []byte) error {
	if len(data) != 0 {
		return h.replyErr(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	var b []byte
	for _, e := range h.c.srv.opts.Exporter.List(h.c.ctx) {
		if len(e.Name) > maxStringLen {
			continue
		}
		desc := e.Description[:min(len(e.Description), maxStringLen)]
		b = binary.BigEndian.AppendUint32(b[:0], uint32(len(e.Name)))
		b = append(append(b, e.Name...), desc...)
		if err := h.reply(optList, repServer, b); err != nil {
			return err
		}
	}
	return h.reply(optList, repAck, nil)
}

// infoGo handles NBD_OPT_INFO and NBD_OPT_GO.
func (h *handshake) infoGo(opt uint32, data []byte) (optResult, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		return optNext, h.replyErr(opt, repErrInvalid, "%v", err)
	}
	exp, release, rep, msg := h.open(req.name)
	if exp == nil {
		return optNext, h.replyErr(opt, rep, "%s", msg)
	}
	lim, err := exportLimits(exp, h.structured)
	if err != nil {
		release()
		h.c.log.Error("nbd: export is misconfigured", "err", err)
		return optNext, h.replyErr(opt, repErrPolicy, "export %q is misconfigured on the server", req.name)
	}
	if err := h.sendInfo(opt, exp, lim, req.infos); err != nil {
		release()
		return optEnd, err
	}
	if opt == optInfo {
		release()
		return optNext, nil
	}
	h.enter(req.name, exp, release, lim)
	return optTransmit, nil
}

// sendInfo sends the NBD_REP_INFO replies and the final ACK. Export and
// block sizes are always sent (the client may ignore what it did not ask
// for); name and description when asked.
func (h *handshake) sendInfo(opt uint32, exp *Export, lim limits, asked []uint16) error {
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(lim.size))
	binary.BigEndian.PutUint16(b[10:], lim.tflags)
	if err := h.reply(opt, repInfo, b[:12]); err != nil {
		return err
	}
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], lim.minBlock)
	binary.BigEndian.PutUint32(b[6:], lim.prefBlock)
	binary.BigEndian.PutUint32(b[10:], lim.maxBlock)
	if err := h.reply(opt, repInfo, b[:14]); err != nil {
		return err
	}
	for _, info := range asked {
		var text string
		switch info {
		case infoName:
			text = exp.Name
		case infoDescription:
			text = exp.Description
		default:
			continue
		}
		if text == "" || len(text) > maxStringLen {
			continue
		}
		payload := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(text)), info)
		if err := h.reply(opt, repInfo, append(payload, text...)); err != nil {
			return err
		}
	}
	return h.reply(opt, repAck, nil)
}

// metaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
func (h *handshake) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		// "Issuing this command replaces all previously-set metadata
		// contexts (including when this command fails)."
		h.metaExport, h.meta = "", nil
		if !h.structured {
			return h.replyErr(opt, repErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY before NBD_OPT_SET_META_CONTEXT")
		}
	}
	req, err := parseMetaRequest(data)
	if err != nil {
		return h.replyErr(opt, repErrInvalid, "%v", err)
	}
	exp, release, rep, msg := h.open(req.name)
	if exp == nil {
		return h.replyErr(opt, rep, "%s", msg)
	}
	defer release()
	names, byName := availableContexts(exp)
	matched, ok := matchContexts(names, req.queries, !set)
	if !ok {
		return h.replyErr(opt, repErrInvalid, "every query must start with a namespace and a colon, such as base: or qemu:")
	}
	var selected []selectedContext
	var b []byte
	for i, name := range matched {
		id := uint32(0) // "reserved and SHOULD be set to zero" in LIST replies
		if set {
			id = uint32(i + 1)
			selected = append(selected, selectedContext{id: id, name: name, src: byName[name]})
		}
		b = binary.BigEndian.AppendUint32(b[:0], id)
		if err := h.reply(opt, repMetaContext, append(b, name...)); err != nil {
			return err
		}
	}
	if set {
		h.metaExport, h.meta = req.name, selected
	}
	return h.reply(opt, repAck, nil)
}

// enter records what the client chose for the transmission phase.
func (h *handshake) enter(name string, exp *Export, release func(), lim limits) {
	var contexts []selectedContext
	if h.metaExport == name {
		contexts = rebind(h.meta, exp)
	}
	h.c.enter(exp, release, lim, h.structured, contexts)
}

// enter sets the connection's transmission-phase state: the export, its
// release (nil: none), the limits, whether replies are structured and the
// selected meta contexts.
func (c *conn) enter(exp *Export, release func(), lim limits, structured bool, contexts []selectedContext) {
	c.exp, c.release, c.lim, c.structured, c.contexts = exp, release, lim, structured, contexts
	c.tryReader, _ = exp.Device.(block.TryReader)
	c.backed, _ = exp.Device.(block.Backed)
	c.mu.Lock()
	c.exportName, c.readOnly = exp.Name, exp.ReadOnly
	c.mu.Unlock()
}

// rebind points the contexts selected on an earlier open of the export at
// the one the client now uses (the export may have been opened afresh);
// a context the export no longer offers keeps the object selected.
func rebind(selected []selectedContext, exp *Export) []selectedContext {
	_, byName := availableContexts(exp)
	for i, sc := range selected {
		if mc, ok := byName[sc.name]; ok {
			selected[i].src = mc
		}
	}
	return selected
}

// reply queues one option reply ("Fixed newstyle negotiation").
func (h *handshake) reply(opt, typ uint32, data []byte) error {
	var hdr [optReplyHdrLen]byte
	binary.BigEndian.PutUint64(hdr[0:], magicOptReply)
	binary.BigEndian.PutUint32(hdr[8:], opt)
	binary.BigEndian.PutUint32(hdr[12:], typ)
	binary.BigEndian.PutUint32(hdr[16:], uint32(len(data)))
	if _, err := h.bw.Write(hdr[:]); err != nil {
		return err
	}
	_, err := h.bw.Write(data)
	return err
}

// replyErr sends an error reply with a message for the user.
func (h *handshake) replyErr(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	return h.reply(opt, typ, []byte(msg))
}
