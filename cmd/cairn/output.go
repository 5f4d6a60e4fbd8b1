package main

import (
	"encoding/json"
	"strings"
	"text/tabwriter"
)

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
