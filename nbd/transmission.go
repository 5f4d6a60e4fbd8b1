package nbd

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// The transmission phase ("Transmission"). The goroutine that ran the
// handshake becomes the connection's reader: it decodes each request,
// answers invalid ones itself, reads WRITE payloads straight into pooled
// buffers and hands valid requests to the connection's workers. Workers
// call the backend and queue replies (reply.go), in whatever order their
// requests complete ("Ordering of messages and writes" allows it).
//
// Two kinds of request skip the hand-over, which costs more than they do:
// small reads the backend can serve from memory (block.TryReader) and small
// writes while the backend answers writes quickly (writeInline). The
// reader runs those itself and writes the replies they queue before it
// next waits for the client.
//
// Bounds: at most MaxInFlight requests per connection (the reader waits for
// a free request slot), at most MaxWorkers goroutines calling the backend,
// and at most MaxInFlightBytes of large payload buffers.
//
// FLUSH waits for every write command received before it to complete,
// then flushes the backend: stronger than the spec's "writes replied to
// before the flush", and what a client that pipelines WRITE then FLUSH
// expects.

// budgetFree: payloads up to this size are not counted against
// MaxInFlightBytes; the request slots already bound them.
const budgetFree = 64 << 10

type transmission struct {
	reqs    []request     // the connection's request slots
	free    chan *request // slots not in flight
	work    chan *request // requests for the workers
	workers int           // workers started; owned by the reader
	wg      sync.WaitGroup
	seq     uint64 // requests received; owned by the reader

	// Inline write policy (writeInline); owned by the reader.
	slowUntil time.Time     // writes go to workers until then
	writeAvg  time.Duration // moving average of inline write times

	bmu      sync.Mutex
	bcond    sync.Cond
	inBytes  int // guarded by bmu: payload bytes counted against maxBytes
	maxBytes int

	fmu          sync.Mutex
	fcond        sync.Cond    // signalled when a write completes while a FLUSH waits
	flushWaiting atomic.Int32 // FLUSHes waiting for earlier writes

	dirty atomic.Bool // a write completed since the last flush began

	replies replies
}

func (t *transmission) init(c *conn) {
	o := c.srv.opts
	t.reqs = make([]request, o.MaxInFlight)
	t.free = make(chan *request, o.MaxInFlight)
	for i := range t.reqs {
		t.free <- &t.reqs[i]
	}
	t.work = make(chan *request)
	t.maxBytes = o.MaxInFlightBytes
	t.bcond.L = &t.bmu
	t.fcond.L = &t.fmu
	t.replies.init(c.io)
}

// transmit runs the reader until the client disconnects, breaks the
// protocol or the connection is stopped; it returns once every request in
// flight has been answered.
func (c *conn) transmit() {
	t := &c.tx
	t.init(c)
	// The handshake's small buffer may hold the first requests: then read
	// through it (bufio reads past an empty buffer straight into ours).
	if c.br.Buffered() > 0 {
		c.br = bufio.NewReaderSize(c.br, readBufSize)
	} else {
		c.br = bufio.NewReaderSize(c.io, readBufSize)
	}
	defer t.wait()
	idle := c.srv.opts.IdleTimeout
	for !c.stopping.Load() {
		if c.br.Buffered() < requestLen {
			t.replies.flushIdle() // about to wait for the client
			if idle > 0 {
				c.nc.SetReadDeadline(time.Now().Add(idle))
				if c.stopping.Load() { // stop's deadline was just replaced
					return
				}
			}
		}
		hb, err := c.br.Peek(requestLen)
		if err != nil {
			if idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) && !c.stopping.Load() {
				if len(t.free) < cap(t.free) {
					continue // requests in flight: not idle
				}
				c.log.Info("nbd: closing idle connection", "export", c.exp.Name, "idle_timeout", idle)
				return
			}
			c.readEnded(err)
			return
		}
		h := parseHeader(hb)
		c.br.Discard(requestLen)
		if h.magic != magicRequest {
			c.log.Warn("nbd: closing connection: bad request magic (garbage on the wire)", "magic", h.magic)
			return
		}
		if h.typ == cmdDisc {
			c.log.Debug("nbd: client disconnected (NBD_CMD_DISC)")
			return
		}
		if !c.accept(h) {
			return
		}
	}
}

