package nbd

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
)

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestParseInfoRequest(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		want  infoRequest
		error string
	}{
		{"name and infos", cat(u32(4), []byte("disk"), u16(2), u16(3), u16(1)), infoRequest{"disk", []uint16{3, 1}}, ""},
		{"default export", cat(u32(0), u16(0)), infoRequest{"", nil}, ""},
		{"empty", nil, infoRequest{}, "truncated"},
		{"name past end", cat(u32(10), []byte("abc")), infoRequest{}, "runs past"},
		{"name too long", cat(u32(5000), make([]byte, 5000), u16(0)), infoRequest{}, "4096"},
		{"count larger than data", cat(u32(1), []byte("a"), u16(3), u16(1)), infoRequest{}, "need 6 bytes"},
		{"trailing byte", cat(u32(1), []byte("a"), u16(1), u16(1), []byte{0}), infoRequest{}, "need 2 bytes"},
		{"no count", cat(u32(1), []byte("a")), infoRequest{}, "truncated"},
	}
	for _, tt := range tests {
		got, err := parseInfoRequest(tt.in)
		if tt.error != "" {
			if err == nil || !errors.Is(err, errOptSyntax) || !strings.Contains(err.Error(), tt.error) {
				t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.error)
			}
			continue
		}
		if err != nil || got.name != tt.want.name || !slices.Equal(got.infos, tt.want.infos) {
			t.Errorf("%s: %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}

func TestParseMetaRequest(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		want  metaRequest
		error string
	}{
		{"two queries", cat(u32(1), []byte("a"), u32(2), u32(5), []byte("base:"), u32(5), []byte("qemu:")), metaRequest{"a", []string{"base:", "qemu:"}}, ""},
		{"no queries", cat(u32(1), []byte("a"), u32(0)), metaRequest{"a", nil}, ""},
		{"count cannot fit", cat(u32(1), []byte("a"), u32(1<<31)), metaRequest{}, "cannot fit"},
		{"query past end", cat(u32(1), []byte("a"), u32(1), u32(9), []byte("base:")), metaRequest{}, "runs past"},
		{"trailing bytes", cat(u32(1), []byte("a"), u32(0), []byte{1, 2}), metaRequest{}, "trailing"},
		{"truncated count", cat(u32(1), []byte("a"), []byte{0}), metaRequest{}, "truncated"},
	}
	for _, tt := range tests {
		got, err := parseMetaRequest(tt.in)
		if tt.error != "" {
			if err == nil || !strings.Contains(err.Error(), tt.error) {
				t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.error)
			}
			continue
		}
		if err != nil || got.name != tt.want.name || !slices.Equal(got.queries, tt.want.queries) {
			t.Errorf("%s: %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
}
