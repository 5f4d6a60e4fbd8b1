package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) imageCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "image",
		Short: "Whole-machine images: create, list, show, delete (provision with cairn machine create --from-image)",
		Long: "An image holds every disk of a machine (or one disk) at one instant, as references to stored\n" +
			"chunks, with the machine's configuration: making one copies no data, and it outlives its sources\n" +
			"(docs/images.md). New machines are made from it as instant clones.",
	}, a.imageCreateCmd(), a.imageListCmd(), a.imageShowCmd(), a.imageDeleteCmd(), a.imageExportCmd())
}

func (a *app) imageCreateCmd() *cobra.Command {
	var req api.CreateImageRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "create NAME --machine M [--machine-snapshot S] | --disk D --snapshot S",
		Short: "Make an image of a machine (a machine snapshot is taken for it) or of one disk's snapshot (a task)",
		Example: "  cairn image create web-golden --machine web1 --consistency filesystem --wait\n" +
			"  cairn image create web-golden --machine web1 --machine-snapshot before-upgrade\n" +
			"  cairn image create base-os --disk vm1-root --snapshot installed",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: show(a, func(ctx context.Context, args []string) (api.Image, error) {
			req.Name = args[0]
			task, err := a.client.CreateImage(ctx, req)
			if err != nil {
				return api.Image{}, err
			}
			if !wait {
				fmt.Fprintf(a.stderr, "started task %s (cairn task wait %s)\n", task.ID, task.ID)
				return a.client.Image(ctx, req.Name)
			}
			if _, err := a.followTask(ctx, task); err != nil {
				return api.Image{}, err
			}
			return a.client.Image(ctx, req.Name)
		}, a.printImage),
	}
	f := cmd.Flags()
	f.StringVar(&req.Machine, "machine", "", "the machine to make the image of")
	f.StringVar(&req.MachineSnapshot, "machine-snapshot", "", "an existing machine snapshot of it (default: take one now)")
	f.StringVar(&req.Consistency, "consistency", "", "for the machine snapshot taken: crash, filesystem or auto (default auto)")
	f.StringVar(&req.Disk, "disk", "", "a disk, for an image of one disk (with --snapshot)")
	f.StringVar(&req.Snapshot, "snapshot", "", "the disk's snapshot")
	f.StringVar(&req.Description, "description", "", "free text kept with the image")
	f.BoolVar(&wait, "wait", false, "follow the task until the image is available")
	cmd.RegisterFlagCompletionFunc("machine", a.completeMachines)
	cmd.RegisterFlagCompletionFunc("disk", a.completeDisks)
	return cmd
}

func (a *app) imageListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    cobra.NoArgs,
		RunE: show(a, func(ctx context.Context, _ []string) ([]api.Image, error) { return a.client.Images(ctx) },
			func(list []api.Image) error {
				t := a.table("NAME", "STATE", "DISKS", "SOURCE", "UNIQUE", "CLONES", "CREATED")
				for _, im := range list {
					var disks []string
					for _, d := range im.Disks {
						disks = append(disks, d.Name)
					}
					t.row(im.Name, im.State, strings.Join(disks, ","), orDash(im.Source), formatBytes(im.UniqueBytes),
						fmt.Sprint(im.Clones), im.Created.Local().Format(time.DateTime))
				}
				return t.flush()
			}),
	}
}

func (a *app) imageShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "show NAME",
		Short:             "Show an image",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeImages,
		RunE:              show(a, func(ctx context.Context, args []string) (api.Image, error) { return a.client.Image(ctx, args[0]) }, a.printImage),
	}
}

func (a *app) printImage(im api.Image) error {
	t := a.table()
	t.row("Name:", im.Name)
	t.row("State:", im.State)
	t.row("Source:", orDash(im.Source))
	for i, d := range im.Disks {
		label := ""
		if i == 0 {
			label = "Disks:"
		}
		boot := ""
		if d.Boot {
			boot = " (boot)"
		}
		t.row(label, fmt.Sprintf("%s  %s%s", d.Name, api.FormatSize(d.Size), boot))
	}
	if im.Config != nil {
		t.row("Config:", fmt.Sprintf("%s, %d bytes", im.Config.MediaType, len(im.Config.Data)))
	}
	t.row("Unique:", formatBytes(im.UniqueBytes)+" (freed by deleting it)")
	t.row("Clones:", fmt.Sprint(im.Clones))
	if im.Description != "" {
		t.row("Description:", im.Description)
	}
	t.row("Created:", im.Created.Local().Format(time.RFC3339))
	return t.flush()
}

func (a *app) imageDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete an image (refused while disks read through it: flatten them first)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeImages,
		RunE: a.run(func(ctx context.Context, args []string) error {
			res, err := a.client.DeleteImage(ctx, args[0])
			if err != nil {
				return err
			}
			return a.print(res, func() error {
				_, err := fmt.Fprintf(a.stdout, "deleted image %s, freed %s\n", args[0], formatBytes(res.FreedBytes))
				return err
			})
		}),
	}
}

func (a *app) completeImages(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	list, err := (&api.Client{Socket: a.socketPath()}).Images(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(list))
	for _, im := range list {
		names = append(names, im.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
