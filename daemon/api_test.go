package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// answer is a raw HTTP answer from the API.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) apiError(t *testing.T) api.Error {
	t.Helper()
	var eb api.ErrorBody
	if err := json.Unmarshal(a.body, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
		t.Fatalf("answer %d is not an API error body: %q", a.status, a.body)
	}
	return eb.Error
}

// do sends a raw request to the daemon's API socket.
func do(t *testing.T, in *daemontest.Instance, method, path, contentType string, body io.Reader) answer {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", in.Client.Socket)
		},
	}}
	req, err := http.NewRequest(method, "http://cairnd"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// wantAPIError checks err is an API error with the status and code and a
// message containing every one of contains.
func wantAPIError(t *testing.T, err error, status int, code string, contains ...string) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want an API error %d %s", err, err, status, code)
	}
	if e.Status != status || e.Code != code {
		t.Fatalf("got %d %s (%q), want %d %s", e.Status, e.Code, e.Message, status, code)
	}
	for _, c := range contains {
		if !strings.Contains(e.Message, c) {
			t.Errorf("message %q does not contain %q", e.Message, c)
		}
	}
}

func createDisk(t *testing.T, in *daemontest.Instance, name, size string) api.Disk {
	t.Helper()
	d, err := in.Client.CreateDisk(context.Background(), api.CreateDiskRequest{Name: name, Size: api.Size(size)})
	if err != nil {
		t.Fatalf("create disk %s: %v", name, err)
	}
	return d
}

func TestDiskLifecycle(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	c := in.Client

	disks, err := c.Disks(ctx)
	if err != nil || len(disks) != 0 {
		t.Fatalf("empty daemon lists %v, %v", disks, err)
	}
	d, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "vm1-root", Size: "1G", Description: "root of vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "vm1-root" || d.Size != 1<<30 || d.BlockSize != 64<<10 || d.State != api.DiskReady ||
		d.Export != "vm1-root" || d.Adopted || d.Description != "root of vm1" || d.ID == 0 {
		t.Fatalf("created %+v", d)
	}
	if want := filepath.Join(in.Config.DataDir, "disks"); filepath.Dir(d.Path) != want {
		t.Errorf("live image %s is not in %s", d.Path, want)
	}
	fi, err := os.Stat(d.Path)
	if err != nil || fi.Size() != 1<<30 {
		t.Fatalf("live image: %v, %v", fi, err)
	}
	d2 := createDisk(t, in, "b", "4096")
	if d2.ID == d.ID {
		t.Errorf("two disks share id %d", d.ID)
	}
	if _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "b", Size: "1M"}); err != nil {
		wantAPIError(t, err, 409, api.CodeAlreadyExists, `"b"`)
	} else {
		t.Fatal("duplicate name accepted")
	}

	disks, err = c.Disks(ctx)
	if err != nil || len(disks) != 2 || disks[0].Name != "b" || disks[1].Name != "vm1-root" {
		t.Fatalf("list: %+v, %v", disks, err)
	}
	got, err := c.Disk(ctx, "vm1-root")
	if err != nil || got.Size != d.Size || got.Path != d.Path {
		t.Fatalf("show: %+v, %v", got, err)
	}

	g, err := c.GrowDisk(ctx, "vm1-root", api.Bytes(2<<30))
	if err != nil || g.Size != 2<<30 {
		t.Fatalf("grow: %+v, %v", g, err)
	}
	if fi, _ := os.Stat(d.Path); fi.Size() != 2<<30 {
		t.Errorf("live image is %d bytes after grow", fi.Size())
	}

	if err := c.DeleteDisk(ctx, "vm1-root", api.DeleteDiskOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("live image still there after delete: %v", err)
	}
	_, err = c.Disk(ctx, "vm1-root")
	wantAPIError(t, err, 404, api.CodeNotFound, "vm1-root")
	err = c.DeleteDisk(ctx, "vm1-root", api.DeleteDiskOptions{})
	wantAPIError(t, err, 404, api.CodeNotFound)
}

