package main

import (
	"context"
	"encoding/json"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// show makes the body of a command that gets one value and prints it:
// as JSON with -o json, else with human.
func show[T any](a *app, get func(ctx context.Context, args []string) (T, error), human func(T) error) func(*cobra.Command, []string) error {
	return a.run(func(ctx context.Context, args []string) error {
		v, err := get(ctx, args)
		if err != nil {
			return err
		}
		return a.print(v, func() error { return human(v) })
	})
}

// print writes v as JSON with -o json, else calls human.
func (a *app) print(v any, human func() error) error {
	if a.output == "json" {
		return a.printJSON(v)
	}
	return human()
}

// printJSON writes v as indented JSON (-o json): the API's own types, so
// scripts see the same fields as docs/api/openapi.yaml.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table writes aligned columns; a header is optional.
type table struct {
	w *tabwriter.Writer
}

func (a *app) table(header ...string) *table {
	t := &table{w: tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline in a value (a description) would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
	}
	t.w.Write([]byte(strings.Join(cells, "\t") + "\n"))
}

func (t *table) flush() error { return t.w.Flush() }
