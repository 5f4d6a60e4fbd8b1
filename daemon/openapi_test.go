package daemon_test

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/api"
)

type openAPIDoc struct {
	OpenAPI    string                          `yaml:"openapi"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]yaml.Node `yaml:"properties"`
		} `yaml:"schemas"`
	} `yaml:"components"`
}

func loadOpenAPI(t *testing.T) (openAPIDoc, []byte) {
	t.Helper()
	raw, err := os.ReadFile("../docs/api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPIDoc
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docs/api/openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi version %q, want 3.1.x", doc.OpenAPI)
	}
	return doc, raw
}

// TestOpenAPIDocumentsEveryRoute: the routes the daemon serves and the
// operations docs/api/openapi.yaml documents are the same set.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	var documented []string
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options":
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	var served []string
	for _, r := range daemon.Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	for _, s := range served {
		if !slices.Contains(documented, s) {
			t.Errorf("route %s is served but not documented in docs/api/openapi.yaml", s)
		}
	}
	for _, d := range documented {
		if !slices.Contains(served, d) {
			t.Errorf("docs/api/openapi.yaml documents %s, which the daemon does not serve", d)
		}
	}
}

// TestOpenAPIRoles: every operation's x-role names the role its route
// needs (and says "on the disk" where a grant on the disk suffices).
func TestOpenAPIRoles(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	for _, r := range daemon.Routes() {
		node, ok := doc.Paths[r.Path][strings.ToLower(r.Method)]
		if !ok {
			continue // TestOpenAPIDocumentsEveryRoute says so
		}
		var op struct {
			Role string `yaml:"x-role"`
		}
		if err := node.Decode(&op); err != nil {
			t.Fatal(err)
		}
		switch {
		case op.Role == "":
			t.Errorf("%s %s: no x-role (the route needs %s)", r.Method, r.Path, r.Role)
		case !strings.HasPrefix(op.Role, r.Role):
			t.Errorf("%s %s: x-role %q, but the route needs %s", r.Method, r.Path, op.Role, r.Role)
		case r.OnDisk && !strings.Contains(op.Role, "on the disk"):
			t.Errorf("%s %s: x-role %q does not say the role counts on the disk", r.Method, r.Path, op.Role)
		}
	}
}

// TestOpenAPISchemasMatchTypes: each documented schema has exactly the
// JSON fields of the Go type the daemon encodes or decodes.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	doc, raw := loadOpenAPI(t)
	for name, typ := range map[string]any{
		"Disk":                  api.Disk{},
		"Export":                api.Export{},
		"NBDClient":             api.NBDClient{},
		"Info":                  api.Info{},
		"Health":                api.Health{},
		"CreateDiskRequest":     api.CreateDiskRequest{},
		"GrowDiskRequest":       api.GrowDiskRequest{},
		"Snapshot":              api.Snapshot{},
		"CreateSnapshotRequest": api.CreateSnapshotRequest{},
		"DeleteSnapshotResult":  api.DeleteSnapshotResult{},
		"Changes":               api.Changes{},
		"Extent":                api.Extent{},
		"ChainCapacity":         api.ChainCapacity{},
		"SnapshotCapacity":      api.SnapshotCapacity{},
		"Capacity":              api.Capacity{},
		"StoreStats":            api.StoreStats{},
		"Task":                  api.Task{},
		"VerifyRequest":         api.VerifyRequest{},
		"VerifyResult":          api.VerifyResult{},
		"FlattenRequest":        api.FlattenRequest{},
		"Image":                 api.Image{},
		"CreateImageRequest":    api.CreateImageRequest{},
		"Machine":               api.Machine{},
		"CreateMachineRequest":  api.CreateMachineRequest{},
		"UpdateMachineRequest":  api.UpdateMachineRequest{},
		"MachineSnapshot":       api.MachineSnapshot{},
		"Attachment":            api.Attachment{},
		"AttachRequest":         api.AttachRequest{},
		"Policy":                api.Policy{},
		"PolicyTarget":          api.PolicyTarget{},
		"CreatePolicyRequest":   api.CreatePolicyRequest{},
		"UpdatePolicyRequest":   api.UpdatePolicyRequest{},
		"PolicyTargetsRequest":  api.PolicyTargetsRequest{},
		"Event":                 api.Event{},
		"CapacityHistory":       api.CapacityHistory{},
		"CapacitySample":        api.CapacitySample{},
		"SnapshotUnique":        api.SnapshotUnique{},
	} {
		schema, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s is not documented", name)
			continue
		}
		var documented []string
		for p := range schema.Properties {
			documented = append(documented, p)
		}
		fields := jsonFields(reflect.TypeOf(typ))
		if name == "Health" {
			fields = slices.DeleteFunc(fields, func(f string) bool { return f == "problems" }) // client side only
		}
		slices.Sort(documented)
		slices.Sort(fields)
		if !slices.Equal(documented, fields) {
			t.Errorf("schema %s has properties %v; api.%s has JSON fields %v", name, documented, name, fields)
		}
	}
	for _, code := range []string{api.CodeInvalidArgument, api.CodeNotFound, api.CodeMethodNotAllowed, api.CodeAlreadyExists,
		api.CodeInUse, api.CodeFailedPrecondition, api.CodeQuotaExceeded, api.CodePayloadTooLarge, api.CodeUnsupportedMediaType, api.CodeInternal,
		api.CodeInsufficientStorage, api.CodeUnavailable} {
		if !strings.Contains(string(raw), "- "+code+"\n") {
			t.Errorf("error code %s is not in the Error schema's enum", code)
		}
	}
	for _, ref := range strings.Split(string(raw), `$ref: "#/components/`)[1:] {
		target := ref[:strings.IndexByte(ref, '"')]
		kind, name, _ := strings.Cut(target, "/")
		if !strings.Contains(string(raw), "\n  "+kind+":") || !strings.Contains(string(raw), "\n    "+name+":") {
			t.Errorf("$ref %s does not resolve", target)
		}
	}
}

func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}
