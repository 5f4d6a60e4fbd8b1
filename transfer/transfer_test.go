package transfer

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseProgress(t *testing.T) {
	for _, c := range []struct {
		line string
		want float64
		ok   bool
	}{
		{"    (0.00/100%)", 0, true},
		{"    (50.25/100%)", 50.25, true},
		{"(100.00/100%)", 100, true},
		{"(101.00/100%)", 0, false},
		{"qemu-img: error", 0, false},
		{"(x/100%)", 0, false},
		{"", 0, false},
	} {
		got, ok := parseProgress(c.line)
		if got != c.want || ok != c.ok {
			t.Errorf("parseProgress(%q) = %v, %v; want %v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
	var seen []float64
	readProgress(strings.NewReader("    (0.00/100%)\r    (33.33/100%)\r    (100.00/100%)\r\n"), func(p float64) { seen = append(seen, p) })
	if !slices.Equal(seen, []float64{0, 33.33, 100}) {
		t.Errorf("readProgress saw %v", seen)
	}
}

func TestOutputOptions(t *testing.T) {
	f := func(name string) Format {
		fm, err := LookupFormat(name)
		if err != nil {
			t.Fatal(err)
		}
		return fm
	}
	if fm := f("vpc"); fm.Name != "vhd" {
		t.Errorf("vpc is %q, want vhd", fm.Name)
	}
	if _, err := LookupFormat("vdi"); err == nil || !strings.Contains(err.Error(), "qcow2, vmdk, vhd, vhdx, raw") {
		t.Errorf("vdi: %v", err)
	}
	for _, c := range []struct {
		name string
		o    OutputOptions
		args string // "" when refused
		err  string
	}{
		{"qcow2", OutputOptions{Format: f("qcow2")}, "-O qcow2", ""},
		{"qcow2 compressed", OutputOptions{Format: f("qcow2"), Compress: true}, "-O qcow2 -c", ""},
		{"vmdk compressed is streamOptimized", OutputOptions{Format: f("vmdk"), Compress: true}, "-O vmdk -c -o subformat=streamOptimized", ""},
		{"vmdk compressed flat", OutputOptions{Format: f("vmdk"), Compress: true, Subformat: "monolithicSparse"}, "", "streamOptimized"},
		{"vhd for azure", OutputOptions{Format: f("vhd"), Subformat: "fixed", ForceSize: true}, "-O vpc -o subformat=fixed,force_size=on", ""},
		{"vhd compressed", OutputOptions{Format: f("vhd"), Compress: true}, "", "cannot be compressed"},
		{"raw subformat", OutputOptions{Format: f("raw"), Subformat: "fixed"}, "", "no subformats"},
		{"force size on qcow2", OutputOptions{Format: f("qcow2"), ForceSize: true}, "", "vhd files only"},
		{"incremental vmdk", OutputOptions{Format: f("vmdk"), Backing: "a.vmdk", BackingFormat: "vmdk"}, "", "qcow2 overlay"},
		{"incremental", OutputOptions{Format: f("qcow2"), Backing: "a.qcow2", BackingFormat: "qcow2"}, "-O qcow2 -B a.qcow2 -F qcow2", ""},
	} {
		o := c.o
		err := o.check()
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one saying %q", c.name, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err == "" && strings.Join(o.convertArgs(), " ") != c.args:
			t.Errorf("%s: args %q, want %q", c.name, strings.Join(o.convertArgs(), " "), c.args)
		}
	}
}

func TestParseManifest(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	good := `{"kind":"cairn-machine-image","version":1,"image":"web","disks":[{"name":"web-root","file":"web-root.qcow2","format":"qcow2","virtual_size":1048576,"sha256":"` + sum + `"}]}`
	if m, err := ParseManifest([]byte(good)); err != nil || m.Disks[0].File != "web-root.qcow2" {
		t.Fatalf("good manifest: %+v, %v", m, err)
	}
	for _, c := range []struct{ name, doc, want string }{
		{"not json", `{`, "not JSON"},
		{"other kind", `{"kind":"ovf","version":1}`, "not a Cairn machine image manifest"},
		{"newer version", strings.Replace(good, `"version":1`, `"version":2`, 1), "version 2; this cairn reads version 1"},
		{"no disks", `{"kind":"cairn-machine-image","version":1,"image":"x","disks":[]}`, "no disks"},
		{"path outside", strings.Replace(good, `"file":"web-root.qcow2"`, `"file":"../etc/passwd"`, 1), "plain names"},
		{"absolute path", strings.Replace(good, `"file":"web-root.qcow2"`, `"file":"/etc/passwd"`, 1), "plain names"},
		{"unknown format", strings.Replace(good, `"format":"qcow2"`, `"format":"vdi"`, 1), "not one cairn converts"},
		{"bad sum", strings.Replace(good, sum, "12", 1), "not a SHA-256"},
	} {
		_, err := ParseManifest([]byte(c.doc))
		if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a refusal saying %q", c.name, err, c.want)
		}
	}
}

func TestImportedDiskName(t *testing.T) {
	for _, c := range []struct{ machine, source, disk, want string }{
		{"web2", "web1@nightly", "web1-root", "web2-root"},
		{"web2", "web1@nightly", "data", "web2-data"},
		{"web2", "", "root", "web2-root"},
		{"web2", "web1@x", "web10-root", "web2-web10-root"},
	} {
		if got := ImportedDiskName(c.machine, c.source, c.disk); got != c.want {
			t.Errorf("ImportedDiskName(%q, %q, %q) = %q, want %q", c.machine, c.source, c.disk, got, c.want)
		}
	}
}
