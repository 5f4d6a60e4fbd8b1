package transfer

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// ImportOptions configure an import of an image file into a new disk.
type ImportOptions struct {
	Vet         VetOptions
	BlockSize   string // the new disk's block size ("" the default)
	Description string
	Progress    Progress
}

// Imported describes a disk an import made.
type Imported struct {
	Disk        string  `json:"disk"`
	File        string  `json:"file"`
	Format      string  `json:"format"`
	VirtualSize int64   `json:"virtual_size"`
	DiskSize    int64   `json:"disk_size"`
	DataBytes   uint64  `json:"data_bytes"` // what qemu-img measured as allocated
	Backing     int     `json:"backing_files,omitempty"`
	Task        string  `json:"task"`
	Seconds     float64 `json:"seconds"`
}

// diskAlign is the multiple of a disk's size (daemon.SizeAlign).
const diskAlign = 4096

// Import vets file and, if it passes, creates the disk name from it. On
// any failure cairnd deletes the disk, so nothing half-made is left.
func Import(ctx context.Context, c *api.Client, file, name string, o ImportOptions) (Imported, error) {
	start := time.Now()
	v, err := Vet(ctx, file, o.Vet)
	if err != nil {
		return Imported{}, err
	}
	size := alignUp(v.Size)
	tr, err := c.Import(ctx, api.ImportRequest{Source: v.File, Disks: []api.ImportDisk{{Name: name, Size: api.Size(fmt.Sprint(size)),
		BlockSize: api.Size(o.BlockSize), Description: o.Description, DataBytes: v.DataBytes}}})
	if err != nil {
		return Imported{}, err
	}
	err = run(ctx, c, tr, o.Progress, func(ctx context.Context, progress Progress) error {
		return convertIn(ctx, tr, tr.Disks[0], v, progress, 0, uint64(v.Size))
	})
	if err != nil {
		return Imported{}, err
	}
	return Imported{Disk: name, File: v.File, Format: v.Format.Name, VirtualSize: v.Size, DiskSize: size, DataBytes: v.DataBytes,
		Backing: len(v.Chain) - 1, Task: tr.Task.ID, Seconds: time.Since(start).Seconds()}, nil
}

// convertIn writes a vetted image into a new disk: only its data (the
// disk is new and sparse, so qemu-img writes no zeros), under limits.
func convertIn(ctx context.Context, tr api.Transfer, td api.TransferDisk, v Vetted, progress Progress, base, total uint64) error {
	args := []string{"-n", "--target-is-zero", "-m", "16", "-W", "-f", v.Format.Qemu, "-O", "raw", "--", v.File, nbdURI(tr, td.Export)}
	err := convert(ctx, &convertLimits, args, func(p float64) {
		progress(base+uint64(p/100*float64(v.Size)), total)
	})
	if err != nil {
		return fmt.Errorf("import %s into disk %s: %w", v.File, td.Name, err)
	}
	progress(base+uint64(v.Size), total)
	return nil
}

func alignUp(n int64) int64 { return (n + diskAlign - 1) / diskAlign * diskAlign }

// fileBlocks is the 512-byte blocks a file occupies.
func fileBlocks(st os.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks
	}
	return st.Size() / 512
}
