package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Imports of image files into new disks (docs/export.md): cairnd creates
// the disks empty and sparse, the client writes them through their NBD
// exports (qemu-img convert -n --target-is-zero: zeros are not written),
// and when it finishes the machine, if one was asked for, is made of
// them. A transfer that fails, is cancelled or loses its client deletes
// the disks, so no half-made disk is left.

// MaxImportDisks bounds the disks of one import (a machine's limit).
const MaxImportDisks = MaxMachineDisks

// Import creates the disks of an import and starts its transfer.
func (d *Daemon) Import(ctx context.Context, req api.ImportRequest) (api.Transfer, error) {
	names, data, err := d.checkImport(req)
	if err != nil {
		return api.Transfer{}, err
	}
	if err := d.checkImportSpace(data); err != nil {
		return api.Transfer{}, err
	}
	var created []string
	work := transferWork{
		setup: func(ctx context.Context, id string) (api.Transfer, error) {
			var out api.Transfer
			for _, disk := range req.Disks {
				desc := disk.Description
				if desc == "" {
					desc = "imported from " + req.Source
				}
				if len(desc) > MaxDescription {
					desc = desc[:MaxDescription]
				}
				k, err := d.CreateDisk(ctx, api.CreateDiskRequest{Name: disk.Name, Size: disk.Size, BlockSize: disk.BlockSize, Description: desc})
				if err != nil {
					d.dropImported(context.Background(), created)
					return api.Transfer{}, err
				}
				created = append(created, disk.Name)
				out.Disks = append(out.Disks, api.TransferDisk{Name: k.Name, Export: k.Name, Size: k.Size, BlockSize: k.BlockSize})
			}
			return out, nil
		},
		cleanup: func(ctx context.Context, failed bool) error {
			if !failed && req.Machine != nil {
				cfg := req.Machine.Config
				if cfg != nil && len(req.Machine.RenameDisks) > 0 {
					renamed := *cfg
					renamed.Data = renameDisks(cfg.Data, req.Machine.RenameDisks)
					cfg = &renamed
				}
				_, err := d.CreateMachine(ctx, api.CreateMachineRequest{Name: req.Machine.Name, Disks: names,
					Config: cfg, Description: req.Machine.Description})
				if err == nil {
					return nil
				}
				failed = true
				if derr := d.dropImported(ctx, created); derr != nil {
					err = errors.Join(err, derr)
				}
				return fmt.Errorf("create machine %q of the imported disks: %w", req.Machine.Name, err)
			}
			if failed {
				return d.dropImported(ctx, created)
			}
			return nil
		},
	}
	return d.startTransfer(taskSpec{kind: api.TaskImport, disk: names[0], target: strings.Join(names, ","), unit: unitBytes}, work)
}

// checkImport applies the rules of an import request and returns its disk
// names and the data it will write.
func (d *Daemon) checkImport(req api.ImportRequest) (names []string, data uint64, err error) {
	if len(req.Disks) == 0 {
		return nil, 0, invalidField(fieldDisks, "disks: an import creates at least one disk")
	}
	if len(req.Disks) > MaxImportDisks {
		return nil, 0, invalidField(fieldDisks, "disks: %d disks is more than the limit of %d", len(req.Disks), MaxImportDisks)
	}
	if len(req.Source) > 1024 {
		return nil, 0, invalidField("source", "source: %d bytes is longer than the limit of 1024", len(req.Source))
	}
	seen := map[string]bool{}
	for _, disk := range req.Disks {
		if err := checkDiskName(fieldName, disk.Name); err != nil {
			return nil, 0, err
		}
		if seen[disk.Name] {
			return nil, 0, invalidField(fieldDisks, "disks: %q is listed twice", disk.Name)
		}
		seen[disk.Name] = true
		if err := checkDescription(disk.Description); err != nil {
			return nil, 0, err
		}
		bs, err := parseBlockSize(disk.BlockSize)
		if err != nil {
			return nil, 0, err
		}
		if _, err := parseDiskSize(api.CreateDiskRequest{Size: disk.Size}, bs); err != nil {
			return nil, 0, err
		}
		names = append(names, disk.Name)
		data += disk.DataBytes
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range names {
		if d.disks[name] != nil {
			return nil, 0, fieldError(block.ErrExists, fieldName, "disk %q already exists: choose another name", name)
		}
	}
	if m := req.Machine; m != nil {
		if err := checkDiskName(fieldName, m.Name); err != nil {
			return nil, 0, err
		}
		if err := checkConfig(m.Config); err != nil {
			return nil, 0, err
		}
		if err := checkDescription(m.Description); err != nil {
			return nil, 0, err
		}
		for from, to := range m.RenameDisks {
			if !ValidName(from) || !seen[to] {
				return nil, 0, invalidField("rename_disks", "rename_disks: %q -> %q: each maps a disk name to one of the imported disks", from, to)
			}
		}
		if d.machines[m.Name] != nil {
			return nil, 0, fieldError(block.ErrExists, fieldName, "machine %q already exists: choose another name", m.Name)
		}
	}
	return names, data, d.checkChange()
}

// checkImportSpace refuses an import whose data does not fit in the free
// space of the filesystem that holds the live images.
func (d *Daemon) checkImportSpace(data uint64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(d.disksDir(), &st); err != nil {
		return fmt.Errorf("free space of %s: %w", d.disksDir(), err)
	}
	if free := st.Bavail * uint64(st.Bsize); data > free {
		return fieldError(block.ErrNoSpace, "data_bytes", "the image holds %s of data and %s has %s free: free space there first",
			api.FormatSize(int64(data)), d.disksDir(), api.FormatSize(int64(free)))
	}
	return nil
}

// dropImported deletes the disks of an import that failed, disconnecting
// their NBD clients (the client's qemu-img, if it still runs).
func (d *Daemon) dropImported(ctx context.Context, disks []string) error {
	var errs []error
	for _, name := range disks {
		err := d.DeleteDisk(ctx, name, api.DeleteDiskOptions{Force: true, WithSnapshots: true})
		if err != nil && !errors.Is(err, block.ErrNotFound) {
			errs = append(errs, fmt.Errorf("delete the imported disk %q: %w (delete it with cairn disk delete %s --force --with-snapshots)", name, err, name))
		}
	}
	return errors.Join(errs...)
}
