package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/transfer"
)

// Exports to image files and imports from them (docs/export.md). The
// conversion runs here, as the user who runs cairn, with qemu-img against
// cairnd's NBD exports; cairnd keeps the task and cleans up.

// outputFlags are the flags that say how an export writes its files.
type outputFlags struct {
	format, subformat string
	compress          bool
	forceSize         bool
}

func (o *outputFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "qcow2", "file format: "+strings.Join(transfer.FormatNames(), ", "))
	f.BoolVar(&o.compress, "compress", false, "compress the data (qcow2; vmdk, as streamOptimized)")
	f.StringVar(&o.subformat, "subformat", "", "vmdk: monolithicSparse or streamOptimized; vhd, vhdx: dynamic or fixed")
	f.BoolVar(&o.forceSize, "force-size", false, "vhd: keep the exact size, not a CHS geometry's (Azure, Hyper-V)")
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(transfer.FormatNames(), cobra.ShellCompDirectiveNoFileComp))
}

func (o *outputFlags) options() (transfer.OutputOptions, error) {
	f, err := transfer.LookupFormat(o.format)
	if err != nil {
		return transfer.OutputOptions{}, fmt.Errorf("--format: %w", err)
	}
	return transfer.OutputOptions{Format: f, Compress: o.compress, Subformat: o.subformat, ForceSize: o.forceSize}, nil
}

// exportRun is cairn export DISK[@SNAPSHOT] FILE (the export command
// group's own body; export list is its subcommand).
func (a *app) exportRun(out *outputFlags, opts *transfer.ExportOptions) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 2 {
			return fmt.Errorf("export takes DISK[@SNAPSHOT] FILE (or a subcommand: list), got %d argument(s)", len(args))
		}
		o := *opts
		var err error
		if o.Output, err = out.options(); err != nil {
			return err
		}
		disk, snap, _ := strings.Cut(args[0], "@")
		o.Snapshot = snap
		return a.run(func(ctx context.Context, _ []string) error {
			var res transfer.Exported
			err := a.withProgress("export "+args[0], func(p transfer.Progress) error {
				o.Progress = p
				var err error
				res, err = transfer.ExportDisk(ctx, a.client, disk, args[1], o)
				return err
			})
			if err != nil {
				return err
			}
			return a.print(res, func() error {
				t := a.table()
				from := res.Disk + "@" + res.Snapshot
				if res.Temporary {
					from = res.Disk + " (through a snapshot taken for the export, now deleted)"
				}
				t.row("Exported:", from)
				t.row("File:", res.File)
				t.row("Format:", res.Format)
				if res.Backing != "" {
					t.row("Backing file:", res.Backing+" (incremental: only the blocks changed since "+o.IncrementalFrom+")")
				}
				t.row("Virtual size:", api.FormatSize(res.VirtualSize))
				t.row("File size:", formatBytes(uint64(res.FileBytes))+" allocated")
				t.row("Time:", (time.Duration(res.Seconds*1000) * time.Millisecond).String())
				return t.flush()
			})
		})(cmd, args)
	}
}

// withProgress shows a transfer's progress (bytes) while fn runs.
func (a *app) withProgress(label string, fn func(transfer.Progress) error) error {
	d := a.display(label, status{state: workRunning})
	defer d.close()
	err := fn(func(done, total uint64) {
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		d.update(status{state: workRunning, percent: pct, doneBytes: done, totalBytes: total})
	})
	if err != nil {
		d.update(status{state: workFailed, err: err})
		return err
	}
	d.update(status{state: workDone, percent: 100})
	return nil
}

