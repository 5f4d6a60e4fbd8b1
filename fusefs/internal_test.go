package fusefs

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/block"
)

func TestParseMountInfo(t *testing.T) {
	const table = `22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
97 29 0:45 / /run/cairn/fuse rw,nosuid,nodev,relatime shared:50 - fuse.cairn cairn rw,user_id=0,group_id=0,max_read=1048576
98 29 0:46 / /mnt/with\040space rw,relatime - fuse.cairn cairn rw
99 29 7:0 / /mnt/restore ro,relatime shared:51 master:2 - ext4 /dev/loop0 ro,norecovery
`
	got, err := parseMountInfo(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountInfo{
		{"0:21", "/proc", "proc", "proc"},
		{"0:45", "/run/cairn/fuse", "fuse.cairn", "cairn"},
		{"0:46", "/mnt/with space", "fuse.cairn", "cairn"},
		{"7:0", "/mnt/restore", "ext4", "/dev/loop0"},
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %d mounts, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := parseMountInfo(strings.NewReader("1 2 3\n")); err == nil {
		t.Error("a malformed line parsed")
	}
}

// extentFile answers Extents from a fixed list, a little at a time.
type extentFile struct {
	block.Device
	size    int64
	extents []block.Extent
	bad     bool
}

func (f *extentFile) Size() int64 { return f.size }

func (f *extentFile) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	if f.bad {
		return []block.Extent{{Length: 0}}, nil
	}
	var pos int64
	for i, e := range f.extents {
		if off < pos+e.Length {
			first := e
			first.Length = pos + e.Length - off
			return append([]block.Extent{first}, f.extents[i+1:min(i+2, len(f.extents))]...), nil
		}
		pos += e.Length
	}
	return nil, errors.New("extents asked past the end")
}

func TestSeekExtent(t *testing.T) {
	const hole = block.StateHole | block.StateZero
	f := &extentFile{size: 100, extents: []block.Extent{
		{Length: 10, Flags: hole}, {Length: 20}, {Length: 5, Flags: block.StateZero}, {Length: 15, Flags: hole},
		{Length: 30, Flags: hole}, {Length: 20},
	}}
	allHole := &extentFile{size: 50, extents: []block.Extent{{Length: 50, Flags: hole}}}
	for _, c := range []struct {
		f        block.Device
		off      int64
		wantData bool
		want     int64
		err      error
	}{
		{f, 0, true, 10, nil},
		{f, 0, false, 0, nil},
		{f, 10, false, 35, nil}, // allocated zeros are data
		{f, 35, true, 80, nil},  // across two hole extents
		{f, 80, false, 100, nil},
		{f, 99, true, 99, nil},
		{f, 100, true, 0, syscall.ENXIO},
		{allHole, 0, true, 0, syscall.ENXIO},
		{allHole, 7, false, 7, nil},
		{&extentFile{size: 10, bad: true}, 0, true, 0, syscall.EIO},
	} {
		got, err := seekExtent(context.Background(), c.f, c.off, c.wantData)
		if !errors.Is(err, c.err) || got != c.want {
			t.Errorf("seek(data=%v) from %d = %d, %v; want %d, %v", c.wantData, c.off, got, err, c.want, c.err)
		}
	}
}
