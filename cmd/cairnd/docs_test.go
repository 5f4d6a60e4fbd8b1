package main

import (
	"flag"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon"
)

// configRow is a row of a settings table in docs/config.md:
// | `--flag ARG` | `key` | default | meaning |
var configRow = regexp.MustCompile("^\\| `--([a-z-]+)(?: ([A-Z]+))?` \\| (?:`([a-z_]+)`|—) \\| ([^|]*) \\|")

// docs/config.md lists exactly cairnd's flags: every setting with its
// flag, its value's name, its key and its default, --config and --version,
// and nothing else.
func TestConfigDocs(t *testing.T) {
	text, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ arg, key, def string }
	docs := map[string]row{}
	for _, line := range strings.Split(string(text), "\n") {
		m := configRow.FindStringSubmatch(line)
		if m == nil {
			if strings.HasPrefix(line, "| `--") {
				t.Errorf("docs/config.md: a flag's row not in the form | `--flag ARG` | `key` | default | meaning |: %s", line)
			}
			continue
		}
		if _, dup := docs[m[1]]; dup {
			t.Errorf("docs/config.md lists --%s twice", m[1])
		}
		docs[m[1]] = row{m[2], m[3], strings.TrimSpace(strings.ReplaceAll(m[4], "`", ""))}
	}

	want := map[string]row{"config": {"FILE", "", "none"}, "version": {"", "", "none"}}
	for _, s := range daemon.Settings {
		def := s.Default
		if def == "" {
			def = "none"
		}
		want[s.Flag] = row{s.Arg, s.Key, def}
	}
	newCommandLine(io.Discard).fs.VisitAll(func(f *flag.Flag) {
		if _, ok := want[f.Name]; !ok {
			t.Errorf("cairnd has --%s, which is neither a setting nor --config or --version: declare it in daemon.Settings", f.Name)
		}
	})
	for name, w := range want {
		got, ok := docs[name]
		switch {
		case !ok:
			t.Errorf("docs/config.md does not list --%s (key %q)", name, w.key)
		case got != w:
			t.Errorf("docs/config.md lists --%s as %+v, want %+v", name, got, w)
		}
	}
	for name := range docs {
		if _, ok := want[name]; !ok {
			t.Errorf("docs/config.md lists --%s, which cairnd does not have", name)
		}
	}
}