func (a *app) importCmd() *cobra.Command {
	var opts transfer.ImportOptions
	cmd := &cobra.Command{
		Use:   "import FILE|DIR NAME",
		Short: "Create a disk from an image file (qcow2, vmdk, vhd, vhdx, raw), or a machine from a machine image directory",
		Long: "import vets the image first (format, size, backing chain, qemu-img check) and creates nothing if it is refused;\n" +
			"then cairnd creates the disk empty and sparse and cairn writes only the image's data into it with qemu-img,\n" +
			"as the user who runs it. On failure (or Ctrl-C) cairnd deletes the disk: nothing half-made is left.\n" +
			"A directory written by cairn image export (with its manifest.json) becomes machine NAME and its disks.",
		Example: "  cairn import web.qcow2 web-root\n" +
			"  cairn import disk.vmdk vm2 --format vmdk --allow-backing /srv/images\n" +
			"  cairn import ./web-golden/ web2",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: a.run(func(ctx context.Context, args []string) error {
			st, err := os.Stat(args[0])
			if err != nil {
				return err
			}
			if st.IsDir() {
				if opts.Vet.Format != "auto" || opts.BlockSize != "" || opts.Description != "" {
					return errors.New("a machine image directory says each disk's format and block size: leave out --format, --block-size and --description")
				}
				var res transfer.MachineImported
				err := a.withProgress("import "+args[0], func(p transfer.Progress) error {
					opts.Progress = p
					var err error
					res, err = transfer.ImportMachine(ctx, a.client, args[0], args[1], opts)
					return err
				})
				if err != nil {
					return err
				}
				return a.print(res, func() error {
					t := a.table("MACHINE", "DISK", "FILE", "FORMAT", "SIZE", "DATA")
					for _, d := range res.Disks {
						t.row(res.Machine, d.Disk, d.File, d.Format, api.FormatSize(d.DiskSize), formatBytes(d.DataBytes))
					}
					return t.flush()
				})
			}
			var res transfer.Imported
			err = a.withProgress("import "+args[0], func(p transfer.Progress) error {
				opts.Progress = p
				var err error
				res, err = transfer.Import(ctx, a.client, args[0], args[1], opts)
				return err
			})
			if err != nil {
				return err
			}
			return a.print(res, func() error {
				t := a.table()
				t.row("Disk:", res.Disk)
				t.row("From:", res.File+" ("+res.Format+")")
				t.row("Size:", api.FormatSize(res.DiskSize))
				t.row("Data:", formatBytes(res.DataBytes)+" (zeros are not written; the disk stays sparse)")
				t.row("Time:", (time.Duration(res.Seconds*1000) * time.Millisecond).String())
				return t.flush()
			})
		}),
	}
	f := cmd.Flags()
	f.StringVar(&opts.Vet.Format, "format", "auto", "the file's format: auto (qemu-img probes it), "+strings.Join(transfer.FormatNames(), ", "))
	f.StringArrayVar(&opts.Vet.AllowBacking, "allow-backing", nil, "a directory backing files may lie in, besides FILE's own (repeat for more)")
	f.StringVar(&opts.BlockSize, "block-size", "", "the new disk's block size (default 64K)")
	f.StringVar(&opts.Description, "description", "", "the new disk's description (default: where it came from)")
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(append([]string{"auto"}, transfer.FormatNames()...), cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("allow-backing", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return nil, cobra.ShellCompDirectiveFilterDirs
	})
	return cmd
}

func (a *app) imageExportCmd() *cobra.Command {
	var out outputFlags
	cmd := &cobra.Command{
		Use:   "export IMAGE DIR",
		Short: "Write an image to a new directory: one file per disk, the configuration, and manifest.json (SHA-256 of each)",
		Example: "  cairn image export web-golden ./web-golden --format qcow2 --compress\n" +
			"  cairn import ./web-golden web2     # on another host",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeImages,
		RunE: a.run(func(ctx context.Context, args []string) error {
			o, err := out.options()
			if err != nil {
				return err
			}
			var m transfer.Manifest
			err = a.withProgress("export image "+args[0], func(p transfer.Progress) error {
				var err error
				m, err = transfer.ExportImage(ctx, a.client, args[0], args[1], o, p)
				return err
			})
			if err != nil {
				return err
			}
			return a.print(m, func() error {
				t := a.table("DISK", "FILE", "FORMAT", "SIZE", "FILE SIZE", "BOOT", "SHA-256")
				for _, d := range m.Disks {
					t.row(d.Name, d.File, d.Format, api.FormatSize(d.VirtualSize), formatBytes(uint64(d.FileBytes)), yesNo(d.Boot), d.SHA256[:16]+"…")
				}
				return t.flush()
			})
		}),
	}
	out.add(cmd)
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
