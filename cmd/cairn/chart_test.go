package main

import (
	"strings"
	"testing"
	"time"
)

// TestChart: the tallest column fills every row, a column of half the
// top fills half the rows, zero fills none, and the axis names the top.
func TestChart(t *testing.T) {
	start := time.Date(2026, 11, 20, 14, 0, 0, 0, time.UTC)
	times := []time.Time{start, start.Add(time.Hour), start.Add(2 * time.Hour)}
	var b strings.Builder
	if err := chart(&b, times, []uint64{0, 1 << 30, 2 << 30}, 60, 4); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 6 {
		t.Fatalf("chart:\n%s", b.String())
	}
	cols := func(line string) string {
		_, after, _ := strings.Cut(line, "┤")
		return after
	}
	want := []string{"  █", "  █", " ██", " ██"} // rows top to bottom: 0, 1 GiB, 2 GiB
	for r, w := range want {
		if got := cols(lines[r]); got != w {
			t.Errorf("row %d: %q, want %q\n%s", r, got, w, b.String())
		}
	}
	if !strings.Contains(lines[0], "2 GiB") || !strings.Contains(lines[4], "└───") {
		t.Errorf("axis:\n%s", b.String())
	}
	// More samples than columns: each column shows the last of its share.
	b.Reset()
	var many []time.Time
	var vals []uint64
	for i := range 100 {
		many = append(many, start.Add(time.Duration(i)*time.Hour))
		vals = append(vals, uint64(i))
	}
	chart(&b, many, vals, 10, 2)
	if got := cols(strings.Split(b.String(), "\n")[0]); len([]rune(got)) != 10 || !strings.HasSuffix(got, "█") {
		t.Errorf("10 columns of 100 samples: %q\n%s", got, b.String())
	}
}
