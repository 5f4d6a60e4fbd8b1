package nbd

import (
	"encoding/binary"
	"slices"
	"testing"
)

func TestAppendDescriptors(t *testing.T) {
	tests := []struct {
		name   string
		exts   []Extent
		length uint64
		reqOne bool
		want   [][2]uint32
		err    bool
	}{
		{"exact", []Extent{{4096, 0}, {4096, 3}}, 8192, false, [][2]uint32{{4096, 0}, {4096, 3}}, false},
		{"merges equal flags", []Extent{{4096, 3}, {4096, 3}, {512, 0}}, 1 << 20, false, [][2]uint32{{8192, 3}, {512, 0}}, false},
		{"clips to the request", []Extent{{4096, 0}, {1 << 30, 3}}, 8192, false, [][2]uint32{{4096, 0}, {4096, 3}}, false},
		{"stops at the request", []Extent{{8192, 0}, {4096, 3}}, 4096, false, [][2]uint32{{4096, 0}}, false},
		{"REQ_ONE", []Extent{{4096, 0}, {4096, 3}}, 8192, true, [][2]uint32{{4096, 0}}, false},
		{"REQ_ONE merges", []Extent{{4096, 1}, {4096, 1}, {4096, 0}}, 1 << 20, true, [][2]uint32{{8192, 1}}, false},
		{"REQ_ONE clipped", []Extent{{1 << 20, 1}}, 1000, true, [][2]uint32{{1000, 1}}, false},
		{"short answer", []Extent{{512, 0}}, 8192, false, [][2]uint32{{512, 0}}, false},
		{"4 GiB extent clipped to a 32-bit request", []Extent{{1 << 33, 3}}, 1<<32 - 1, false, [][2]uint32{{1<<32 - 1, 3}}, false},
		{"no extents", nil, 4096, false, nil, true},
		{"zero-length extent", []Extent{{0, 0}}, 4096, false, nil, true},
		{"negative extent", []Extent{{4096, 0}, {-1, 0}}, 8192, false, nil, true},
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
	exts := make([]Extent, maxExtentsPerChunk+10)
	for i := range exts {
		exts[i] = Extent{Length: 512, Flags: uint32(i % 2)}
	}
	out, err := appendDescriptors(nil, exts, 1<<40, false)
	if err != nil || len(out) != 8*maxExtentsPerChunk {
		t.Fatalf("%d descriptors, %v; want the 2^20 cap", len(out)/8, err)
	}
}

func TestSplitSegments(t *testing.T) {
	tests := []struct {
		name  string
		exts  []Extent
		n     int
		want  []segment
		holes bool
	}{
		{"all data", []Extent{{1 << 20, 0}}, 65536, []segment{{0, 65536, false}}, false},
		{"hole data hole", []Extent{{4096, StateHole | StateZero}, {4096, 0}, {1 << 20, StateZero}}, 65536,
			[]segment{{0, 4096, true}, {4096, 4096, false}, {8192, 57344, true}}, true},
		{"hole without zero is data", []Extent{{4096, StateHole}, {4096, 0}}, 8192, []segment{{0, 8192, false}}, false},
		{"short answer: rest is data", []Extent{{4096, StateZero}}, 8192, []segment{{0, 4096, true}, {4096, 4096, false}}, true},
		{"bad extent ends the walk", []Extent{{4096, StateZero}, {0, StateZero}, {4096, StateZero}}, 8192, []segment{{0, 4096, true}, {4096, 4096, false}}, true},
	}
	for _, tt := range tests {
		got, holes := splitSegments(nil, tt.exts, tt.n)
		if holes != tt.holes || !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v %v, want %v %v", tt.name, got, holes, tt.want, tt.holes)
		}
	}
}
