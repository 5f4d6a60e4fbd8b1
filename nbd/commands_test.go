package nbd

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/block"
)

func TestAppendDescriptors(t *testing.T) {
	tests := []struct {
		name   string
		exts   []block.Extent
		length uint64
		reqOne bool
		want   [][2]uint32
		err    bool
	}{
		{"exact", []block.Extent{{Length: 4096, Flags: 0}, {Length: 4096, Flags: 3}}, 8192, false, [][2]uint32{{4096, 0}, {4096, 3}}, false},
		{"merges equal flags", []block.Extent{{Length: 4096, Flags: 3}, {Length: 4096, Flags: 3}, {Length: 512, Flags: 0}}, 1 << 20, false, [][2]uint32{{8192, 3}, {512, 0}}, false},
		{"clips to the request", []block.Extent{{Length: 4096, Flags: 0}, {Length: 1 << 30, Flags: 3}}, 8192, false, [][2]uint32{{4096, 0}, {4096, 3}}, false},
		{"stops at the request", []block.Extent{{Length: 8192, Flags: 0}, {Length: 4096, Flags: 3}}, 4096, false, [][2]uint32{{4096, 0}}, false},
		{"REQ_ONE", []block.Extent{{Length: 4096, Flags: 0}, {Length: 4096, Flags: 3}}, 8192, true, [][2]uint32{{4096, 0}}, false},
		{"REQ_ONE merges", []block.Extent{{Length: 4096, Flags: 1}, {Length: 4096, Flags: 1}, {Length: 4096, Flags: 0}}, 1 << 20, true, [][2]uint32{{8192, 1}}, false},
		{"REQ_ONE clipped", []block.Extent{{Length: 1 << 20, Flags: 1}}, 1000, true, [][2]uint32{{1000, 1}}, false},
		{"short answer", []block.Extent{{Length: 512, Flags: 0}}, 8192, false, [][2]uint32{{512, 0}}, false},
		{"4 GiB extent clipped to a 32-bit request", []block.Extent{{Length: 1 << 33, Flags: 3}}, 1<<32 - 1, false, [][2]uint32{{1<<32 - 1, 3}}, false},
		{"no extents", nil, 4096, false, nil, true},
		{"zero-length extent", []block.Extent{{Length: 0, Flags: 0}}, 4096, false, nil, true},
		{"negative extent", []block.Extent{{Length: 4096, Flags: 0}, {Length: -1, Flags: 0}}, 8192, false, nil, true},
	}
	for _, tt := range tests {
		out, err := appendDescriptors(nil, tt.exts, tt.length, tt.reqOne)
		if (err != nil) != tt.err {
			t.Errorf("%s: error %v", tt.name, err)
			continue
		}
		if tt.err {
			continue
		}
		var got [][2]uint32
		for p := out; len(p) >= 8; p = p[8:] {
			got = append(got, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAppendDescriptorsCap(t *testing.T) {
	exts := make([]block.Extent, maxExtentsPerChunk+10)
	for i := range exts {
		exts[i] = block.Extent{Length: 512, Flags: uint32(i % 2)}
	}
	out, err := appendDescriptors(nil, exts, 1<<40, false)
	if err != nil || len(out) != 8*maxExtentsPerChunk {
		t.Fatalf("%d descriptors, %v; want the 2^20 cap", len(out)/8, err)
	}
}

func TestSplitSegments(t *testing.T) {
	tests := []struct {
		name  string
		exts  []block.Extent
		n     int
		want  []segment
		holes bool
	}{
		{"all data", []block.Extent{{Length: 1 << 20, Flags: 0}}, 65536, []segment{{0, 65536, false}}, false},
		{"hole data hole", []block.Extent{{Length: 4096, Flags: block.StateHole | block.StateZero}, {Length: 4096, Flags: 0}, {Length: 1 << 20, Flags: block.StateZero}}, 65536,
			[]segment{{0, 4096, true}, {4096, 4096, false}, {8192, 57344, true}}, true},
		{"hole without zero is data", []block.Extent{{Length: 4096, Flags: block.StateHole}, {Length: 4096, Flags: 0}}, 8192, []segment{{0, 8192, false}}, false},
		{"short answer: rest is data", []block.Extent{{Length: 4096, Flags: block.StateZero}}, 8192, []segment{{0, 4096, true}, {4096, 4096, false}}, true},
		{"bad extent ends the walk", []block.Extent{{Length: 4096, Flags: block.StateZero}, {Length: 0, Flags: block.StateZero}, {Length: 4096, Flags: block.StateZero}}, 8192, []segment{{0, 4096, true}, {4096, 4096, false}}, true},
	}
	for _, tt := range tests {
		got, holes := splitSegments(nil, tt.exts, tt.n)
		if holes != tt.holes || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v %v, want %v %v", tt.name, got, holes, tt.want, tt.holes)
		}
	}
}
