package nbd

import "github.com/cairn-storage/cairn/block"

// NBD_CMD_READ ("Request types"). Three ways to answer, cheapest first:
//
//   - Small reads the backend can serve from memory (block.TryReader) are
//     answered by the reader goroutine itself (transmission.go).
//   - Reads of sendfileMin bytes and more from a backend whose range is an
//     ordinary file's (block.Backed) go out with sendfile(2): the data never
//     passes through the server's memory.
//   - Everything else is read into the request's buffer with ReadAt and
//     copied out.
//
// With structured replies and without NBD_CMD_FLAG_DF, reads of
// sparseReadMin bytes and more first ask block.Device.Extents and answer ranges
// that read as zeros with NBD_REPLY_TYPE_OFFSET_HOLE chunks instead of
// data. Smaller reads skip the lookup: it would cost more than it saves.

const (
	sparseReadMin = 64 << 10
	sendfileMin   = 64 << 10
)

// segment is a run of a read that is either data or zeros, at start bytes
// into the request.
type segment struct {
	start, length int
	zero          bool
}

func (c *conn) read(r *request) {
	n := int(r.length)
	segs := append(r.segments[:0], segment{length: n})
	if c.structured && r.flags&cmdFlagDF == 0 && n >= sparseReadMin {
		if exts, err := c.exp.Device.Extents(c.ctx, int64(r.off), int64(n)); err == nil {
			segs, _ = splitSegments(segs[:0], exts, n)
		}
	}
	r.segments = segs
	if n >= sendfileMin && c.tx.replies.canSendfile() && c.backed != nil && c.sendRead(r, segs) {
		return
	}
	if r.buf == nil {
		r.buf = getBuffer(n)
	}
	p := r.buf.b[:n]
	for _, s := range segs {
		if s.zero {
			continue
		}
		if err := c.exp.Device.ReadAt(c.ctx, p[s.start:s.start+s.length], int64(r.off)+int64(s.start)); err != nil {
			c.replyBackendError(r, "read", err)
			return
		}
	}
	w := &c.tx.replies
	w.lock()
	if len(segs) == 1 && !segs[0].zero {
		c.appendRead(r, p)
	} else {
		for i, s := range segs {
			c.appendSegment(r, s, i == len(segs)-1)
			if !s.zero {
				w.data(p[s.start : s.start+s.length])
			}
		}
		r.replied = true
	}
	w.unlock(r.inline)
}

// appendRead queues a successful read's reply as one piece; the caller
// holds replies.
func (c *conn) appendRead(r *request, p []byte) {
	w := &c.tx.replies
	switch {
	case c.structured && len(p) == 0:
		// A data chunk must carry at least one byte; nothing to cover.
		w.chunk(replyFlagDone, replyTypeNone, r.cookie, 0)
	case c.structured:
		w.chunk(replyFlagDone, replyTypeOffsetData, r.cookie, 8+len(p))
		w.u64(r.off)
	default:
		w.simple(r.cookie, 0)
	}
	w.data(p)
	r.replied = true
}

// appendSegment queues the chunk header for one segment of a structured
// read (a whole hole chunk, or a data chunk's header without its data).
func (c *conn) appendSegment(r *request, s segment, last bool) {
	w := &c.tx.replies
	flags := uint16(0)
	if last {
		flags = replyFlagDone
	}
	off := r.off + uint64(s.start)
	if s.zero {
		w.chunk(flags, replyTypeOffsetHole, r.cookie, 12)
		w.u64(off)
		w.u32(uint32(s.length))
		return
	}
	w.chunk(flags, replyTypeOffsetData, r.cookie, 8+s.length)
	w.u64(off)
}

// sendRead answers r with sendfile from the backend's file, if the backend
// says every data segment is held by a file; false means it sent nothing.
// The data chunks are not marked final (an error may still come while one
// is sent): a NONE chunk ends the reply. If the file ends early the rest
// is zeros (a sparse image shorter than its disk); if reading it fails,
// the chunk is padded and an error chunk follows, or, with a simple reply,
// whose header already promised data, the connection is closed
// ("NBD_CMD_READ", simple replies).
func (c *conn) sendRead(r *request, segs []segment) bool {
	type source struct {
		fd  uintptr
		off int64
	}
	var one [1]source
	srcs := one[:0]
	if len(segs) > 1 {
		srcs = make([]source, 0, len(segs))
	}
	for _, s := range segs {
		var src source
		if !s.zero {
			var ok bool
			if src.fd, src.off, ok = c.backed.Backing(int64(r.off)+int64(s.start), int64(s.length)); !ok {
				return false
			}
		}
		srcs = append(srcs, src)
	}
	w := &c.tx.replies
	w.lock()
	defer w.unlock(r.inline)
	r.replied = true
	for i, s := range segs {
		if !c.structured {
			w.simple(r.cookie, 0)
		} else {
			c.appendSegment(r, s, false)
			if s.zero {
				continue
			}
		}
		err := w.sendfile(srcs[i].fd, srcs[i].off, s.length)
		if err == nil {
			continue
		}
		c.logBackendError("nbd: sendfile from the backend's file failed", "export", c.exp.Name,
			"offset", r.off+uint64(s.start), "length", s.length, "err", err)
		if !c.structured {
			w.fail(err)
			return true
		}
		w.errorChunk(r.cookie, errIO, "read: I/O error on the server (its log has the details)")
		return true
	}
	if c.structured {
		w.chunk(replyFlagDone, replyTypeNone, r.cookie, 0)
	}
	return true
}

// splitSegments turns extents into alternating data and zero segments
// covering exactly n bytes; what the extents leave undescribed is data.
// holes reports whether any segment reads as zeros.
func splitSegments(segs []segment, exts []block.Extent, n int) (_ []segment, holes bool) {
	pos := 0
	add := func(length int, zero bool) {
		if k := len(segs); k > 0 && segs[k-1].zero == zero {
			segs[k-1].length += length
		} else {
			segs = append(segs, segment{start: pos, length: length, zero: zero})
		}
		pos += length
		holes = holes || zero
	}
	for _, e := range exts {
		if e.Length <= 0 || pos == n {
			break
		}
		add(int(min(e.Length, int64(n-pos))), e.Flags&block.StateZero != 0)
	}
	if pos < n {
		add(n-pos, false)
	}
	return segs, holes
}
