package daemon

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cairn-storage/cairn/internal/faultfs"

	"github.com/cairn-storage/cairn/daemon/access"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Fuzz targets for what an API client sends: JSON bodies, paths and query
// parameters, through the real handler (routes, role check, decoding,
// validation) of a real daemon on a temporary data directory, as root.
// Whatever the input, the answer is well-formed JSON with a status the
// API documents, and never a 500 (a 500 means a handler failed in a way
// the client's input should not reach). Seeds run with go test; long
// runs: make fuzz (FUZZTIME per target).

// fuzzDir is the fuzz daemon's directory, removed by TestMain.
var fuzzDir string

var fuzzDaemon = sync.OnceValues(func() (*Daemon, error) {
	dir, err := os.MkdirTemp("", "cairn-fuzz-")
	if err != nil {
		return nil, err
	}
	fuzzDir = dir
	d, err := New(Config{DataDir: filepath.Join(dir, "data"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return nil, err
	}
	// A disk with a snapshot for the requests to find.
	if _, err := d.CreateDisk(context.Background(), api.CreateDiskRequest{Name: "d", Size: "1M"}); err != nil {
		return nil, err
	}
	if _, err := d.CreateSnapshot(context.Background(), "d", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
		return nil, err
	}
	return d, nil
})

// TestMain serves faultfs when the test binary runs as its child
// (faults_test.go's faultDaemon), and stops the fuzz daemon, if a target
// started one, and removes its data. (One TestMain serves both the
// daemon and daemon_test packages' tests.)
func TestMain(m *testing.M) {
	faultfs.ChildMain()
	code := m.Run()
	if fuzzDir != "" {
		if d, err := fuzzDaemon(); err == nil {
			d.Shutdown(context.Background())
		}
		os.RemoveAll(fuzzDir)
	}
	os.Exit(code)
}

// fuzzRequest serves one request as root and checks the answer.
func fuzzRequest(t *testing.T, method, target string, body []byte) {
	d, err := fuzzDaemon()
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.NewRequest(method, "http://cairn"+target, strings.NewReader(string(body)))
	if err != nil {
		return // not a request a client could send
	}
	r.Header.Set("Content-Type", "application/json")
	r = r.WithContext(context.WithValue(r.Context(), callerKey{}, access.Caller{Local: true, UID: 0}))
	w := httptest.NewRecorder()
	d.apiHandler().ServeHTTP(w, r)
	if w.Code >= 500 && w.Code != http.StatusServiceUnavailable && w.Code != http.StatusInsufficientStorage {
		t.Fatalf("%s %s %q: status %d: %s", method, target, body, w.Code, w.Body)
	}
	if w.Code == http.StatusNoContent {
		return
	}
	var v any
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %q", method, target, w.Body)
	}
	// Undo what a fuzzed request made, so the state stays small.
	if method == http.MethodPost && w.Code == http.StatusCreated {
		var disk api.Disk
		if json.Unmarshal(w.Body.Bytes(), &disk) == nil && disk.Name != "d" {
			d.DeleteDisk(context.Background(), disk.Name, api.DeleteDiskOptions{Force: true})
		}
	}
}

// bodyRoutes are the routes that take a JSON body, with path values filled.
var bodyRoutes = []string{"/v1/disks", "/v1/disks/d/grow", "/v1/disks/d/snapshots", "/v1/verify"}

func FuzzAPIBody(f *testing.F) {
	for i, seed := range []string{
		`{"name":"x","size":"1M"}`, `{"Name":"x","size":"1M"}`, `{"name":"x","name":"y","size":"1M"}`,
		`{"size":"2M"}`, `{"size":9223372036854775807}`, `{"name":"snap2","description":"d"}`,
		`{"disk":"d"}`, `[[[[[[[[]]]]]]]]`, `{"name":"x","size":"1M","adopt":"/etc/shadow"}`, `{"size":1e400}`,
		`{"name":"\u0441nap","size":"1M"}`, "{\"name\":\"x\xff\",\"size\":\"1M\"}",
	} {
		f.Add(uint8(i), []byte(seed))
	}
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		fuzzRequest(t, http.MethodPost, bodyRoutes[int(route)%len(bodyRoutes)], body)
	})
}

func FuzzAPIPath(f *testing.F) {
	for _, seed := range []string{
		"GET /v1/disks/d", "GET /v1/disks/d/snapshots/s1", "DELETE /v1/disks/nope", "GET /v1/disks/%2e%2e%2fetc",
		"GET /v1/disks/d/snapshots/..%2f..", "GET /v1/tasks/verify-1", "POST /v1/disks/d/snapshots/s1/rollback",
		"GET /v1//disks", "PUT /v1/disks/d", "GET /v1/disks/" + strings.Repeat("a", 5000),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		method, path, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(path, "/") || method == http.MethodPost || method == http.MethodDelete && path == "/v1/disks/d" {
			return // bodies are FuzzAPIBody's; the fixture disk stays
		}
		fuzzRequest(t, method, path, nil)
	})
}

// queryRoutes take query parameters.
var queryRoutes = []string{"DELETE /v1/disks/nope", "DELETE /v1/disks/d/snapshots/nope", "GET /v1/disks/d/changes", "POST /v1/disks/d/snapshots/nope/rollback"}

func FuzzAPIQuery(f *testing.F) {
	for i, seed := range []string{"force=true", "forse=1", "force=maybe&force=1", "from=s1&to=", "from=%00", "delete_adopted=true&force=false", "a=%zz"} {
		f.Add(uint8(i), seed)
	}
	f.Fuzz(func(t *testing.T, route uint8, query string) {
		method, path, _ := strings.Cut(queryRoutes[int(route)%len(queryRoutes)], " ")
		if _, err := url.ParseQuery(query); err != nil && len(query) > 0 && query[0] == '?' {
			return
		}
		fuzzRequest(t, method, path+"?"+query, nil)
	})
}