func TestGrowErrors(t *testing.T) {
	in := daemontest.Start(t, nil)
	createDisk(t, in, "d", "1M")
	for _, tc := range []struct {
		name, disk string
		size       api.Size
		status     int
		code       string
		contains   []string
	}{
		{"same size", "d", "1M", 400, api.CodeInvalidArgument, []string{"size", "already"}},
		{"smaller", "d", "512K", 400, api.CodeInvalidArgument, []string{"size", "only grow"}},
		{"unaligned", "d", "1049000", 400, api.CodeInvalidArgument, []string{"size", "4 KiB"}},
		{"bad unit", "d", "2X", 400, api.CodeInvalidArgument, []string{"size", `"2X"`}},
		{"missing", "d", "", 400, api.CodeInvalidArgument, []string{"size is required"}},
		{"too large", "d", "65T", 400, api.CodeInvalidArgument, []string{"size", "limit"}},
		{"unknown disk", "nope", "2M", 404, api.CodeNotFound, []string{`"nope"`}},
		{"bad name", "-x", "2M", 400, api.CodeInvalidArgument, []string{daemon.NameRule}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := in.Client.GrowDisk(context.Background(), tc.disk, tc.size)
			wantAPIError(t, err, tc.status, tc.code, tc.contains...)
		})
	}
}

func TestCreateValidation(t *testing.T) {
	dir := t.TempDir()
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.AdoptAllow = []string{dir, "/dev/null", filepath.Dir(cfg.DataDir)}
	in := daemontest.Start(t, &cfg)
	createDisk(t, in, "taken", "1M")
	notAligned := filepath.Join(dir, "odd.raw")
	if err := os.WriteFile(notAligned, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.raw")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	inData := filepath.Join(in.Config.DataDir, "mine.raw")
	if err := os.WriteFile(inData, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		req      api.CreateDiskRequest
		status   int
		code     string
		contains []string
	}{
		{"no name", api.CreateDiskRequest{Size: "1M"}, 400, api.CodeInvalidArgument, []string{"name", daemon.NameRule}},
		{"bad name", api.CreateDiskRequest{Name: "a/b", Size: "1M"}, 400, api.CodeInvalidArgument, []string{"name", daemon.NameRule}},
		{"snapshot-like name", api.CreateDiskRequest{Name: "a@b", Size: "1M"}, 400, api.CodeInvalidArgument, []string{daemon.NameRule}},
		{"no size", api.CreateDiskRequest{Name: "x"}, 400, api.CodeInvalidArgument, []string{"size is required"}},
		{"bad size", api.CreateDiskRequest{Name: "x", Size: "ten"}, 400, api.CodeInvalidArgument, []string{"size", `"ten"`}},
		{"zero size", api.CreateDiskRequest{Name: "x", Size: "0"}, 400, api.CodeInvalidArgument, []string{"size", "zero"}},
		{"negative size", api.CreateDiskRequest{Name: "x", Size: "-4096"}, 400, api.CodeInvalidArgument, []string{"size"}},
		{"unaligned size", api.CreateDiskRequest{Name: "x", Size: "1000"}, 400, api.CodeInvalidArgument, []string{"size", "4 KiB"}},
		{"too large", api.CreateDiskRequest{Name: "x", Size: "100T"}, 400, api.CodeInvalidArgument, []string{"size", "limit"}},
		{"too many blocks", api.CreateDiskRequest{Name: "x", Size: "8T", BlockSize: "4K"}, 400, api.CodeInvalidArgument, []string{"size", "block_size"}},
		{"bad block size", api.CreateDiskRequest{Name: "x", Size: "1M", BlockSize: "3K"}, 400, api.CodeInvalidArgument, []string{"block_size", "power of two"}},
		{"block size too big", api.CreateDiskRequest{Name: "x", Size: "1M", BlockSize: "8M"}, 400, api.CodeInvalidArgument, []string{"block_size"}},
		{"block size unparsable", api.CreateDiskRequest{Name: "x", Size: "1M", BlockSize: "big"}, 400, api.CodeInvalidArgument, []string{"block_size"}},
		{"long description", api.CreateDiskRequest{Name: "x", Size: "1M", Description: strings.Repeat("d", 257)}, 400, api.CodeInvalidArgument, []string{"description"}},
		{"control in description", api.CreateDiskRequest{Name: "x", Size: "1M", Description: "a\nb"}, 400, api.CodeInvalidArgument, []string{"description"}},
		{"duplicate", api.CreateDiskRequest{Name: "taken", Size: "1M"}, 409, api.CodeAlreadyExists, []string{`"taken"`}},
		{"adopt with size", api.CreateDiskRequest{Name: "x", Size: "1M", Adopt: empty}, 400, api.CodeInvalidArgument, []string{"size"}},
		{"adopt relative", api.CreateDiskRequest{Name: "x", Adopt: "disk.raw"}, 400, api.CodeInvalidArgument, []string{"adopt", "absolute"}},
		{"adopt missing", api.CreateDiskRequest{Name: "x", Adopt: filepath.Join(dir, "nope")}, 400, api.CodeInvalidArgument, []string{"adopt", "no such file"}},
		{"adopt directory", api.CreateDiskRequest{Name: "x", Adopt: dir}, 400, api.CodeInvalidArgument, []string{"adopt", "neither a regular file nor a block device"}},
		{"adopt char device", api.CreateDiskRequest{Name: "x", Adopt: "/dev/null"}, 400, api.CodeInvalidArgument, []string{"adopt", "neither"}},
		{"adopt unaligned", api.CreateDiskRequest{Name: "x", Adopt: notAligned}, 400, api.CodeInvalidArgument, []string{"adopt", "512"}},
		{"adopt empty", api.CreateDiskRequest{Name: "x", Adopt: empty}, 400, api.CodeInvalidArgument, []string{"adopt", "512"}},
		{"adopt in data dir", api.CreateDiskRequest{Name: "x", Adopt: inData}, 403, api.CodePermissionDenied, []string{"adopt", "data directory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := in.Client.CreateDisk(context.Background(), tc.req)
			wantAPIError(t, err, tc.status, tc.code, tc.contains...)
		})
	}
	disks, _ := in.Client.Disks(context.Background())
	if len(disks) != 1 {
		t.Errorf("failed creates left disks behind: %+v", disks)
	}
	// The live image, the change-tracking file and the failure marks
	// (cow/failmark.go) of the disk that exists.
	if entries, _ := os.ReadDir(filepath.Join(in.Config.DataDir, "disks")); len(entries) != 3 {
		t.Errorf("failed creates left live images or tracking files behind: %v", entries)
	}
}

func TestNameRules(t *testing.T) {
	in := daemontest.Start(t, nil)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"A-Z_0.9", true},
		{"_x", true},
		{"9", true},
		{strings.Repeat("n", 64), true},
		{strings.Repeat("n", 65), false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"a b", false},
		{"a/b", false},
		{"..", false},
		{"a@snap", false},
		{"é", false},
		{"a:b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := daemon.ValidName(tc.name); got != tc.ok {
				t.Fatalf("ValidName(%q) = %v, want %v", tc.name, got, tc.ok)
			}
			d, err := in.Client.CreateDisk(context.Background(), api.CreateDiskRequest{Name: tc.name, Size: "4K"})
			if tc.ok {
				if err != nil || d.Name != tc.name {
					t.Fatalf("create %q: %+v, %v", tc.name, d, err)
				}
				return
			}
			wantAPIError(t, err, 400, api.CodeInvalidArgument, "name", daemon.NameRule)
		})
	}
}