// accept takes one request whose header has been read; false ends the
// connection.
func (c *conn) accept(h header) bool {
	t := &c.tx
	r := <-t.free
	t.seq++
	r.flags, r.typ, r.cookie, r.off, r.length = h.flags, h.typ, h.cookie, h.off, h.length
	r.seq.Store(t.seq)
	r.replied, r.inline = false, true
	r.start = time.Time{}
	if c.exp.Observer != nil {
		r.start = time.Now()
	}
	errno, msg := c.lim.check(h, c.structured, len(c.contexts))
	if errno != 0 {
		ok := true
		if h.typ == cmdWrite {
			ok = c.skipPayload(h)
		}
		if ok {
			c.replyError(r, errno, msg)
		}
		t.free <- r
		return ok
	}
	switch h.typ {
	case cmdRead, cmdWrite:
		t.acquire(r, int(h.length))
		if h.typ == cmdRead && c.readInline(r) {
			c.recycle(r)
			return true
		}
		if h.typ == cmdWrite {
			r.buf = getBuffer(int(h.length))
			if c.br.Buffered() < int(h.length) {
				t.replies.flushIdle()
			}
			if _, err := io.ReadFull(c.br, r.buf.b[:h.length]); err != nil {
				r.start = time.Time{} // not a request answered
				c.recycle(r)
				c.readEnded(err)
				return false
			}
		}
	}
	switch h.typ {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		r.writing.Store(true)
	}
	if h.typ == cmdWrite && c.writeInline(r) {
		return true
	}
	r.inline = false
	c.dispatch(r)
	return true
}

// inlineReadMax is the largest read the reader answers itself when the
// backend can serve it without waiting (block.TryReader); larger ones are
// copied on workers, in parallel.
const inlineReadMax = sparseReadMin - 1

// readInline answers a small read on the reader goroutine if the backend
// can serve it from memory, and reports whether it did. The reply waits
// in the queue until the reader runs out of requests (or a worker writes).
func (c *conn) readInline(r *request) (ok bool) {
	if c.tryReader == nil || r.length > inlineReadMax {
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			// Let the worker path call ReadAt and answer.
			c.logBackendError("nbd: panic in TryReadAt", "export", c.exp.Name, "panic", p)
			ok = false
		}
	}()
	r.buf = getBuffer(int(r.length)) // kept for the worker if this fails
	p := r.buf.b[:r.length]
	if !c.tryReader.TryReadAt(p, int64(r.off)) {
		return false
	}
	w := &c.tx.replies
	w.lock()
	c.appendRead(r, p)
	w.unlock(true)
	return true
}

// Small writes without FUA usually land in the page cache in microseconds,
// less than handing them to a worker costs; but nothing tells beforehand
// when one will wait (dirty-page throttling, copy-on-write). So the reader
// runs them itself while they are fast: once their moving average exceeds
// slowInlineWrite, or one takes ten times that, writes go to workers for
// inlineWriteBackoff. (A single slow one is often the machine, not the
// backend: the reader was preempted.)
const (
	inlineWriteMax     = 64 << 10
	slowInlineWrite    = 500 * time.Microsecond
	inlineWriteBackoff = 100 * time.Millisecond
)

// writeInline runs a write on the reader goroutine if the policy above
// allows, and reports whether it did.
func (c *conn) writeInline(r *request) bool {
	t := &c.tx
	if r.flags&cmdFlagFUA != 0 || r.length > inlineWriteMax || c.srv.opts.WritesOnWorkers {
		return false
	}
	start := time.Now()
	if start.Before(t.slowUntil) {
		return false
	}
	c.handle(r) // recycles r
	d := time.Since(start)
	t.writeAvg += (d - t.writeAvg) / 8
	if t.writeAvg > slowInlineWrite || d > 10*slowInlineWrite {
		t.slowUntil = start.Add(d + inlineWriteBackoff)
	}
	return true
}

// maxSkip is the largest invalid WRITE payload read and thrown away to keep
// the connection; a client sending more is hung up on.
const maxSkip = 2 * maxPayload

// skipPayload discards the payload of a WRITE that is answered with an
// error; false means it was too large to skip or the read failed.
func (c *conn) skipPayload(h header) bool {
	if h.length > maxSkip {
		c.log.Warn("nbd: closing connection: WRITE payload too large to skip", "length", h.length, "limit", maxSkip)
		return false
	}
	if _, err := c.br.Discard(int(h.length)); err != nil {
		c.readEnded(err)
		return false
	}
	return true
}

