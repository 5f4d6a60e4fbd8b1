package blocktest

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/block"
	"golang.org/x/sys/unix"
)

func TestFile(t *testing.T) {
	ctx := context.Background()
	f, err := CreateFile(filepath.Join(t.TempDir(), "f"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{7}, 64<<10)
	if err := f.WriteAt(ctx, data, 128<<10, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if !f.TryReadAt(got, 128<<10) || !bytes.Equal(got, data) {
		t.Fatal("TryReadAt of just-written (cached) data failed")
	}
	if err := unix.Fdatasync(f.fd); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(f.fd, 0, 1<<20, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if f.TryReadAt(got, 128<<10) {
		t.Log("TryReadAt succeeded on dropped pages (the kernel kept them); not a failure")
	}
	if err := f.ReadAt(ctx, got, 128<<10); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt: %v", err)
	}
	if err := f.Zero(ctx, 128<<10, 4096, block.ZeroNoHole); err != nil {
		t.Fatal(err)
	}
	if err := f.Trim(ctx, 160<<10, 32<<10, false); err != nil {
		t.Fatal(err)
	}
	exts, err := f.Extents(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Where zeroed-but-allocated ranges land (data, or a hole for an
	// unwritten extent) is the filesystem's choice; the rest is not.
	flagsAt := func(off int64) uint32 {
		for _, e := range exts {
			if off < e.Length {
				return e.Flags
			}
			off -= e.Length
		}
		t.Fatalf("extents %v end before %d", exts, off)
		return 0
	}
	for _, tt := range []struct {
		off   int64
		flags uint32
	}{{0, 3}, {127 << 10, 3}, {132 << 10, 0}, {159 << 10, 0}, {160 << 10, 3}, {191 << 10, 3}, {1<<20 - 1, 3}} {
		if got := flagsAt(tt.off); got != tt.flags {
			t.Errorf("flags at %d: %d, want %d (extents %v)", tt.off, got, tt.flags, exts)
		}
	}
}

func TestMemoryExtents(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(64<<10 + 100)
	m.WriteAt(ctx, []byte{1}, 5000, false)
	m.Zero(ctx, 16384, 8192, block.ZeroNoHole)
	m.WriteAt(ctx, []byte{1}, 64<<10+50, false)
	m.Trim(ctx, 64<<10, 100, false)
	exts, _ := m.Extents(ctx, 0, 1<<20)
	want := []block.Extent{ext(4096, 3), ext(4096, 0), ext(8192, 3), ext(8192, 0), ext(64<<10+100-24576, 3)}
	if !slices.Equal(exts, want) {
		t.Fatalf("extents %v, want %v", exts, want)
	}
}

func TestRanges(t *testing.T) {
	r := &Ranges{Size: 100, Flags: 1, Ranges: [][2]int64{{10, 10}, {50, 5}}}
	for _, tt := range []struct {
		off, length int64
		want        []block.Extent
	}{
		{0, 100, []block.Extent{ext(10, 0), ext(10, 1), ext(30, 0), ext(5, 1), ext(45, 0)}},
		{15, 40, []block.Extent{ext(5, 1), ext(30, 0), ext(5, 1)}},
		{52, 1000, []block.Extent{ext(3, 1), ext(45, 0)}},
		{60, 10, []block.Extent{ext(10, 0)}},
	} {
		got, _ := r.Extents(context.Background(), tt.off, tt.length)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%d+%d: %v, want %v", tt.off, tt.length, got, tt.want)
		}
	}
}

func ext(length int64, flags uint32) block.Extent { return block.Extent{Length: length, Flags: flags} }
