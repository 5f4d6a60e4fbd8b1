package kernel

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// SocketPair makes one connection for a device: a connected Unix stream
// socketpair whose server end is a net.Conn (for
// nbd.Server.ServeTransmission) and whose kernel end is a file (its Fd
// goes to Connect or Reconfigure; close it after the call, the kernel
// keeps its own reference).
func SocketPair() (server net.Conn, kernelEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "nbd-server")
	server, err = net.FileConn(f) // a duplicate: f is closed either way
	f.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return server, os.NewFile(uintptr(fds[1]), "nbd-kernel"), nil
}
