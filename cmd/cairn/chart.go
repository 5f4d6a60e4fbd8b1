package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// A small terminal chart of a byte series over time (cairn snapshot
// capacity --history): columns of block characters, eighths of a row
// high, with a size axis on the left and the first and last times below.

// eighths are the partial blocks, by eighths of a row.
var eighths = []rune{' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'}

// chart draws values (one per time, oldest first) width columns wide and
// height rows high. With more values than columns each column shows the
// last value of its share (a sample, as the store took it); with fewer,
// each value takes one column.
func chart(w io.Writer, times []time.Time, values []uint64, width, height int) error {
	if len(values) == 0 {
		_, err := fmt.Fprintln(w, "no samples yet (one is taken every capacity_interval)")
		return err
	}
	cols := min(width, len(values))
	col := make([]uint64, cols)
	for i := range cols {
		col[i] = values[(i+1)*len(values)/cols-1]
	}
	var top uint64
	for _, v := range col {
		top = max(top, v)
	}
	if top == 0 {
		top = 1
	}
	labels := make([]string, height)
	labelWidth := 0
	for r := range height {
		if r == 0 || r == height-1 || r == height/2 {
			labels[r] = api.FormatSize(int64(top * uint64(height-r) / uint64(height)))
		}
		labelWidth = max(labelWidth, len(labels[r]))
	}
	var b strings.Builder
	for r := range height {
		// Row r covers heights (height-r-1, height-r] in rows.
		fmt.Fprintf(&b, "%*s ┤", labelWidth, labels[r])
		for _, v := range col {
			units := int((v*uint64(height*8) + top/2) / top) // eighths of a row
			fill := units - (height-r-1)*8
			b.WriteRune(eighths[min(max(fill, 0), 8)])
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "%*s └%s\n", labelWidth, "0", strings.Repeat("─", cols))
	first, last := times[0].Local().Format("2006-01-02 15:04"), times[len(times)-1].Local().Format("2006-01-02 15:04")
	pad := max(cols-len(first)-len(last), 1)
	fmt.Fprintf(&b, "%*s  %s%s%s\n", labelWidth, "", first, strings.Repeat(" ", pad), last)
	_, err := io.WriteString(w, b.String())
	return err
}
