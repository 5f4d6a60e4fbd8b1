package restore

import (
	"context"
	"io"
	"os"
)

// Layout is what a disk image holds, as cairn check reports it: its
// partition table's scheme, the filesystem on the whole image (if any)
// and each partition with its type and filesystem.
type Layout struct {
	Scheme     string   `json:"scheme"` // SchemeNone, SchemeMBR or SchemeGPT
	Whole      string   `json:"whole,omitempty"`
	Partitions []Volume `json:"partitions"`
}

// Supported reports whether Mount mounts a filesystem of type fstype.
func Supported(fstype string) bool { return supported(fstype) }

// ReadLayout reads the partition table of the image file and probes the
// filesystem of the whole image and of every partition. It only reads.
func ReadLayout(ctx context.Context, file string) (Layout, error) {
	f, err := os.Open(file)
	if err != nil {
		return Layout{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Layout{}, err
	}
	out := Layout{Partitions: []Volume{}}
	if out.Whole, err = probe(ctx, file, 0, size); err != nil {
		return Layout{}, err
	}
	scheme, parts, err := readTable(f, size)
	out.Scheme = scheme
	if err != nil {
		return out, err
	}
	for _, p := range parts {
		t, err := probe(ctx, file, p.Offset, p.Size)
		if err != nil {
			return Layout{}, err
		}
		out.Partitions = append(out.Partitions, Volume{Number: p.Number, Offset: p.Offset, Size: p.Size, Type: p.Type, FSType: t})
	}
	return out, nil
}
