// Package peercred tells who is at the other end of a Unix socket: the
// kernel's record of the connecting process's credentials (SO_PEERCRED)
// and supplementary groups (SO_PEERGROUPS), taken when it connected, so a
// client cannot claim to be anyone else.
package peercred

import (
	"errors"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cred is a Unix socket peer's identity when it connected.
type Cred struct {
	PID    int32
	UID    uint32
	GID    uint32   // primary group
	Groups []uint32 // supplementary groups
}

// InGroup reports whether gid is the peer's primary or a supplementary group.
func (c Cred) InGroup(gid uint32) bool {
	if c.GID == gid {
		return true
	}
	for _, g := range c.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// soPeerGroups is SO_PEERGROUPS (Linux 4.13; not in x/sys/unix).
const soPeerGroups = 59

// ErrNotUnix is returned for connections that are not Unix sockets.
var ErrNotUnix = errors.New("peercred: not a Unix socket")

// Of reads the peer's credentials of a Unix socket connection.
func Of(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if _, unixConn := c.(*net.UnixConn); !ok || !unixConn {
		return Cred{}, ErrNotUnix
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var cred Cred
	var opErr error
	err = raw.Control(func(fd uintptr) {
		var uc *unix.Ucred
		if uc, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); opErr != nil {
			return
		}
		cred = Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}
		cred.Groups, opErr = peerGroups(int(fd))
	})
	if err == nil {
		err = opErr
	}
	return cred, err
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// it is too small (ERANGE, with the size needed).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, soPeerGroups,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch errno {
		case 0:
			return buf[:n/4], nil
		case unix.ERANGE:
			buf = make([]uint32, n/4+1)
		case unix.ENOPROTOOPT: // a kernel before 4.13: primary group only
			return nil, nil
		default:
			return nil, errno
		}
	}
}
