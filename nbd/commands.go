package nbd

import (
	"encoding/binary"
	"fmt"

	"github.com/cairn-storage/cairn/block"
)

// Command handlers ("Request types"); READ is in read.go. Each runs on a
// worker, or inline on the reader (transmission.go), after the reader has
// validated the request (limits.check), and queues exactly one reply.

func (c *conn) write(r *request) {
	err := c.exp.Device.WriteAt(c.ctx, r.buf.b[:r.length], int64(r.off), r.flags&cmdFlagFUA != 0)
	c.replyWrite(r, "write", err)
}

func (c *conn) flush(r *request) {
	c.tx.waitWrites(r.seq.Load())
	c.tx.dirty.Store(false)
	err := c.exp.Device.Flush(c.ctx)
	if err != nil {
		c.tx.dirty.Store(true)
		c.replyBackendError(r, "flush", err)
		return
	}
	c.replyOK(r)
}

func (c *conn) trim(r *request) {
	var err error
	if r.length > 0 {
		err = c.exp.Device.Trim(c.ctx, int64(r.off), int64(r.length), r.flags&cmdFlagFUA != 0)
	}
	c.replyWrite(r, "trim", err)
}

func (c *conn) writeZeroes(r *request) {
	var flags block.ZeroFlags
	if r.flags&cmdFlagFUA != 0 {
		flags |= block.ZeroFUA
	}
	if r.flags&cmdFlagNoHole != 0 {
		flags |= block.ZeroNoHole
	}
	if r.flags&cmdFlagFastZero != 0 {
		flags |= block.ZeroFast
	}
	var err error
	if r.length > 0 {
		err = c.exp.Device.Zero(c.ctx, int64(r.off), int64(r.length), flags)
	}
	c.replyWrite(r, "write zeroes", err)
}

// cache prefetches with the backend's block.Cacher, or succeeds doing nothing.
func (c *conn) cache(r *request) {
	if ca, ok := c.exp.Device.(block.Cacher); ok && r.length > 0 {
		if err := ca.Cache(c.ctx, int64(r.off), int64(r.length)); err != nil {
			c.replyBackendError(r, "cache", err)
			return
		}
	}
	c.replyOK(r)
}

// replyWrite answers a write command and notes the export needs a flush.
func (c *conn) replyWrite(r *request, op string, err error) {
	if err != nil {
		c.replyBackendError(r, op, err)
		return
	}
	c.tx.dirty.Store(true)
	c.replyOK(r)
}

// replyOK sends success with a simple reply, which the spec allows for
// every command but READ even with structured replies.
func (c *conn) replyOK(r *request) {
	w := &c.tx.replies
	w.lock()
	w.simple(r.cookie, 0)
	r.replied = true
	w.unlock(r.inline)
}

// replyError answers r with errno: an error chunk with a message when
// structured replies are on, else a simple reply.
func (c *conn) replyError(r *request, errno uint32, msg string) {
	w := &c.tx.replies
	w.lock()
	if c.structured {
		w.errorChunk(r.cookie, errno, msg)
	} else {
		w.simple(r.cookie, errno)
	}
	r.replied = true
	w.unlock(r.inline)
}

// replyBackendError answers a failed backend call, logging the ones that
// map to EIO (the others are the client's or the export's business).
func (c *conn) replyBackendError(r *request, op string, err error) {
	errno := errnoOf(err)
	if errno == errIO {
		c.logBackendError("nbd: backend "+op+" failed; answered EIO", "export", c.exp.Name,
			"offset", r.off, "length", r.length, "err", err)
	}
	c.replyError(r, errno, errnoMessage(op, errno, err))
}

// blockStatus answers NBD_CMD_BLOCK_STATUS with one chunk per selected
// context. Each context's extents are clipped to the request (and to one
// extent with REQ_ONE), merged where neighbours share flags, and capped at
// 2^20 descriptors.
func (c *conn) blockStatus(r *request) {
	out := r.status[:0]
	ends := r.chunkEnds[:0]
	for _, mc := range c.contexts {
		exts, err := mc.src.Extents(c.ctx, int64(r.off), int64(r.length))
		if err == nil {
			out = binary.BigEndian.AppendUint32(out, mc.id)
			out, err = appendDescriptors(out, exts, uint64(r.length), r.flags&cmdFlagReqOne != 0)
		}
		if err != nil {
			c.replyBackendError(r, "block status of "+mc.name, err)
			r.keepScratch(out, ends)
			return
		}
		ends = append(ends, len(out))
	}
	w := &c.tx.replies
	w.lock()
	start := 0
	for i, end := range ends {
		flags := uint16(0)
		if i == len(ends)-1 {
			flags = replyFlagDone
		}
		w.chunk(flags, replyTypeBlockStatus, r.cookie, end-start)
		w.data(out[start:end])
		start = end
	}
	r.replied = true
	w.unlock(r.inline)
	r.keepScratch(out, ends)
}

// keepScratch keeps the block-status scratch for the slot's next request
// unless it grew large.
func (r *request) keepScratch(out []byte, ends []int) {
	if cap(out) > 1<<20 {
		out = nil
	}
	r.status, r.chunkEnds = out, ends
}

// appendDescriptors appends the block descriptors ("NBD_REPLY_TYPE_BLOCK_
// STATUS": 32-bit length, 32-bit flags) for exts clipped to length bytes.
func appendDescriptors(out []byte, exts []block.Extent, length uint64, reqOne bool) ([]byte, error) {
	var run uint64 // length of the pending descriptor
	var flags uint32
	n := 0
	for _, e := range exts {
		if e.Length <= 0 {
			return out, fmt.Errorf("backend returned an extent of length %d", e.Length)
		}
		l := min(uint64(e.Length), length)
		if run > 0 && e.Flags != flags {
			if reqOne {
				break
			}
			out = appendDescriptor(out, run, flags)
			n++
			if n == maxExtentsPerChunk {
				return out, nil
			}
			run = 0
		}
		run += l
		flags = e.Flags
		length -= l
		if length == 0 {
			break
		}
	}
	if run == 0 {
		return out, fmt.Errorf("backend returned no extents")
	}
	return appendDescriptor(out, run, flags), nil
}

func appendDescriptor(out []byte, length uint64, flags uint32) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(length))
	return binary.BigEndian.AppendUint32(out, flags)
}
