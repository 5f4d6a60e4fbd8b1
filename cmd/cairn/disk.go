package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) diskCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "disk",
		Short: "Create (or clone), list, show, grow, flatten and delete disks; attach them to this host as /dev/nbdN",
	}, a.diskCreateCmd(), a.diskListCmd(), a.diskShowCmd(), a.diskGrowCmd(), a.diskFlattenCmd(), a.diskDeleteCmd(),
		a.diskAttachCmd(), a.diskDetachCmd(), a.diskAttachmentsCmd())
}

func (a *app) diskCreateCmd() *cobra.Command {
	var req api.CreateDiskRequest
	var size, blockSize string
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE | --adopt PATH | --from DISK@SNAPSHOT",
		Short: "Create a disk: a new sparse image, an existing file or device (--adopt), or an instant clone of a snapshot (--from)",
		Example: "  cairn disk create vm1-root --size 20G\n" +
			"  cairn disk create db --size 100G --block-size 256K --description 'postgres data'\n" +
			"  cairn disk create legacy --adopt /var/lib/images/legacy.raw\n" +
			"  cairn disk create vm2-root --from vm1-root@golden",
		Args: cobra.ExactArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if req.From != "" {
				if size != "" || req.Adopt != "" || blockSize != "" {
					return fmt.Errorf("--from excludes --size, --block-size and --adopt: a clone takes its size and block size from the snapshot")
				}
				return nil
			}
			if size == "" && req.Adopt == "" {
				return fmt.Errorf("disk create needs --size (or --adopt PATH, or --from DISK@SNAPSHOT)")
			}
			if size != "" && req.Adopt != "" {
				return fmt.Errorf("--size and --adopt exclude each other: an adopted disk takes its file's size")
			}
			for flag, v := range map[string]string{"--size": size, "--block-size": blockSize} {
				if _, err := api.ParseSize(v); v != "" && err != nil {
					return fmt.Errorf("invalid %s: %v", flag, err)
				}
			}
			return nil
		},
		RunE: show(a, func(ctx context.Context, args []string) (api.Disk, error) {
			req.Name, req.Size, req.BlockSize = args[0], api.Size(size), api.Size(blockSize)
			if req.Adopt != "" {
				// cairnd runs on this host: a path relative to here is meant.
				abs, err := filepath.Abs(req.Adopt)
				if err != nil {
					return api.Disk{}, err
				}
				req.Adopt = abs
			}
			return a.client.CreateDisk(ctx, req)
		}, a.printDisk),
	}
	f := cmd.Flags()
	f.StringVar(&size, "size", "", "size: bytes or with a unit, such as 10G, 512M, 1T (K, M, G, T are KiB, MiB, GiB, TiB; a multiple of 4 KiB)")
	f.StringVar(&blockSize, "block-size", "", "change-tracking block size, a power of two from 4K to 4M (default 64K)")
	f.StringVar(&req.Adopt, "adopt", "", "path of an existing raw file or block device to use as the live image")
	f.StringVar(&req.From, "from", "", "make an instant clone of snapshot DISK@SNAPSHOT: no data copied, its unwritten blocks read through to the snapshot")
	cmd.RegisterFlagCompletionFunc("from", a.completeExports)
	f.BoolVar(&req.CopyOnRead, "copy-on-read", false, "with --from: reads copy what they read from the snapshot into the clone's image")
	f.StringVar(&req.Description, "description", "", "free text, shown to NBD clients")
	return cmd
}

func (a *app) diskListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List disks",
		Args:    cobra.NoArgs,
		RunE: show(a, func(ctx context.Context, _ []string) ([]api.Disk, error) { return a.client.Disks(ctx) },
			func(disks []api.Disk) error {
				t := a.table("NAME", "SIZE", "BLOCK", "CLIENTS", "STATE", "DESCRIPTION")
				for _, d := range disks {
					t.row(d.Name, api.FormatSize(d.Size), api.FormatSize(int64(d.BlockSize)), strconv.Itoa(len(d.Clients)), d.State, d.Description)
				}
				return t.flush()
			}),
	}
}

func (a *app) diskShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "show NAME",
		Short:             "Show one disk",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE:              show(a, func(ctx context.Context, args []string) (api.Disk, error) { return a.client.Disk(ctx, args[0]) }, a.printDisk),
	}
}

func (a *app) diskGrowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "grow NAME SIZE",
		Short:             "Grow a disk to SIZE (disks never shrink); clients see the new size when they reconnect",
		Example:           "  cairn disk grow vm1-root 40G",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeDisks,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if _, err := api.ParseSize(args[1]); err != nil {
				return fmt.Errorf("invalid SIZE: %v", err)
			}
			return nil
		},
		RunE: show(a, func(ctx context.Context, args []string) (api.Disk, error) {
			return a.client.GrowDisk(ctx, args[0], api.Size(args[1]))
		}, a.printDisk),
	}
}

