package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/daemon/api"
)

// route is one endpoint of the control API. routes is the whole API:
// apiHandler registers exactly these, and a test checks that
// docs/api/openapi.yaml documents exactly these. Each names its action
// for the audit log and the role it needs, checked on scope (authz.go).
type route struct {
	method, path string
	handle       func(d *Daemon, w http.ResponseWriter, r *http.Request) error
	action       string
	need         access.Role
	scope        scope
}

var routes = []route{
	{http.MethodGet, "/v1/disks", (*Daemon).handleListDisks, "disk.list", access.Reader, onList},
	{http.MethodPost, "/v1/disks", (*Daemon).handleCreateDisk, "disk.create", access.Operator, onBody},
	{http.MethodGet, "/v1/disks/{name}", (*Daemon).handleGetDisk, "disk.get", access.Reader, onDisk},
	{http.MethodDelete, "/v1/disks/{name}", (*Daemon).handleDeleteDisk, "disk.delete", access.Admin, onDisk},
	{http.MethodPost, "/v1/disks/{name}/grow", (*Daemon).handleGrowDisk, "disk.grow", access.Operator, onDisk},
	{http.MethodPost, "/v1/disks/{name}/flatten", (*Daemon).handleFlatten, "disk.flatten", access.Operator, onDisk},
	{http.MethodGet, "/v1/disks/{name}/snapshots", (*Daemon).handleListSnapshots, "snapshot.list", access.Reader, onDisk},
	{http.MethodPost, "/v1/disks/{name}/snapshots", (*Daemon).handleCreateSnapshot, "snapshot.create", access.Operator, onDisk},
	{http.MethodGet, "/v1/disks/{name}/snapshots/{snapshot}", (*Daemon).handleGetSnapshot, "snapshot.get", access.Reader, onDisk},
	{http.MethodDelete, "/v1/disks/{name}/snapshots/{snapshot}", (*Daemon).handleDeleteSnapshot, "snapshot.delete", access.Operator, onDisk},
	{http.MethodPost, "/v1/disks/{name}/snapshots/{snapshot}/rollback", (*Daemon).handleRollback, "snapshot.rollback", access.Operator, onDisk},
	{http.MethodGet, "/v1/disks/{name}/changes", (*Daemon).handleChanges, "disk.changes", access.Reader, onDisk},
	{http.MethodGet, "/v1/disks/{name}/capacity", (*Daemon).handleChainCapacity, "disk.capacity", access.Reader, onDisk},
	{http.MethodGet, "/v1/capacity", (*Daemon).handleCapacity, "capacity", access.Reader, onAll},
	{http.MethodGet, "/v1/store", (*Daemon).handleStoreStats, "store.stats", access.Reader, onAll},
	{http.MethodPost, "/v1/verify", (*Daemon).handleVerify, "verify", access.Operator, onAll},
	{http.MethodGet, "/v1/tasks", (*Daemon).handleListTasks, "task.list", access.Reader, onList},
	{http.MethodGet, "/v1/tasks/{id}", (*Daemon).handleGetTask, "task.get", access.Reader, onBody},
	{http.MethodPost, "/v1/tasks/{id}/cancel", (*Daemon).handleCancelTask, "task.cancel", access.Operator, onAll},
	{http.MethodPost, "/v1/tasks/{id}/progress", (*Daemon).handleTransferProgress, "transfer.progress", access.Operator, onAll},
	{http.MethodPost, "/v1/tasks/{id}/finish", (*Daemon).handleFinishTransfer, "transfer.finish", access.Operator, onAll},
	{http.MethodPost, "/v1/disks/{name}/export", (*Daemon).handleExportDisk, "disk.export", access.Operator, onDisk},
	{http.MethodPost, "/v1/images/{name}/export", (*Daemon).handleExportImage, "image.export", access.Reader, onAll},
	{http.MethodPost, "/v1/imports", (*Daemon).handleImport, "import", access.Operator, onAll},
	{http.MethodGet, "/v1/machines", (*Daemon).handleListMachines, "machine.list", access.Reader, onAll},
	{http.MethodPost, "/v1/machines", (*Daemon).handleCreateMachine, "machine.create", access.Operator, onAll},
	{http.MethodGet, "/v1/machines/{name}", (*Daemon).handleGetMachine, "machine.get", access.Reader, onAll},
	{http.MethodPatch, "/v1/machines/{name}", (*Daemon).handleUpdateMachine, "machine.update", access.Operator, onAll},
	{http.MethodDelete, "/v1/machines/{name}", (*Daemon).handleDeleteMachine, "machine.delete", access.Admin, onAll},
	{http.MethodGet, "/v1/machines/{name}/snapshots", (*Daemon).handleListMachineSnapshots, "machine.snapshot.list", access.Reader, onAll},
	{http.MethodPost, "/v1/machines/{name}/snapshots", (*Daemon).handleCreateMachineSnapshot, "machine.snapshot.create", access.Operator, onAll},
	{http.MethodGet, "/v1/machines/{name}/snapshots/{snapshot}", (*Daemon).handleGetMachineSnapshot, "machine.snapshot.get", access.Reader, onAll},
	{http.MethodDelete, "/v1/machines/{name}/snapshots/{snapshot}", (*Daemon).handleDeleteMachineSnapshot, "machine.snapshot.delete", access.Operator, onAll},
	{http.MethodPost, "/v1/machines/{name}/snapshots/{snapshot}/rollback", (*Daemon).handleRollbackMachine, "machine.snapshot.rollback", access.Operator, onAll},
	{http.MethodGet, "/v1/images", (*Daemon).handleListImages, "image.list", access.Reader, onAll},
	{http.MethodPost, "/v1/images", (*Daemon).handleCreateImage, "image.create", access.Operator, onAll},
	{http.MethodGet, "/v1/images/{name}", (*Daemon).handleGetImage, "image.get", access.Reader, onAll},
	{http.MethodDelete, "/v1/images/{name}", (*Daemon).handleDeleteImage, "image.delete", access.Operator, onAll},
	{http.MethodGet, "/v1/policies", (*Daemon).handleListPolicies, "policy.list", access.Reader, onAll},
	{http.MethodPost, "/v1/policies", (*Daemon).handleCreatePolicy, "policy.create", access.Operator, onAll},
	{http.MethodGet, "/v1/policies/{name}", (*Daemon).handleGetPolicy, "policy.get", access.Reader, onAll},
	{http.MethodPatch, "/v1/policies/{name}", (*Daemon).handleUpdatePolicy, "policy.update", access.Operator, onAll},
	{http.MethodDelete, "/v1/policies/{name}", (*Daemon).handleDeletePolicy, "policy.delete", access.Operator, onAll},
	{http.MethodPost, "/v1/policies/{name}/apply", (*Daemon).handleApplyPolicy, "policy.apply", access.Operator, onAll},
	{http.MethodPost, "/v1/policies/{name}/remove", (*Daemon).handleRemovePolicy, "policy.remove", access.Operator, onAll},
	{http.MethodGet, "/v1/events", (*Daemon).handleEvents, "event.list", access.Reader, onAll},
	{http.MethodGet, "/v1/disks/{name}/capacity/history", (*Daemon).handleDiskCapacityHistory, "disk.capacity.history", access.Reader, onDisk},
	{http.MethodGet, "/v1/machines/{name}/capacity/history", (*Daemon).handleMachineCapacityHistory, "machine.capacity.history", access.Reader, onAll},
	{http.MethodGet, "/v1/capacity/history", (*Daemon).handleCapacityHistory, "capacity.history", access.Reader, onAll},
	{http.MethodGet, "/metrics", (*Daemon).handleMetrics, "metrics", access.Reader, onAll},
	{http.MethodGet, "/v1/exports", (*Daemon).handleListExports, "export.list", access.Reader, onList},
	{http.MethodGet, "/v1/attachments", (*Daemon).handleListAttachments, "attachment.list", access.Reader, onAll},
	{http.MethodPost, "/v1/attachments", (*Daemon).handleAttach, "attachment.attach", access.Admin, onAll},
	{http.MethodGet, "/v1/attachments/{device}", (*Daemon).handleGetAttachment, "attachment.get", access.Reader, onAll},
	{http.MethodDelete, "/v1/attachments/{device}", (*Daemon).handleDetach, "attachment.detach", access.Admin, onAll},
	{http.MethodGet, "/v1/info", (*Daemon).handleInfo, "info", access.Reader, onList},
	{http.MethodGet, "/v1/health", (*Daemon).handleHealth, "health", access.None, onAll},
}

