package daemon

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Sentinel errors of the daemon's operations. Wrap them (with the helpers
// below) so the message says what failed and what to do; apiError maps
// them to API codes and HTTP statuses, here and nowhere else.
var (
	ErrInvalid            = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrExists             = errors.New("already exists")
	ErrInUse              = errors.New("in use")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")

	// HTTP-level failures, produced by the API layer itself.
	errTooLarge         = errors.New("request body too large")
	errMediaType        = errors.New("unsupported media type")
	errMethodNotAllowed = errors.New("method not allowed")
)

// codedError is a message of its own that matches a sentinel with errors.Is
// without repeating the sentinel's text.
type codedError struct {
	kind error
	msg  string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &codedError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func invalidf(format string, args ...any) error { return errorf(ErrInvalid, format, args...) }

// codes maps sentinels to the API's code and status. The first match wins.
var codes = []struct {
	err    error
	status int
	code   string
}{
	{ErrInvalid, http.StatusBadRequest, api.CodeInvalidArgument},
	{ErrNotFound, http.StatusNotFound, api.CodeNotFound},
	{store.ErrNotFound, http.StatusNotFound, api.CodeNotFound},
	{ErrExists, http.StatusConflict, api.CodeAlreadyExists},
	{ErrInUse, http.StatusConflict, api.CodeInUse},
	{ErrFailedPrecondition, http.StatusConflict, api.CodeFailedPrecondition},
	{ErrQuota, http.StatusConflict, api.CodeQuotaExceeded},
	{cow.ErrSnapNotFound, http.StatusNotFound, api.CodeNotFound},
	{cow.ErrSnapExists, http.StatusConflict, api.CodeAlreadyExists},
	{cow.ErrSnapInUse, http.StatusConflict, api.CodeInUse},
	{cow.ErrSnapFailed, http.StatusConflict, api.CodeFailedPrecondition},
	{cow.ErrNoStore, http.StatusConflict, api.CodeFailedPrecondition},
	{errMethodNotAllowed, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed},
	{errTooLarge, http.StatusRequestEntityTooLarge, api.CodePayloadTooLarge},
	{errMediaType, http.StatusUnsupportedMediaType, api.CodeUnsupportedMediaType},
	{store.ErrNoSpace, http.StatusInsufficientStorage, api.CodeInsufficientStorage},
	{ErrUnavailable, http.StatusServiceUnavailable, api.CodeUnavailable},
}

// apiError turns any error into what the API answers. Errors that match no
// sentinel are internal: the client gets a generic message and the caller
// logs the cause.
func apiError(err error) (e *api.Error, internal bool) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return &api.Error{Status: c.status, Code: c.code, Message: err.Error()}, false
		}
	}
	return &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal,
		Message: "internal error: " + err.Error() + " (details in cairnd's log)"}, true
}
