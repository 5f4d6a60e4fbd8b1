package nbd

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

const (
	// replyBufSize: queued replies are written once this many bytes wait.
	replyBufSize = 64 << 10
	// maxYields: how many times a worker lets others add their replies
	// before it writes (it stops early once a yield brought nothing).
	maxYields = 3
	// copyMax: payloads up to this size are copied behind their header so
	// that many replies leave in one write; larger ones go out with
	// writev straight from the request's buffer.
	copyMax = 16 << 10
)

// replies is the write side of a connection in the transmission phase.
// Workers take it in turn (lock ... unlock) to append whole replies; the
// last worker to leave when no other is waiting writes everything queued,
// so replies that complete together share one system call.
type replies struct {
	nc      net.Conn
	waiting atomic.Int32 // workers blocked in lock
	busy    atomic.Int32 // requests handed to workers and not yet answered

	mu     sync.Mutex
	buf    []byte      // guarded by mu: replies not yet written
	iov    net.Buffers // guarded by mu: what writev has left to send
	iovArr [2][]byte   // guarded by mu: backing array of iov
	err    error       // guarded by mu: the first write error; later output is dropped
	sf     sendfileState
}

func (w *replies) init(nc net.Conn) {
	w.nc = nc
	w.buf = make([]byte, 0, replyBufSize+copyMax+64)
	w.initSendfile(nc)
}

func (w *replies) lock() {
	w.waiting.Add(1)
	w.mu.Lock()
	w.waiting.Add(-1)
}

// unlock writes what is queued unless another worker is about to add to
// it (that worker, or the last in its line, will write it). While other
// requests are being worked on it first yields, so that those about to
// finish join the same write: fewer system calls for the server and fewer
// wake-ups for the client. The reader (inline) leaves the queue for its own
// flushIdle, which it calls before it can block.
func (w *replies) unlock(inline bool) {
	if inline || len(w.buf) == 0 || w.waiting.Load() > 0 && len(w.buf) < replyBufSize {
		w.mu.Unlock()
		return
	}
	for i := 0; i < maxYields && w.busy.Load() > 1; i++ {
		n := len(w.buf)
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
		if len(w.buf) == n || len(w.buf) == 0 {
			break
		}
	}
	w.flush()
	w.mu.Unlock()
}

// flushIdle writes whatever is queued; the reader calls it before it may
// block, so replies it queued itself never wait on the client.
func (w *replies) flushIdle() {
	w.lock()
	w.flush()
	w.mu.Unlock()
}

func (w *replies) flush() {
	if w.err == nil && len(w.buf) > 0 {
		if _, err := w.nc.Write(w.buf); err != nil {
			w.fail(err)
		}
	}
	w.buf = w.buf[:0]
}

// fail records a write error and closes the socket so the reader stops
// too: a client that cannot be answered is gone.
func (w *replies) fail(err error) {
	w.err = err
	w.nc.Close()
}

// simple queues a simple reply header ("Simple reply message").
func (w *replies) simple(cookie uint64, errno uint32) {
	w.buf = binary.BigEndian.AppendUint32(w.buf, magicSimpleReply)
	w.buf = binary.BigEndian.AppendUint32(w.buf, errno)
	w.buf = binary.BigEndian.AppendUint64(w.buf, cookie)
}

// chunk queues a structured reply chunk header ("Structured reply chunk
// message"); length is the payload that the caller queues next.
func (w *replies) chunk(flags, typ uint16, cookie uint64, length int) {
	w.buf = binary.BigEndian.AppendUint32(w.buf, magicStructReply)
	w.buf = binary.BigEndian.AppendUint16(w.buf, flags)
	w.buf = binary.BigEndian.AppendUint16(w.buf, typ)
	w.buf = binary.BigEndian.AppendUint64(w.buf, cookie)
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(length))
}

func (w *replies) u16(v uint16) { w.buf = binary.BigEndian.AppendUint16(w.buf, v) }
func (w *replies) u32(v uint32) { w.buf = binary.BigEndian.AppendUint32(w.buf, v) }
func (w *replies) u64(v uint64) { w.buf = binary.BigEndian.AppendUint64(w.buf, v) }

// data queues a payload. A small one is copied; a large one is written at
// once together with everything queued before it, so p may be reused as
// soon as data returns.
func (w *replies) data(p []byte) {
	if len(p) <= copyMax {
		w.buf = append(w.buf, p...)
		if len(w.buf) >= replyBufSize {
			w.flush()
		}
		return
	}
	if w.err == nil {
		w.iovArr = [2][]byte{w.buf, p}
		w.iov = w.iovArr[:] // WriteTo consumes iov, not its backing array
		if _, err := w.iov.WriteTo(w.nc); err != nil {
			w.fail(err)
		}
		w.iovArr = [2][]byte{}
	}
	w.buf = w.buf[:0]
}

// errorChunk queues an NBD_REPLY_TYPE_ERROR chunk with a message for the
// user ("Structured reply types").
func (w *replies) errorChunk(cookie uint64, errno uint32, msg string) {
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	w.chunk(replyFlagDone, replyTypeError, cookie, 6+len(msg))
	w.u32(errno)
	w.u16(uint16(len(msg)))
	w.buf = append(w.buf, msg...)
}
