package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

func TestAPIErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err      error
		status   int
		code     string
		message  string
		internal bool
	}{
		{invalidf("size: bad"), http.StatusBadRequest, api.CodeInvalidArgument, "size: bad", false},
		{errorf(block.ErrNotFound, "disk %q not found", "x"), http.StatusNotFound, api.CodeNotFound, `disk "x" not found`, false},
		{fmt.Errorf("load: %w", block.ErrNotFound), http.StatusNotFound, api.CodeNotFound, "load: not found", false},
		{errorf(block.ErrExists, "taken"), http.StatusConflict, api.CodeAlreadyExists, "taken", false},
		{errorf(block.ErrInUse, "busy"), http.StatusConflict, api.CodeInUse, "busy", false},
		{errorf(block.ErrFailed, "broken"), http.StatusConflict, api.CodeFailedPrecondition, "broken", false},
		{errorf(errMethodNotAllowed, "no"), http.StatusMethodNotAllowed, api.CodeMethodNotAllowed, "no", false},
		{errorf(errTooLarge, "big"), http.StatusRequestEntityTooLarge, api.CodePayloadTooLarge, "big", false},
		{errorf(errMediaType, "xml"), http.StatusUnsupportedMediaType, api.CodeUnsupportedMediaType, "xml", false},
		{fmt.Errorf("record disk d: %w", block.ErrNoSpace), http.StatusInsufficientStorage, api.CodeInsufficientStorage, "record disk d: no space left", false},
		{errorf(block.ErrShutdown, "stopping"), http.StatusServiceUnavailable, api.CodeUnavailable, "stopping", false},
		{errors.New("disk on fire"), http.StatusInternalServerError, api.CodeInternal, "internal error: disk on fire (details in cairnd's log)", true},
	} {
		e, internal := apiError(tc.err)
		if e.Status != tc.status || e.Code != tc.code || e.Message != tc.message || internal != tc.internal {
			t.Errorf("apiError(%v) = %+v, internal %v; want %d %s %q, internal %v", tc.err, e, internal, tc.status, tc.code, tc.message, tc.internal)
		}
	}
}
