package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// route is one endpoint of the control API. routes is the whole API:
// apiHandler registers exactly these, and a test checks that
// docs/api/openapi.yaml documents exactly these.
type route struct {
	method, path string
	handle       func(d *Daemon, w http.ResponseWriter, r *http.Request) error
}

var routes = []route{
	{http.MethodGet, "/v1/disks", (*Daemon).handleListDisks},
	{http.MethodPost, "/v1/disks", (*Daemon).handleCreateDisk},
	{http.MethodGet, "/v1/disks/{name}", (*Daemon).handleGetDisk},
	{http.MethodDelete, "/v1/disks/{name}", (*Daemon).handleDeleteDisk},
	{http.MethodPost, "/v1/disks/{name}/grow", (*Daemon).handleGrowDisk},
	{http.MethodPost, "/v1/disks/{name}/flatten", (*Daemon).handleFlatten},
	{http.MethodGet, "/v1/disks/{name}/snapshots", (*Daemon).handleListSnapshots},
	{http.MethodPost, "/v1/disks/{name}/snapshots", (*Daemon).handleCreateSnapshot},
	{http.MethodGet, "/v1/disks/{name}/snapshots/{snapshot}", (*Daemon).handleGetSnapshot},
	{http.MethodDelete, "/v1/disks/{name}/snapshots/{snapshot}", (*Daemon).handleDeleteSnapshot},
	{http.MethodPost, "/v1/disks/{name}/snapshots/{snapshot}/rollback", (*Daemon).handleRollback},
	{http.MethodGet, "/v1/disks/{name}/changes", (*Daemon).handleChanges},
	{http.MethodGet, "/v1/disks/{name}/capacity", (*Daemon).handleChainCapacity},
	{http.MethodGet, "/v1/capacity", (*Daemon).handleCapacity},
	{http.MethodGet, "/v1/store", (*Daemon).handleStoreStats},
	{http.MethodPost, "/v1/verify", (*Daemon).handleVerify},
	{http.MethodGet, "/v1/tasks", (*Daemon).handleListTasks},
	{http.MethodGet, "/v1/tasks/{id}", (*Daemon).handleGetTask},
	{http.MethodPost, "/v1/tasks/{id}/cancel", (*Daemon).handleCancelTask},
	{http.MethodGet, "/v1/machines", (*Daemon).handleListMachines},
	{http.MethodPost, "/v1/machines", (*Daemon).handleCreateMachine},
	{http.MethodGet, "/v1/machines/{name}", (*Daemon).handleGetMachine},
	{http.MethodPatch, "/v1/machines/{name}", (*Daemon).handleUpdateMachine},
	{http.MethodDelete, "/v1/machines/{name}", (*Daemon).handleDeleteMachine},
	{http.MethodGet, "/v1/machines/{name}/snapshots", (*Daemon).handleListMachineSnapshots},
	{http.MethodPost, "/v1/machines/{name}/snapshots", (*Daemon).handleCreateMachineSnapshot},
	{http.MethodGet, "/v1/machines/{name}/snapshots/{snapshot}", (*Daemon).handleGetMachineSnapshot},
	{http.MethodDelete, "/v1/machines/{name}/snapshots/{snapshot}", (*Daemon).handleDeleteMachineSnapshot},
	{http.MethodPost, "/v1/machines/{name}/snapshots/{snapshot}/rollback", (*Daemon).handleRollbackMachine},
	{http.MethodGet, "/v1/images", (*Daemon).handleListImages},
	{http.MethodPost, "/v1/images", (*Daemon).handleCreateImage},
	{http.MethodGet, "/v1/images/{name}", (*Daemon).handleGetImage},
	{http.MethodDelete, "/v1/images/{name}", (*Daemon).handleDeleteImage},
	{http.MethodGet, "/v1/policies", (*Daemon).handleListPolicies},
	{http.MethodPost, "/v1/policies", (*Daemon).handleCreatePolicy},
	{http.MethodGet, "/v1/policies/{name}", (*Daemon).handleGetPolicy},
	{http.MethodPatch, "/v1/policies/{name}", (*Daemon).handleUpdatePolicy},
	{http.MethodDelete, "/v1/policies/{name}", (*Daemon).handleDeletePolicy},
	{http.MethodPost, "/v1/policies/{name}/apply", (*Daemon).handleApplyPolicy},
	{http.MethodPost, "/v1/policies/{name}/remove", (*Daemon).handleRemovePolicy},
	{http.MethodGet, "/v1/events", (*Daemon).handleEvents},
	{http.MethodGet, "/v1/disks/{name}/capacity/history", (*Daemon).handleDiskCapacityHistory},
	{http.MethodGet, "/v1/machines/{name}/capacity/history", (*Daemon).handleMachineCapacityHistory},
	{http.MethodGet, "/v1/capacity/history", (*Daemon).handleCapacityHistory},
	{http.MethodGet, "/metrics", (*Daemon).handleMetrics},
	{http.MethodGet, "/v1/exports", (*Daemon).handleListExports},
	{http.MethodGet, "/v1/info", (*Daemon).handleInfo},
	{http.MethodGet, "/v1/health", (*Daemon).handleHealth},
}

