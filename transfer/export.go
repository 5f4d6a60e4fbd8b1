package transfer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// ExportOptions configure an export of a disk to a file.
type ExportOptions struct {
	Output OutputOptions
	// Snapshot to export; "" exports the live disk through a snapshot
	// cairnd takes for it (Consistency: crash, filesystem or auto).
	Snapshot    string
	Consistency string
	// IncrementalFrom names an earlier snapshot, whose export is the file
	// Backing: the file written holds only the blocks changed since.
	IncrementalFrom string
	Backing         string
	Progress        Progress
}

// Exported describes a file an export wrote.
type Exported struct {
	Disk        string  `json:"disk"`
	Snapshot    string  `json:"snapshot"`
	Temporary   bool    `json:"temporary_snapshot,omitempty"`
	File        string  `json:"file"`
	Format      string  `json:"format"`
	VirtualSize int64   `json:"virtual_size"`
	FileBytes   int64   `json:"file_bytes"` // allocated on disk
	Backing     string  `json:"backing,omitempty"`
	Task        string  `json:"task"`
	Seconds     float64 `json:"seconds"`
}

// ExportDisk writes disk (or its snapshot) to file. The file is written
// under a temporary name beside it and renamed when complete; it must not
// exist.
func ExportDisk(ctx context.Context, c *api.Client, disk, file string, o ExportOptions) (Exported, error) {
	start := time.Now()
	out := o.Output
	if (o.IncrementalFrom == "") != (o.Backing == "") {
		return Exported{}, errors.New("an incremental export needs both --incremental-from SNAP and --backing FILE (the export of SNAP)")
	}
	if o.Backing != "" {
		base, err := checkBacking(ctx, file, o.Backing)
		if err != nil {
			return Exported{}, err
		}
		out.Backing, out.BackingFormat = base.rel, base.info.Format
	}
	if err := out.check(); err != nil {
		return Exported{}, err
	}
	if err := checkNew(file); err != nil {
		return Exported{}, err
	}
	tr, err := c.ExportDisk(ctx, disk, api.ExportRequest{Snapshot: o.Snapshot, Consistency: o.Consistency, ChangesSince: o.IncrementalFrom})
	if err != nil {
		return Exported{}, err
	}
	td := tr.Disks[0]
	res := Exported{Disk: disk, Snapshot: td.Snapshot, Temporary: td.Temporary, File: file, Format: out.Format.Name,
		VirtualSize: td.Size, Backing: o.Backing, Task: tr.Task.ID}
	err = run(ctx, c, tr, o.Progress, func(ctx context.Context, progress Progress) error {
		return convertOut(ctx, tr, td, file, out, progress, 0, uint64(td.Size))
	})
	if err != nil {
		return Exported{}, err
	}
	res.FileBytes = allocated(file)
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// convertOut converts one transfer disk into file (through a partial file
// renamed at the end), reporting progress as base + its share of size.
func convertOut(ctx context.Context, tr api.Transfer, td api.TransferDisk, file string, out OutputOptions, progress Progress, base, total uint64) error {
	partial := partialName(file)
	// 16 requests in flight (qemu-img's most) and writes in the order
	// reads complete: over NBD this is 2-3 times faster than the defaults
	// (docs/performance.md).
	args := []string{"-m", "16", "-W", "--image-opts", nbdImageOpts(tr, td.Export, td.ChangesContext)}
	args = append(args, out.convertArgs()...)
	args = append(args, partial)
	err := convert(ctx, nil, args, func(p float64) {
		progress(base+uint64(p/100*float64(td.Size)), total)
	})
	if err == nil {
		err = os.Rename(partial, file)
	}
	if err != nil {
		os.Remove(partial)
		return fmt.Errorf("export %s to %s: %w", td.Export, file, err)
	}
	progress(base+uint64(td.Size), total)
	return nil
}

// partialName is where file is written until it is complete.
func partialName(file string) string {
	return filepath.Join(filepath.Dir(file), "."+filepath.Base(file)+".cairn-partial")
}

// checkNew refuses to overwrite a file.
func checkNew(file string) error {
	if _, err := os.Lstat(file); err == nil {
		return fmt.Errorf("%s exists: cairn does not overwrite files; remove it or choose another name", file)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// backing is the earlier export an incremental export builds on.
type backing struct {
	info Info
	rel  string // its path as the overlay records it: relative to the overlay's directory when it can be
}

// checkBacking looks at the earlier export: an image file qemu-img reads,
// named relative to the new file's directory.
func checkBacking(ctx context.Context, file, base string) (backing, error) {
	in, err := info(ctx, base, "")
	if err != nil {
		return backing{}, fmt.Errorf("--backing %s: %w", base, err)
	}
	if _, err := LookupFormat(in.Format); err != nil {
		return backing{}, fmt.Errorf("--backing %s: %w", base, err)
	}
	absBase, err := filepath.Abs(base)
	if err != nil {
		return backing{}, err
	}
	absDir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return backing{}, err
	}
	rel, err := filepath.Rel(absDir, absBase)
	if err != nil {
		rel = absBase
	}
	return backing{info: in, rel: rel}, nil
}

// allocated is the bytes file occupies on its filesystem.
func allocated(file string) int64 {
	st, err := os.Stat(file)
	if err != nil {
		return 0
	}
	return fileBlocks(st) * 512
}
