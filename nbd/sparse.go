package nbd

// Sparse reads ("NBD_CMD_READ", structured replies): a large read asks the
// backend for extents first and answers ranges that read as zeros with
// NBD_REPLY_TYPE_OFFSET_HOLE chunks instead of sending zeros. Small reads
// skip the extra call: the lookup would cost more than the bytes it saves.

// sparseReadMin is the smallest read that looks for holes.
const sparseReadMin = 64 << 10

// segment is a run of a read that is either data or zeros, at start bytes
// into the request.
type segment struct {
	start, length int
	zero          bool
}

// readSparse answers r with data and hole chunks and returns true, or
// returns false without replying when the range holds no zeros (or the
// backend cannot say), leaving the read to the plain path.
func (c *conn) readSparse(r *request, p []byte) bool {
	exts, err := c.exp.Backend.Extents(c.ctx, int64(r.off), int64(len(p)))
	if err != nil {
		return false
	}
	segs, holes := splitSegments(r.segments[:0], exts, len(p))
	r.segments = segs
	if !holes {
		return false
	}
	for _, s := range segs {
		if s.zero {
			continue
		}
		if err := c.exp.Backend.ReadAt(c.ctx, p[s.start:s.start+s.length], int64(r.off)+int64(s.start)); err != nil {
			c.replyBackendError(r, "read", err)
			return true
		}
	}
	w := &c.tx.replies
	w.lock()
	for i, s := range segs {
		flags := uint16(0)
		if i == len(segs)-1 {
			flags = replyFlagDone
		}
		off := r.off + uint64(s.start)
		if s.zero {
			w.chunk(flags, replyTypeOffsetHole, r.cookie, 12)
			w.u64(off)
			w.u32(uint32(s.length))
		} else {
			w.chunk(flags, replyTypeOffsetData, r.cookie, 8+s.length)
			w.u64(off)
			w.data(p[s.start : s.start+s.length])
		}
	}
	r.replied = true
	w.unlock(r.inline)
	return true
}

// splitSegments turns extents into alternating data and zero segments
// covering exactly n bytes; what the extents leave undescribed is data.
// holes reports whether any segment reads as zeros.
func splitSegments(segs []segment, exts []Extent, n int) (_ []segment, holes bool) {
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
		add(int(min(e.Length, int64(n-pos))), e.Flags&StateZero != 0)
	}
	if pos < n {
		add(n-pos, false)
	}
	return segs, holes
}
