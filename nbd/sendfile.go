package nbd

import (
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// sendfile support of replies: data goes from a backend's file to the
// socket inside the kernel. Only for sockets the server can reach the
// descriptor of (unix and TCP without TLS).

// sendfileState is what the RawConn callback works on; a method value bound
// once, so a send allocates nothing. Guarded by replies.mu.
type sendfileState struct {
	raw     syscall.RawConn
	fn      func(uintptr) bool
	fd      int   // source file
	off     int64 // next offset in it
	left    int   // bytes still to send
	readErr error // the source failed
	sockErr error // the socket failed
}

func (w *replies) initSendfile(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	switch nc.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		return // a wrapper (TLS) would not see the bytes
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	w.sf.raw = raw
	w.sf.fn = w.sendfileStep
}

func (w *replies) canSendfile() bool { return w.sf.raw != nil }

// sendfile sends n bytes of file fd from off, after writing what is
// queued. Bytes past the end of the file are sent as zeros. It returns an
// error only if reading the file failed (the bytes not sent are then
// zeros, padding the chunk); a socket error closes the connection.
func (w *replies) sendfile(fd uintptr, off int64, n int) error {
	w.flush()
	if w.err != nil {
		return nil
	}
	sf := &w.sf
	sf.fd, sf.off, sf.left, sf.readErr, sf.sockErr = int(fd), off, n, nil, nil
	if err := sf.raw.Write(sf.fn); err != nil && sf.sockErr == nil {
		sf.sockErr = err
	}
	if sf.sockErr != nil {
		w.fail(sf.sockErr)
		return nil
	}
	for sf.left > 0 && w.err == nil { // end of file, or a read error
		k := min(sf.left, len(zeroes))
		if _, err := w.nc.Write(zeroes[:k]); err != nil {
			w.fail(err)
		}
		sf.left -= k
	}
	return sf.readErr
}

var zeroes = make([]byte, 64<<10)

// sendfileStep is the RawConn.Write callback: false asks to be called
// again when the socket can take more.
func (w *replies) sendfileStep(sock uintptr) bool {
	sf := &w.sf
	for sf.left > 0 {
		m, err := unix.Sendfile(int(sock), sf.fd, &sf.off, sf.left)
		if m > 0 {
			sf.left -= m
			continue
		}
		switch {
		case err == unix.EAGAIN:
			return false
		case err == unix.EINTR:
			continue
		case err == nil: // end of the file
			return true
		case socketErrno(err):
			sf.sockErr = err
			return true
		default:
			sf.readErr = err
			return true
		}
	}
	return true
}

// socketErrno reports whether a sendfile error is the socket's.
func socketErrno(err error) bool {
	return errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.ENOTCONN) ||
		errors.Is(err, unix.ESHUTDOWN) || errors.Is(err, unix.ECONNABORTED)
}