func TestRequestErrors(t *testing.T) {
	in := daemontest.Start(t, nil)
	createDisk(t, in, "d", "1M")
	const js = "application/json"
	for _, tc := range []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
		contains                        string
	}{
		{"unknown path", "GET", "/v1/nope", "", "", 404, api.CodeNotFound, "/v1/nope"},
		{"no version", "GET", "/disks", "", "", 404, api.CodeNotFound, "/v1/"},
		{"method not allowed", "PUT", "/v1/disks", "", "", 405, api.CodeMethodNotAllowed, "GET, HEAD, POST"},
		{"method not allowed on disk", "POST", "/v1/disks/d", "", "", 405, api.CodeMethodNotAllowed, "DELETE"},
		{"no content type", "POST", "/v1/disks", "", `{"name":"x","size":"1M"}`, 415, api.CodeUnsupportedMediaType, "application/json"},
		{"text content type", "POST", "/v1/disks", "text/plain", `{"name":"x","size":"1M"}`, 415, api.CodeUnsupportedMediaType, "text/plain"},
		{"empty body", "POST", "/v1/disks", js, "", 400, api.CodeInvalidArgument, "empty"},
		{"malformed", "POST", "/v1/disks", js, `{"name":`, 400, api.CodeInvalidArgument, "ends early"},
		{"syntax", "POST", "/v1/disks", js, `{"name" "x"}`, 400, api.CodeInvalidArgument, "malformed JSON"},
		{"not an object", "POST", "/v1/disks", js, `[1,2]`, 400, api.CodeInvalidArgument, "JSON object"},
		{"unknown field", "POST", "/v1/disks", js, `{"name":"x","size":"1M","colour":"red"}`, 400, api.CodeInvalidArgument, `"colour"`},
		{"name wrong type", "POST", "/v1/disks", js, `{"name":5,"size":"1M"}`, 400, api.CodeInvalidArgument, "name: expected a string"},
		{"size wrong type", "POST", "/v1/disks", js, `{"name":"x","size":true}`, 400, api.CodeInvalidArgument, "size: expected a number of bytes"},
		{"block size wrong type", "POST", "/v1/disks", js, `{"name":"x","size":"1M","block_size":{}}`, 400, api.CodeInvalidArgument, "block_size: expected"},
		{"field name case", "POST", "/v1/disks", js, `{"Name":"x","size":"1M"}`, 400, api.CodeInvalidArgument, `unknown field "Name"`},
		{"duplicate member", "POST", "/v1/disks", js, `{"name":"x","size":"1M","name":"y"}`, 400, api.CodeInvalidArgument, "name: given twice"},
		{"duplicate member, case", "POST", "/v1/disks", js, `{"name":"x","size":"1M","SIZE":"2M"}`, 400, api.CodeInvalidArgument, `"SIZE"`},
		{"path with //", "GET", "/v1//disks", "", "", 404, api.CodeNotFound, "without //"},
		{"trailing data", "POST", "/v1/disks", js, `{"name":"x","size":"1M"} {}`, 400, api.CodeInvalidArgument, "after the JSON object"},
		{"too large", "POST", "/v1/disks", js, `{"name":"x","description":"` + strings.Repeat("a", 1<<20) + `"}`, 413, api.CodePayloadTooLarge, "limit"},
		{"grow no body", "POST", "/v1/disks/d/grow", js, "", 400, api.CodeInvalidArgument, "empty"},
		{"grow unknown field", "POST", "/v1/disks/d/grow", js, `{"size":"2M","shrink":true}`, 400, api.CodeInvalidArgument, `"shrink"`},
		{"grow float", "POST", "/v1/disks/d/grow", js, `{"size":2.5}`, 400, api.CodeInvalidArgument, "whole number of bytes"},
		{"delete unknown query", "DELETE", "/v1/disks/d?forse=true", "", "", 400, api.CodeInvalidArgument, `"forse"`},
		{"delete bad bool", "DELETE", "/v1/disks/d?force=maybe", "", "", 400, api.CodeInvalidArgument, "force"},
		{"get bad name", "GET", "/v1/disks/.x", "", "", 400, api.CodeInvalidArgument, daemon.NameRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := do(t, in, tc.method, tc.path, tc.ctype, strings.NewReader(tc.body))
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			e := a.apiError(t)
			if e.Code != tc.code || !strings.Contains(e.Message, tc.contains) {
				t.Errorf("got %s %q, want %s containing %q", e.Code, e.Message, tc.code, tc.contains)
			}
			if tc.status == 405 && a.header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
	// The disk survived all of it, and no stray disk appeared.
	disks, err := in.Client.Disks(context.Background())
	if err != nil || len(disks) != 1 || disks[0].Name != "d" || disks[0].Size != 1<<20 {
		t.Fatalf("after bad requests: %+v, %v", disks, err)
	}
}

func TestCreateReturnsLocation(t *testing.T) {
	in := daemontest.Start(t, nil)
	a := do(t, in, "POST", "/v1/disks", "application/json; charset=utf-8", strings.NewReader(`{"name":"n1","size":1048576,"block_size":"4K"}`))
	if a.status != http.StatusCreated || a.header.Get("Location") != "/v1/disks/n1" {
		t.Fatalf("create: %d %v %s", a.status, a.header, a.body)
	}
	var d api.Disk
	if err := json.Unmarshal(a.body, &d); err != nil || d.Size != 1<<20 || d.BlockSize != 4096 {
		t.Fatalf("created %+v, %v", d, err)
	}
	if a := do(t, in, "DELETE", "/v1/disks/n1", "", nil); a.status != http.StatusNoContent || len(a.body) != 0 {
		t.Fatalf("delete: %d %q", a.status, a.body)
	}
}

func TestInfoAndHealth(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	createDisk(t, in, "d", "1M")
	info, err := in.Client.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != daemon.Version || info.PID != os.Getpid() || info.DataDir != in.Config.DataDir ||
		info.APISocket != filepath.Join(in.Config.DataDir, "cairn.sock") || info.NBDSocket != filepath.Join(in.Config.DataDir, "nbd.sock") ||
		info.Disks != 1 || info.UptimeSeconds < 0 || info.Started.IsZero() {
		t.Fatalf("info %+v", info)
	}
	h, err := in.Client.Health(ctx)
	if err != nil || h.Status != "ok" {
		t.Fatalf("health %+v, %v", h, err)
	}
	// A removed NBD socket makes the daemon unreachable over NBD: unhealthy.
	if err := os.Remove(info.NBDSocket); err != nil {
		t.Fatal(err)
	}
	a := do(t, in, "GET", "/v1/health", "", nil)
	if a.status != http.StatusServiceUnavailable {
		t.Fatalf("health without NBD socket: %d %s", a.status, a.body)
	}
	if e := a.apiError(t); e.Code != api.CodeUnavailable || !strings.Contains(e.Message, "nbd socket") {
		t.Errorf("health error %+v", e)
	}
	h, err = in.Client.Health(ctx)
	if err != nil || h.Status != "unavailable" || len(h.Problems) == 0 {
		t.Fatalf("client health %+v, %v", h, err)
	}
}

func TestConnError(t *testing.T) {
	c := &api.Client{Socket: filepath.Join(t.TempDir(), "none.sock")}
	_, err := c.Info(context.Background())
	var ce *api.ConnError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "cannot reach cairnd at "+c.Socket) || !strings.Contains(err.Error(), "make run") {
		t.Fatalf("got %v", err)
	}
}