// Route is one endpoint of the control API, as docs/api/openapi.yaml
// names it: a method and a ServeMux pattern whose {wildcards} match
// OpenAPI's path templates.
type Route struct{ Method, Path string }

// Routes lists every endpoint the API serves.
func Routes() []Route {
	out := make([]Route, len(routes))
	for i, rt := range routes {
		out[i] = Route{rt.method, rt.path}
	}
	return out
}

// maxBody caps request bodies.
const maxBody = 1 << 20

// apiHandler serves routes; anything else gets a JSON 404, or 405 with
// Allow when the path exists for other methods.
func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.method+" "+rt.path, d.wrap(rt.handle))
	}
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		var allow []string
		for _, m := range methods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			d.writeError(w, r, errorf(errMethodNotAllowed, "method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow, ", ")))
			return
		}
		d.writeError(w, r, errorf(block.ErrNotFound, "no API endpoint %s %s (the API is under /v1/; see docs/api/openapi.yaml)", r.Method, r.URL.Path))
	})
}

// wrap turns a handler's error into the API's error answer, logs the
// request, and answers 500 instead of dying when a handler panics.
func (d *Daemon) wrap(h func(d *Daemon, w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				d.log.Error("API handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				d.writeError(w, r, fmt.Errorf("handler panicked: %v", p))
			}
		}()
		if err := h(d, w, r); err != nil {
			d.writeError(w, r, err)
		}
		d.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "duration", time.Since(start))
	})
}

func (d *Daemon) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e, internal := apiError(err)
	if internal {
		d.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, e.Status, api.ErrorBody{Error: *e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encode answer failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// decodeBody decodes a JSON request body into v: application/json only,
// at most maxBody bytes, one object, no unknown fields.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return errorf(errMediaType, "Content-Type %q: the request body must be JSON, sent as application/json", ct)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = terr
			if terr == nil {
				err = errors.New("more than one JSON value")
			}
			err = fmt.Errorf("unexpected data after the JSON object: %w", err)
		}
	}
	return bodyError(err)
}

func bodyError(err error) error {
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooLarge):
		return errorf(errTooLarge, "request body is larger than the limit of %d bytes", tooLarge.Limit)
	case errors.Is(err, io.EOF):
		return invalidf("request body is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalidf("request body: the JSON ends early")
	case errors.As(err, &syntax):
		return invalidf("request body: malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typ) && typ.Field != "":
		return invalidField(typ.Field, "%s: expected %s, got a JSON %s", typ.Field, jsonTypeName(typ.Type.Name()), typ.Value)
	case errors.As(err, &typ):
		return invalidf("request body: expected a JSON object, got a JSON %s", typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return invalidField(strings.Trim(field, `"`), "request body: unknown field %s", field)
	}
	return invalidf("request body: %v", err)
}

func jsonTypeName(goType string) string {
	switch goType {
	case "Size":
		return `a number of bytes or a size string such as "10G"`
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	}
	return goType
}

// queryValues returns the last value of each query parameter of r, all of
// which must be among names (an error names any other).
func queryValues(r *http.Request, names ...string) (map[string]string, error) {
	out := make(map[string]string, len(names))
	for key, vals := range r.URL.Query() {
		if !slices.Contains(names, key) {
			return nil, invalidField(key, "unknown query parameter %q (accepted: %s)", key, strings.Join(names, ", "))
		}
		out[key] = vals[len(vals)-1]
	}
	return out, nil
}

// queryStrings parses the string query parameters a handler accepts,
// trimmed of spaces; a missing one is "".
func queryStrings(r *http.Request, names ...string) (map[string]string, error) {
	q, err := queryValues(r, names...)
	for key, v := range q {
		q[key] = strings.TrimSpace(v)
	}
	return q, err
}

// queryBools parses the boolean query parameters a handler accepts; a
// missing one is false.
func queryBools(r *http.Request, names ...string) (map[string]bool, error) {
	q, err := queryValues(r, names...)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(q))
	for key, v := range q {
		switch strings.ToLower(v) {
		case "true", "1", "":
			out[key] = true
		case "false", "0":
			out[key] = false
		default:
			return nil, invalidField(key, "%s: %q is not true or false", key, v)
		}
	}
	return out, nil
}
