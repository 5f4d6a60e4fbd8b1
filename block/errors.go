package block

import (
	"errors"
	"fmt"
)

// The error vocabulary every layer shares. Wrap them (Errorf) so the
// message says what failed and what to do; match them with errors.Is.
// Each frontend maps them to its own codes in one place: nbd/errors.go
// (NBD error values), fusefs/mount.go (errnos), daemon/errors.go (API
// codes and HTTP statuses). Any other error is an I/O or internal error.
var (
	// Device errors (also sent to NBD and FUSE clients).
	ErrReadOnly = errors.New("read-only")                       // NBD EPERM, FUSE EROFS, HTTP 409
	ErrNoSpace  = errors.New("no space left")                   // NBD ENOSPC, FUSE ENOSPC, HTTP 507
	ErrNotFast  = errors.New("fast zero not possible")          // NBD ENOTSUP, FUSE EOPNOTSUPP
	ErrInvalid  = errors.New("invalid argument")                // NBD EINVAL, FUSE EINVAL, HTTP 400
	ErrShutdown = errors.New("shutting down")                   // NBD ESHUTDOWN, HTTP 503
	ErrNotFound = errors.New("not found")                       // FUSE ENOENT, HTTP 404
	ErrExists   = errors.New("already exists")                  // HTTP 409
	ErrInUse    = errors.New("in use")                          // HTTP 409
	ErrFailed   = errors.New("failed precondition")             // HTTP 409: the object's state forbids it
	ErrQuota    = errors.New("quota exceeded")                  // HTTP 409
	ErrCorrupt  = errors.New("data failed its integrity check") // HTTP 500; NBD EIO
	ErrDenied   = errors.New("permission denied")               // HTTP 403; NBD EPERM, FUSE EACCES: the caller may not
)

// Error is a message of its own that matches one of the sentinels above
// with errors.Is without repeating the sentinel's text. Field, when set,
// names the API field the error is about (the CLI maps it to its flag).
type Error struct {
	Kind  error
	Field string
	Msg   string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

// Errorf returns an *Error of kind with a formatted message.
func Errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