// TestErrorsNameTheField: a request that breaks a rule is answered with
// the API field it is about in the error's field member, wherever the
// field is (body, path, query); an invalid_argument message starts with it.
func TestErrorsNameTheField(t *testing.T) {
	in := daemontest.Start(t, nil)
	ctx := context.Background()
	c := in.Client
	createDisk(t, in, "d", "1M")
	for _, tc := range []struct {
		name, field string
		call        func() error
	}{
		{"disk name", "name", func() error { _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "a/b", Size: "1M"}); return err }},
		{"taken name", "name", func() error { _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "d", Size: "1M"}); return err }},
		{"no size", "size", func() error { _, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "x"}); return err }},
		{"block size", "block_size", func() error {
			_, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", Size: "1M", BlockSize: "3K"})
			return err
		}},
		{"description", "description", func() error {
			_, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", Size: "1M", Description: "a\tb"})
			return err
		}},
		{"adopt", "adopt", func() error {
			_, err := c.CreateDisk(ctx, api.CreateDiskRequest{Name: "x", Adopt: "rel.raw"})
			return err
		}},
		{"shrink", "size", func() error { _, err := c.GrowDisk(ctx, "d", "4K"); return err }},
		{"path name", "name", func() error { _, err := c.Disk(ctx, ".x"); return err }},
		{"snapshot name", "name", func() error {
			_, err := c.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "auto1"})
			return err
		}},
		{"changes from", "from", func() error { _, err := c.Changes(ctx, "d", "", ""); return err }},
		{"verify disk", "disk", func() error { _, err := c.Verify(ctx, api.VerifyRequest{Disk: "-x"}); return err }},
		{"query bool", "force", func() error { return c.Do(ctx, http.MethodDelete, "/v1/disks/d?force=maybe", nil, nil) }},
		{"query unknown", "forse", func() error { return c.Do(ctx, http.MethodDelete, "/v1/disks/d?forse=1", nil, nil) }},
		{"body type", "size", func() error {
			return c.Do(ctx, http.MethodPost, "/v1/disks", map[string]any{"name": "x", "size": true}, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *api.Error
			if err := tc.call(); !errors.As(err, &e) {
				t.Fatalf("got %v, want an API error", err)
			}
			if e.Field != tc.field {
				t.Errorf("field %q (message %q); want %q", e.Field, e.Message, tc.field)
			}
			named := strings.HasPrefix(e.Message, tc.field) || strings.Contains(e.Message, "query parameter \""+tc.field)
			if e.Code == api.CodeInvalidArgument && !named {
				t.Errorf("message %q does not start with the field %q", e.Message, tc.field)
			}
		})
	}
}
