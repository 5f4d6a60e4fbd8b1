package nbd

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"time"
)

// request is one transmission-phase request from header to reply. A
// connection owns a fixed set of them (its in-flight bound) and recycles
// each once its reply is written.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32

	seq     atomic.Uint64 // order of arrival on the connection
	writing atomic.Bool   // a write command in flight (FLUSH waits for it)
	buf     *buffer       // payload: WRITE data in, READ data out
	budget  int           // bytes of the connection's payload budget held
	replied bool          // a reply has been queued
	inline  bool          // run by the reader goroutine, not a worker
	start   time.Time     // when its header was read; zero unless the export has an Observer
	// Scratch kept with the slot for reuse by its next request.
	segments  []segment // sparse reads
	status    []byte    // block-status descriptors
	chunkEnds []int     // block-status chunk boundaries in status
}

// header is a decoded request message ("Request message").
type header struct {
	magic  uint32
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

func parseHeader(b []byte) header {
	_ = b[requestLen-1]
	return header{
		magic:  binary.BigEndian.Uint32(b[0:]),
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		cookie: binary.BigEndian.Uint64(b[8:]),
		off:    binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}
}

// cmdFlagsAllowed are the command flags valid for each command ("Command
// flags"); FUA is valid for all. DF needs structured replies.
func cmdFlagsAllowed(typ uint16, structured bool) uint16 {
	switch typ {
	case cmdRead:
		if structured {
			return cmdFlagFUA | cmdFlagDF
		}
	case cmdWriteZeroes:
		return cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		return cmdFlagFUA | cmdFlagReqOne
	}
	return cmdFlagFUA
}

// check validates a request against the connection's limits and returns
// the NBD error to answer it with (0 if it may proceed) and a message for
// the client. It follows "Error values" and "Size constraints": EINVAL for
// unknown commands or flags, misalignment, an oversized payload or a
// range past the end; ENOSPC instead for writes past the end; EPERM for
// writes to a read-only export.
func (l *limits) check(h header, structured bool, contexts int) (uint32, string) {
	switch h.typ {
	case cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdCache, cmdWriteZeroes, cmdBlockStatus:
	default:
		return errInval, fmt.Sprintf("unknown command %d", h.typ)
	}
	if bad := h.flags &^ cmdFlagsAllowed(h.typ, structured); bad != 0 {
		return errInval, fmt.Sprintf("command flags %#x are not valid for %s", bad, cmdName(h.typ))
	}
	write := h.typ == cmdWrite || h.typ == cmdTrim || h.typ == cmdWriteZeroes
	if write && l.readOnly {
		return errPerm, "the export is read-only"
	}
	switch h.typ {
	case cmdFlush:
		return 0, ""
	case cmdBlockStatus:
		if contexts == 0 {
			return errInval, "no metadata context was selected with NBD_OPT_SET_META_CONTEXT"
		}
		if h.length == 0 {
			return errInval, "block status of zero bytes"
		}
	case cmdRead, cmdWrite:
		if h.length > l.maxBlock {
			return errInval, fmt.Sprintf("%s of %d bytes exceeds the maximum payload of %d", cmdName(h.typ), h.length, l.maxBlock)
		}
	}
	if h.off > uint64(l.size) || uint64(h.length) > uint64(l.size)-h.off {
		code := uint32(errInval)
		if h.typ == cmdWrite || h.typ == cmdWriteZeroes {
			code = errNoSpc
		}
		return code, fmt.Sprintf("%s of %d bytes at offset %d runs past the end of the export (%d bytes)", cmdName(h.typ), h.length, h.off, l.size)
	}
	if m := uint64(l.minBlock); m > 1 {
		// The end of an export whose size is not a multiple of the block
		// size is reachable; every other boundary must be aligned.
		end := h.off + uint64(h.length)
		if h.off%m != 0 || end%m != 0 && end != uint64(l.size) {
			return errInval, fmt.Sprintf("%s of %d bytes at offset %d is not aligned to the minimum block size %d", cmdName(h.typ), h.length, h.off, m)
		}
	}
	return 0, ""
}

func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdWrite:
		return "NBD_CMD_WRITE"
	case cmdDisc:
		return "NBD_CMD_DISC"
	case cmdFlush:
		return "NBD_CMD_FLUSH"
	case cmdTrim:
		return "NBD_CMD_TRIM"
	case cmdCache:
		return "NBD_CMD_CACHE"
	case cmdWriteZeroes:
		return "NBD_CMD_WRITE_ZEROES"
	case cmdBlockStatus:
		return "NBD_CMD_BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", typ)
}
