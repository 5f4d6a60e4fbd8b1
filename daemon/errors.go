package daemon

import (
	"errors"
	"net/http"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// The daemon's errors are block's vocabulary (block/errors.go), wrapped
// with errorf and invalidf so the message says what failed and what to do
// (a request field that breaks a rule also names the field: fieldError in
// validate.go); apiError maps them to API codes and HTTP statuses, here
// and nowhere else.

// HTTP-level failures, produced by the API layer itself.
var (
	errTooLarge         = errors.New("request body too large")
	errMediaType        = errors.New("unsupported media type")
	errMethodNotAllowed = errors.New("method not allowed")
	errTimeout          = errors.New("request timeout")
)

func errorf(kind error, format string, args ...any) error { return block.Errorf(kind, format, args...) }

func invalidf(format string, args ...any) error {
	return block.Errorf(block.ErrInvalid, format, args...)
}

// codes maps sentinels to the API's code and status. The first match wins.
var codes = []struct {
	err    error
	status int
	code   string
}{
	{block.ErrInvalid, http.StatusBadRequest, api.CodeInvalidArgument},
	{block.ErrDenied, http.StatusForbidden, api.CodePermissionDenied},
	{block.ErrNotFound, http.StatusNotFound, api.CodeNotFound},
	{block.ErrExists, http.StatusConflict, api.CodeAlreadyExists},
	{block.ErrInUse, http.StatusConflict, api.CodeInUse},
	{block.ErrFailed, http.StatusConflict, api.CodeFailedPrecondition},
	{block.ErrQuota, http.StatusConflict, api.CodeQuotaExceeded},
	{block.ErrReadOnly, http.StatusConflict, api.CodeFailedPrecondition},
	{errMethodNotAllowed, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed},
	{errTooLarge, http.StatusRequestEntityTooLarge, api.CodePayloadTooLarge},
	{errTimeout, http.StatusRequestTimeout, api.CodeRequestTimeout},
	{errMediaType, http.StatusUnsupportedMediaType, api.CodeUnsupportedMediaType},
	{block.ErrNoSpace, http.StatusInsufficientStorage, api.CodeInsufficientStorage},
	{block.ErrShutdown, http.StatusServiceUnavailable, api.CodeUnavailable},
}

// apiError turns any error into what the API answers. Errors that match no
// sentinel are internal: the client gets a generic message and the caller
// logs the cause.
func apiError(err error) (e *api.Error, internal bool) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			e := &api.Error{Status: c.status, Code: c.code, Message: err.Error()}
			if be := (*block.Error)(nil); errors.As(err, &be) {
				e.Field = be.Field
			}
			return e, false
		}
	}
	return &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal,
		Message: "internal error: " + err.Error() + " (details in cairnd's log)"}, true
}
