package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestCLIDocs: docs/cli.md names every command of cairn (its full path,
// as `cairn snapshot list`), every alias (as (`ls`)) and every flag (as
// --flag), walking the cobra tree, so the page cannot fall behind.
func TestCLIDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	a := &app{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	root := a.rootCmd()
	root.InitDefaultCompletionCmd()
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.Hidden || cmd.Name() == "help" {
			return
		}
		path := cmd.CommandPath()
		if cmd != root && !strings.Contains(text, "`"+path) {
			t.Errorf("docs/cli.md does not name the command `%s`", path)
		}
		for _, alias := range cmd.Aliases {
			if !strings.Contains(text, "(`"+alias+"`)") {
				t.Errorf("docs/cli.md does not give %s's alias (`%s`)", path, alias)
			}
		}
		cmd.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Name == "help" {
				return
			}
			if !strings.Contains(text, "--"+f.Name) {
				t.Errorf("docs/cli.md does not name %s's flag --%s", path, f.Name)
			}
		})
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