func (a *app) diskDeleteCmd() *cobra.Command {
	var opts api.DeleteDiskOptions
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a disk (refused while it has snapshots, unless --with-snapshots, or clients, unless --force)",
		Long: "Deletes the disk's record and its live image (an adopted file is kept unless --delete-adopted).\n" +
			"A disk that has snapshots is not deleted unless --with-snapshots says to delete them with it; the\n" +
			"refusal says how many there are. Refused while NBD clients are connected or the disk is attached as\n" +
			"/dev/nbdN, unless --force disconnects the clients and detaches the devices.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: a.run(func(ctx context.Context, args []string) error {
			if err := a.client.DeleteDisk(ctx, args[0], opts); err != nil {
				return err
			}
			return a.print(map[string]string{"deleted": args[0]}, func() error {
				_, err := fmt.Fprintf(a.stdout, "deleted disk %s\n", args[0])
				return err
			})
		}),
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "disconnect connected NBD clients and detach kernel attachments first")
	cmd.Flags().BoolVar(&opts.DeleteAdopted, "delete-adopted", false, "also remove an adopted image file (kept by default)")
	cmd.Flags().BoolVar(&opts.WithSnapshots, "with-snapshots", false, "delete the disk's snapshots with it (without it a disk that has snapshots is not deleted)")
	return cmd
}

// printDisk prints one disk as key/value lines.
func (a *app) printDisk(d api.Disk) error {
	t := a.table()
	t.row("Name:", d.Name)
	t.row("ID:", strconv.FormatUint(d.ID, 10))
	t.row("Size:", fmt.Sprintf("%s (%d bytes)", api.FormatSize(d.Size), d.Size))
	t.row("Block size:", api.FormatSize(int64(d.BlockSize)))
	t.row("State:", d.State)
	if d.Error != "" {
		t.row("Error:", d.Error)
	}
	if d.Description != "" {
		t.row("Description:", d.Description)
	}
	image := d.Path
	if d.Adopted {
		image += " (adopted)"
	}
	t.row("Live image:", image)
	if d.Parent != "" {
		t.row("Parent:", fmt.Sprintf("%s (a clone, depth %d: its unwritten blocks read from there; cairn disk flatten %s)", d.Parent, d.Depth, d.Name))
	}
	if d.Flattened != "" {
		t.row("Cloned from:", d.Flattened+" (flattened: independent of it)")
	}
	if d.CopyOnRead {
		t.row("Copy-on-read:", "yes (what it reads from its parent is copied into its image)")
	}
	if d.Policy != "" {
		t.row("Policy:", d.Policy+" (cairn policy show "+d.Policy+")")
	}
	t.row("Export:", d.Export)
	t.row("Clients:", strconv.Itoa(len(d.Clients)))
	t.row("Created:", d.Created.Local().Format(time.RFC3339))
	return t.flush()
}

// completeDisks completes the first argument with the names of disks.
func (a *app) completeDisks(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	client := &api.Client{Socket: a.socketPath()}
	disks, err := client.Disks(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		names = append(names, d.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) diskFlattenCmd() *cobra.Command {
	var req api.FlattenRequest
	var rate string
	var wait bool
	cmd := &cobra.Command{
		Use:   "flatten NAME",
		Short: "Make a clone independent of its parent (a task; --hydrate copies its data into its image too)",
		Long: "Copies the parent's entries into the clone's own chain by reference (metadata only): afterwards\n" +
			"the parent's snapshot can be deleted. --hydrate then copies the blocks the clone never wrote into\n" +
			"its live image, at most --rate bytes a second, so its reads stop going to the snapshot store.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: show(a, func(ctx context.Context, args []string) (api.Task, error) {
			req.Rate = api.Size(rate)
			task, err := a.client.Flatten(ctx, args[0], req)
			if err != nil || !wait {
				return task, err
			}
			return a.followTask(ctx, task)
		}, a.printTask),
	}
	cmd.Flags().BoolVar(&req.Hydrate, "hydrate", false, "also copy the blocks it reads from its parent into its live image")
	cmd.Flags().StringVar(&rate, "rate", "", "bound on --hydrate, bytes per second with a unit (such as 100M)")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the task until it ends")
	return cmd
}

// completeExports completes DISK and DISK@SNAPSHOT.
func (a *app) completeExports(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	exps, err := (&api.Client{Socket: a.socketPath()}).Exports(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, e := range exps {
		out = append(out, e.Name)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
