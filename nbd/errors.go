package nbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/cairn-storage/cairn/block"
)

// errnoOf maps a backend error to the NBD error sent to the client
// ("Error values"): the sentinel errors of this package, and the system
// errors the spec names (EDQUOT and EFBIG count as ENOSPC). Anything else
// is EIO.
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, block.ErrNotFast):
		return errNotSup
	case errors.Is(err, block.ErrNoSpace), errors.Is(err, syscall.ENOSPC),
		errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, block.ErrReadOnly), errors.Is(err, syscall.EROFS), errors.Is(err, block.ErrDenied):
		return errPerm
	case errors.Is(err, block.ErrInvalid):
		return errInval
	case errors.Is(err, block.ErrShutdown), errors.Is(err, context.Canceled):
		return errShutdown
	}
	return errIO
}

// errnoMessage is the text sent to the client with an error chunk. For
// EIO it does not echo the backend's error, which may name server paths.
func errnoMessage(op string, errno uint32, err error) string {
	switch errno {
	case errIO:
		return op + ": I/O error on the server (its log has the details)"
	case errNotSup:
		return op + ": zeroing this range is not faster than writing it"
	case errNoSpc:
		return op + ": no space left on the server"
	case errPerm:
		return op + ": the export is read-only"
	case errShutdown:
		return op + ": the server is shutting down"
	}
	return fmt.Sprintf("%s: %v", op, err)
}

// panicError turns a recovered panic into an error.
func panicError(p any) error {
	if err, ok := p.(error); ok {
		return fmt.Errorf("panic: %w", err)
	}
	return fmt.Errorf("panic: %v", p)
}
