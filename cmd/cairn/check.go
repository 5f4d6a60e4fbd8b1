package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/inspect"
	"github.com/cairn-storage/cairn/transfer"
)

// cairn check FILE|DISK[@SNAPSHOT] (docs/export.md): an image before it
// travels, read-only.

func (a *app) checkCmd() *cobra.Command {
	var vet transfer.VetOptions
	cmd := &cobra.Command{
		Use:   "check FILE|DISK[@SNAPSHOT]",
		Short: "Check an image file or a disk before it travels: qemu-img check, read-only fsck, migration readiness",
		Long: "check looks at an image file (its metadata with qemu-img check) or a disk's snapshot (a live disk through a\n" +
			"snapshot taken for it and deleted afterwards), then, read-only and as root, at its partition table, each\n" +
			"filesystem (a read-only fsck and a mount that replays no journal) and what another hypervisor needs:\n" +
			"EFI or BIOS boot, fstab and the kernel's root= by UUID rather than device name, virtio drivers in the\n" +
			"initramfs, cloud-init. Each finding says what to do. Exit status 1 when a finding is an error.\n" +
			"An existing file wins over a disk of the same name (write ./NAME for a file, NAME@SNAP for a disk).",
		Example: "  cairn check vm1.qcow2\n" +
			"  cairn check vm1@nightly -o json",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeExports,
		RunE: a.run(func(ctx context.Context, args []string) error {
			rep, err := a.check(ctx, args[0], vet)
			if err != nil {
				return err
			}
			if err := a.print(rep, func() error { return a.printReport(rep) }); err != nil {
				return err
			}
			if rep.Status == inspect.StatusError {
				return fmt.Errorf("%s has errors (see the findings above)", args[0])
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&vet.Format, "format", "auto", "a file's format: auto (qemu-img probes it), "+strings.Join(transfer.FormatNames(), ", "))
	f.StringArrayVar(&vet.AllowBacking, "allow-backing", nil, "a directory backing files may lie in, besides FILE's own (repeat for more)")
	return cmd
}

// check checks a file, or else a disk's snapshot.
func (a *app) check(ctx context.Context, target string, vet transfer.VetOptions) (inspect.Report, error) {
	rep := inspect.Report{Target: target}
	if st, err := os.Stat(target); err == nil && !st.IsDir() {
		err := a.checkFile(ctx, target, vet, &rep)
		rep.Finish()
		return rep, err
	}
	disk, snap, _ := strings.Cut(target, "@")
	err := transfer.WithSnapshot(ctx, a.client, disk, snap, func(ctx context.Context, uri string, td api.TransferDisk) error {
		rep.Format, rep.VirtualSize = "raw", td.Size
		raw, err := inspect.RawNBD(ctx, uri)
		if err != nil {
			return err
		}
		defer raw.Close()
		return inspect.Content(ctx, raw.Path, &rep)
	})
	rep.Finish()
	return rep, err
}

// checkFile checks an image file: its chain and metadata, then content.
func (a *app) checkFile(ctx context.Context, file string, vet transfer.VetOptions, rep *inspect.Report) error {
	v, err := transfer.VetChain(ctx, file, vet)
	if err != nil {
		if errors.Is(err, transfer.ErrRefused) {
			rep.Add(inspect.Finding{Check: "image", Where: file, Status: inspect.StatusError, Message: err.Error(),
				Fix: "cairn does not read this image further; see the reason"})
			return nil
		}
		return err
	}
	rep.Format, rep.VirtualSize = v.Format.Name, v.Size
	res, err := transfer.Check(ctx, v)
	if err != nil {
		return err
	}
	switch {
	case !res.Supported:
		rep.Add(inspect.Finding{Check: "image", Where: file, Status: inspect.StatusInfo, Message: res.Message})
	case !res.Clean():
		rep.Add(inspect.Finding{Check: "image", Where: file, Status: inspect.StatusError,
			Message: fmt.Sprintf("qemu-img check: %d corruption(s), %d error(s) %s", res.Corruptions, res.CheckErrors, res.Message),
			Fix:     "the file is damaged: export it again, or repair a copy with qemu-img check -r all"})
		return nil
	case res.Leaks > 0:
		rep.Add(inspect.Finding{Check: "image", Where: file, Status: inspect.StatusInfo,
			Message: fmt.Sprintf("qemu-img check: %d leaked cluster(s): wasted space, no harm (qemu-img check -r leaks reclaims it)", res.Leaks)})
	default:
		rep.Add(inspect.Finding{Check: "image", Where: file, Status: inspect.StatusOK, Message: "qemu-img check: no errors"})
	}
	var raw *inspect.Raw
	if v.Format.Name == "raw" {
		raw = inspect.RawFile(v.File)
	} else if raw, err = inspect.RawImage(ctx, v.File, v.Format.Qemu); err != nil {
		return err
	}
	defer raw.Close()
	return inspect.Content(ctx, raw.Path, rep)
}

// printReport prints the findings as a table.
func (a *app) printReport(r inspect.Report) error {
	t := a.table()
	t.row("Target:", r.Target)
	if r.Format != "" {
		t.row("Format:", r.Format+", "+api.FormatSize(r.VirtualSize))
	}
	t.row("Partition table:", orDash(r.Scheme))
	t.row("Boot:", orDash(r.Boot))
	t.row("Result:", r.Status)
	if err := t.flush(); err != nil {
		return err
	}
	if len(r.Partitions) > 0 {
		fmt.Fprintln(a.stdout)
		t = a.table("PART", "SIZE", "TYPE", "FS", "FSCK", "MOUNTED", "ROLE")
		for _, p := range r.Partitions {
			num := fmt.Sprint(p.Number)
			if p.Number == 0 {
				num = "disk"
			}
			t.row(num, api.FormatSize(p.Size), orDash(p.Type), orDash(p.FSType), orDash(p.Fsck), yesNo(p.Mounted), orDash(p.Role))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	fmt.Fprintln(a.stdout)
	t = a.table("STATUS", "CHECK", "WHERE", "FINDING")
	for _, f := range r.Findings {
		msg := f.Message
		if f.Fix != "" {
			msg += " — " + f.Fix
		}
		t.row(strings.ToUpper(f.Status), f.Check, orDash(f.Where), msg)
	}
	return t.flush()
}