// Route is one endpoint of the control API, as docs/api/openapi.yaml
// names it: a method and a ServeMux pattern whose {wildcards} match
// OpenAPI's path templates.
type Route struct {
	Method, Path string
	Role         string // the role it needs: none, reader, operator or admin
	OnDisk       bool   // the role counts on the disk in the path (a grant on it suffices)
}

// Routes lists every endpoint the API serves.
func Routes() []Route {
	out := make([]Route, len(routes))
	for i, rt := range routes {
		out[i] = Route{rt.method, rt.path, rt.need.String(), rt.scope == onDisk}
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
		mux.Handle(rt.method+" "+rt.path, d.wrap(rt))
	}
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if clean := path.Clean(r.URL.Path); clean != r.URL.Path && clean+"/" != r.URL.Path {
			// ServeMux would answer with an HTML redirect.
			d.writeError(w, r, errorf(block.ErrNotFound, "no API endpoint %s %s: write the path without //, . or .. (as %s)", r.Method, r.URL.Path, clean))
			return
		}
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

// wrap checks the caller's role, turns a handler's error into the API's
// error answer, writes the audit log line, and answers 500 instead of
// dying when a handler panics.
func (d *Daemon) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		target := auditTarget(r)
		r = r.WithContext(context.WithValue(r.Context(), auditKey{}, &target))
		var err error
		defer func() {
			if p := recover(); p != nil {
				d.log.Error("API handler panicked", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
				err = fmt.Errorf("handler panicked: %v", p)
				d.writeError(sw, r, err)
			}
			d.audit(r, rt.action, target, sw.status, err)
			d.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "duration", time.Since(start))
		}()
		if err = d.checkRoute(rt, r); err == nil {
			err = rt.handle(d, sw, r)
		}
		if err != nil {
			d.writeError(sw, r, err)
		}
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

// Bounds on reading a request: its headers within apiHeaderTimeout, its
// body within apiBodyTimeout (a client sending a byte every few seconds is
// cut, whatever the body's size), and an idle keep-alive connection is
// closed after apiIdleTimeout.
const (
	apiHeaderTimeout = 10 * time.Second
	apiBodyTimeout   = 10 * time.Second
	apiIdleTimeout   = 2 * time.Minute
)

// decodeBody decodes a JSON request body into v: application/json only,
// at most maxBody bytes read within apiBodyTimeout, one object, decoded
// strictly: member names match the field's exactly (case included), a
// name given twice and a name no field has are refused.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return errorf(errMediaType, "Content-Type %q: the request body must be JSON, sent as application/json", ct)
	}
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(apiBodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err == nil {
		rc.SetReadDeadline(time.Time{})
	} else {
		// Keep the deadline: the server would otherwise wait for the rest
		// of the body before answering. The connection is closed after.
		w.Header().Set("Connection", "close")
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return errorf(errTooLarge, "request body is larger than the limit of %d bytes", tooLarge.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errorf(errTimeout, "request body not received within %v; send it at once", apiBodyTimeout)
	case err != nil:
		return invalidf("request body: %v", err)
	case len(bytes.TrimSpace(body)) == 0:
		return invalidf("request body is empty: send a JSON object")
	}
	return bodyError(jsonv2.Unmarshal(body, v, jsonv2.RejectUnknownMembers(true)))
}

// bodyError turns a strict decoder's error into one naming the member.
func bodyError(err error) error {
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	var typ *json.UnmarshalTypeError // from a type's own UnmarshalJSON (api.Size)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalidf("request body: the JSON ends early")
	case errors.As(err, &syn) && errors.Is(err, jsontext.ErrDuplicateName):
		field := memberName(syn.JSONPointer)
		return invalidField(field, "%s: given twice in the request body; give each member once", field)
	case errors.As(err, &syn) && strings.Contains(syn.Error(), "after top-level value"):
		return invalidf("request body: unexpected data after the JSON object: %v", syn.Err)
	case errors.As(err, &syn):
		return invalidf("request body: malformed JSON at byte %d: %v", syn.ByteOffset, syn.Err)
	case errors.As(err, &sem) && errors.Is(err, jsonv2.ErrUnknownName):
		field := memberName(sem.JSONPointer)
		return invalidField(field, "request body: unknown field %q (member names are case-sensitive)", field)
	case errors.As(err, &sem) && sem.JSONPointer == "":
		return invalidf("request body: expected a JSON object, got a JSON %s", kindName(sem.JSONKind))
	case errors.As(err, &sem):
		field := memberName(sem.JSONPointer)
		got := kindName(sem.JSONKind)
		if errors.As(err, &typ) && typ.Value != "" {
			got = typ.Value
		}
		want := "a valid value"
		if sem.GoType != nil {
			want = jsonTypeName(sem.GoType.Name())
		}
		return invalidField(field, "%s: expected %s, got a JSON %s", field, want, got)
	}
	return invalidf("request body: %v", err)
}

// memberName is the top-level member a JSON pointer ("/name") points into.
func memberName(p jsontext.Pointer) string {
	for name := range p.Tokens() {
		return name
	}
	return ""
}

func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "string"
	case '0':
		return "number"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "value"
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
