package daemon_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// TestOneShapePerConcept: every object the API answers writes its clients
// as an array of NBD clients and its times as RFC 3339 in UTC with
// milliseconds, always the same width (disks were created to the second
// and snapshots to the nanosecond, and clients were a count on disks).
func TestOneShapePerConcept(t *testing.T) {
	need(t, "qemu-io")
	in := daemontest.Start(t, nil)
	createDisk(t, in, "d", "1M")
	mustSnapshot(t, in.Client, "d", "s1")
	waitSnapshot(t, in.Client, "d", "s1")
	task, err := in.Client.Verify(t.Context(), api.VerifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	waitTask(t, in.Client, task.ID)
	holdExport(t, in, "d")
	timeShape := regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)
	times := map[string]bool{"created": true, "finished": true, "since": true, "started": true}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if times[k] {
					if s, ok := x.(string); !ok || !timeShape.MatchString(s) {
						t.Errorf("%s.%s = %v: not RFC 3339 UTC with milliseconds", path, k, x)
					}
				}
				if k == "clients" {
					if _, ok := x.([]any); !ok {
						t.Errorf("%s.clients = %v: not an array of clients", path, x)
					}
				}
				walk(path+"."+k, x)
			}
		case []any:
			for _, x := range v {
				walk(path+"[]", x)
			}
		}
	}
	clients := 0
	for _, path := range []string{"/v1/disks", "/v1/disks/d", "/v1/disks/d/snapshots", "/v1/disks/d/snapshots/s1", "/v1/exports", "/v1/tasks", "/v1/info"} {
		a := do(t, in, http.MethodGet, path, "", nil)
		if a.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, a.status, a.body)
		}
		var v any
		if err := json.Unmarshal(a.body, &v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		walk(path, v)
		if path == "/v1/disks/d" {
			clients = len(v.(map[string]any)["clients"].([]any))
		}
	}
	if clients != 1 {
		t.Errorf("disk d lists %d clients; one is connected", clients)
	}
}