// readEnded logs why the reader stopped.
func (c *conn) readEnded(err error) {
	switch {
	case c.stopping.Load():
		c.log.Debug("nbd: connection stopped by the server")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Debug("nbd: client hung up without NBD_CMD_DISC", "err", err)
	default:
		c.log.Info("nbd: connection read failed", "err", err)
	}
}

// dispatch hands r to an idle worker, starts one if none is idle and the
// limit allows, or else waits for one.
func (c *conn) dispatch(r *request) {
	t := &c.tx
	t.replies.busy.Add(1)
	select {
	case t.work <- r:
		return
	default:
	}
	if t.workers < c.srv.opts.MaxWorkers {
		t.workers++
		t.wg.Add(1)
		go c.worker(r)
		return
	}
	t.work <- r
}

func (c *conn) worker(r *request) {
	defer c.tx.wg.Done()
	for ok := true; ok; r, ok = <-c.tx.work {
		c.handle(r)
		c.tx.replies.busy.Add(-1)
	}
}

// wait stops the workers once they have answered every request.
func (t *transmission) wait() {
	close(t.work)
	t.wg.Wait()
	t.replies.flushIdle()
}

// handle runs one request, on a worker or (inline) on the reader.
func (c *conn) handle(r *request) {
	defer c.finish(r)
	switch r.typ {
	case cmdRead:
		c.read(r)
	case cmdWrite:
		c.write(r)
	case cmdFlush:
		c.flush(r)
	case cmdTrim:
		c.trim(r)
	case cmdWriteZeroes:
		c.writeZeroes(r)
	case cmdCache:
		c.cache(r)
	case cmdBlockStatus:
		c.blockStatus(r)
	}
}

// finish recovers a panic from the backend into an EIO reply and returns
// r's resources.
func (c *conn) finish(r *request) {
	if p := recover(); p != nil {
		c.logBackendError("nbd: panic in a backend call; answered EIO", "export", c.exp.Name,
			"command", cmdName(r.typ), "offset", r.off, "length", r.length, "panic", p, "stack", string(debug.Stack()))
		if !r.replied {
			c.replyError(r, errIO, cmdName(r.typ)+": internal error on the server")
		}
	}
	c.recycle(r)
}

// recycle reports r answered and returns its buffer, budget and slot.
func (c *conn) recycle(r *request) {
	c.observe(r)
	t := &c.tx
	if r.writing.Load() {
		t.writeDone(r)
	}
	putBuffer(r.buf)
	r.buf = nil
	if r.budget > 0 {
		t.release(r.budget)
		r.budget = 0
	}
	t.free <- r
}

// acquire counts a payload against the connection's budget, waiting while
// the budget is spent (a request always proceeds when nothing else holds
// budget, so one maximal request cannot deadlock).
func (t *transmission) acquire(r *request, n int) {
	if n <= budgetFree {
		return
	}
	t.bmu.Lock()
	for t.inBytes > 0 && t.inBytes+n > t.maxBytes {
		t.bcond.Wait()
	}
	t.inBytes += n
	t.bmu.Unlock()
	r.budget = n
}

func (t *transmission) release(n int) {
	t.bmu.Lock()
	t.inBytes -= n
	t.bmu.Unlock()
	t.bcond.Signal() // only the reader waits
}

// waitWrites blocks until no write command received before request seq is
// in flight.
func (t *transmission) waitWrites(seq uint64) {
	t.fmu.Lock()
	t.flushWaiting.Add(1)
	for t.writesBefore(seq) {
		t.fcond.Wait()
	}
	t.flushWaiting.Add(-1)
	t.fmu.Unlock()
}

func (t *transmission) writesBefore(seq uint64) bool {
	for i := range t.reqs {
		r := &t.reqs[i]
		if r.writing.Load() && r.seq.Load() < seq {
			return true
		}
	}
	return false
}

// writeDone marks r's write complete and wakes FLUSHes waiting for it.
// flushWaiting is raised before a FLUSH scans the slots, so either the scan
// sees this write finished or the broadcast reaches the waiter.
func (t *transmission) writeDone(r *request) {
	r.writing.Store(false)
	if t.flushWaiting.Load() > 0 {
		t.fmu.Lock()
		t.fcond.Broadcast()
		t.fmu.Unlock()
	}
}
