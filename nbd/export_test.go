package nbd

import (
	"context"
	"testing"

	"github.com/cairn-storage/cairn/block"
)

// fixedContext and sizedBackend are the smallest block.ExtentMap and block.Device.
type fixedContext struct{}

func (fixedContext) Extents(context.Context, int64, int64) ([]block.Extent, error) { return nil, nil }

type sizedBackend struct{ fixedContext }

func (b sizedBackend) Size() int64                                             { return 1 << 20 }
func (sizedBackend) ReadAt(context.Context, []byte, int64) error               { return nil }
func (sizedBackend) WriteAt(context.Context, []byte, int64, bool) error        { return nil }
func (sizedBackend) Flush(context.Context) error                               { return nil }
func (sizedBackend) Trim(context.Context, int64, int64, bool) error            { return nil }
func (sizedBackend) Zero(context.Context, int64, int64, block.ZeroFlags) error { return nil }

func TestExportLimits(t *testing.T) {
	tests := []struct {
		name            string
		min, pref, max  uint32
		wantMin, wantPr uint32
		wantMax         uint32
		ok              bool
	}{
		{"defaults", 0, 0, 0, 1, 4096, 32 << 20, true},
		{"4k sectors", 4096, 0, 0, 4096, 4096, 32 << 20, true},
		{"64k min raises preferred", 64 << 10, 0, 1 << 20, 64 << 10, 64 << 10, 1 << 20, true},
		{"max capped at 32 MiB", 512, 4096, 1 << 30, 512, 4096, 32 << 20, true},
		{"min not a power of two", 3000, 0, 0, 0, 0, 0, false},
		{"min over 64k", 128 << 10, 0, 0, 0, 0, 0, false},
		{"preferred below 512", 1, 256, 0, 0, 0, 0, false},
		{"preferred below min", 8192, 4096, 0, 0, 0, 0, false},
		{"max below preferred", 512, 4096, 2048, 0, 0, 0, false},
	}
	for _, tt := range tests {
		e := &Export{Name: "x", Device: sizedBackend{}, MinBlock: tt.min, PrefBlock: tt.pref, MaxBlock: tt.max}
		l, err := exportLimits(e, true)
		if (err == nil) != tt.ok {
			t.Errorf("%s: error %v", tt.name, err)
			continue
		}
		if tt.ok && (l.minBlock != tt.wantMin || l.prefBlock != tt.wantPr || l.maxBlock != tt.wantMax || l.size != 1<<20) {
			t.Errorf("%s: %+v", tt.name, l)
		}
	}
}
