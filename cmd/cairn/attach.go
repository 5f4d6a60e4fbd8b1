package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

// cairn disk attach | detach | attachments: exports as /dev/nbdN on this
// host (docs/install.md, "Block devices on the host").

func (a *app) diskAttachCmd() *cobra.Command {
	var req api.AttachRequest
	var reconnect time.Duration
	cmd := &cobra.Command{
		Use:   "attach DISK[@SNAPSHOT]",
		Short: "Attach a disk (read-write) or a snapshot (read-only) to this host's kernel as /dev/nbdN, and print the device",
		Long: "cairnd serves the device itself, over sockets it hands the kernel's nbd driver (loading the nbd module\n" +
			"if needed), records the attachment and reconnects it when it restarts: I/O waits meanwhile, up to\n" +
			"--reconnect-timeout, so a filesystem mounted on the device survives a restart of cairnd.\n" +
			"A disk or snapshot that is attached is not deleted or rolled back without --force.",
		Example: "  dev=$(cairn disk attach vm1-root)\n" +
			"  cairn disk attach vm1-root@before-upgrade --device /dev/nbd3\n" +
			"  mount -o ro,noload /dev/nbd3 /mnt",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeExports,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if reconnect < 0 || reconnect != reconnect.Truncate(time.Second) {
				return fmt.Errorf("invalid --reconnect-timeout %s: whole seconds, such as 90s or 5m", reconnect)
			}
			return nil
		},
		RunE: show(a, func(ctx context.Context, args []string) (api.Attachment, error) {
			req.Export, req.ReconnectTimeout = args[0], int(reconnect/time.Second)
			return a.client.Attach(ctx, req)
		}, func(at api.Attachment) error {
			_, err := fmt.Fprintln(a.stdout, at.Device)
			return err
		}),
	}
	f := cmd.Flags()
	f.StringVar(&req.Device, "device", "", "the device to use, /dev/nbdN (default: the first free one)")
	f.IntVar(&req.Connections, "connections", 0, "sockets between the kernel and cairnd, 1 to 16 (default 2)")
	f.DurationVar(&reconnect, "reconnect-timeout", 0, "how long the device's I/O waits for a restarted cairnd before it fails (default 2m)")
	return cmd
}

func (a *app) diskDetachCmd() *cobra.Command {
	var opts api.DetachOptions
	cmd := &cobra.Command{
		Use:   "detach DEVICE|DISK[@SNAPSHOT]",
		Short: "Detach a kernel attachment: flush and disconnect /dev/nbdN (refused while it is mounted, unless --force)",
		Long: "Takes the device (/dev/nbdN or nbdN) or the export attached to it. The device's page cache is flushed,\n" +
			"then the kernel disconnects it and cairnd forgets the attachment. A device that is mounted or held open\n" +
			"is refused: unmount it first, or --force (its users then get I/O errors).",
		Example:           "  umount /mnt && cairn disk detach /dev/nbd3",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeAttachments,
		RunE: a.run(func(ctx context.Context, args []string) error {
			device, err := a.attachedDevice(ctx, args[0])
			if err != nil {
				return err
			}
			if err := a.client.Detach(ctx, device, opts); err != nil {
				return err
			}
			return a.print(map[string]string{"detached": device}, func() error {
				_, err := fmt.Fprintf(a.stdout, "detached %s\n", device)
				return err
			})
		}),
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "detach even while the device is mounted or open (its users get I/O errors)")
	return cmd
}

// attachedDevice is the device arg names: /dev/nbdN itself; the one
// device the export arg is attached as; or nbdN, unless a disk of that
// name is attached too.
func (a *app) attachedDevice(ctx context.Context, arg string) (string, error) {
	if strings.HasPrefix(arg, "/dev/") {
		return arg, nil // a disk name has no '/'
	}
	all, err := a.client.Attachments(ctx)
	if err != nil {
		return "", err
	}
	var devices []string
	for _, at := range all {
		if at.Export == arg {
			devices = append(devices, at.Device)
		}
	}
	n, err := strconv.Atoi(strings.TrimPrefix(arg, "nbd"))
	isDevice := strings.HasPrefix(arg, "nbd") && err == nil && n >= 0
	switch {
	case isDevice && len(devices) > 0:
		return "", fmt.Errorf("%s is both a device and an attached disk (as %s): say /dev/%s for the device", arg, strings.Join(devices, " and "), arg)
	case isDevice:
		return arg, nil
	case len(devices) == 1:
		return devices[0], nil
	case len(devices) == 0:
		return "", fmt.Errorf("%s is not attached (cairn disk attachments lists what is)", arg)
	}
	return "", fmt.Errorf("%s is attached as %s: name the device to detach", arg, strings.Join(devices, " and "))
}

func (a *app) diskAttachmentsCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "attachments [DISK]",
		Short:             "List kernel attachments (/dev/nbdN served by cairnd), of one disk and its snapshots with DISK",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: show(a, func(ctx context.Context, args []string) ([]api.Attachment, error) {
			all, err := a.client.Attachments(ctx)
			if err != nil || len(args) == 0 {
				return all, err
			}
			out := []api.Attachment{}
			for _, at := range all {
				if at.Disk == args[0] {
					out = append(out, at)
				}
			}
			return out, nil
		}, func(all []api.Attachment) error {
			t := a.table("DEVICE", "EXPORT", "MODE", "SIZE", "CONNECTIONS", "STATE", "SINCE")
			for _, at := range all {
				mode := "rw"
				if at.ReadOnly {
					mode = "ro"
				}
				state := at.State
				if at.Error != "" {
					state += ": " + at.Error
				}
				t.row(at.Device, at.Export, mode, api.FormatSize(at.Size), fmt.Sprintf("%d/%d", at.Connected, at.Connections),
					state, at.Created.Local().Format(time.DateTime))
			}
			return t.flush()
		}),
	}
}

// completeAttachments completes the attached devices.
func (a *app) completeAttachments(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	all, err := (&api.Client{Socket: a.socketPath()}).Attachments(cmd.Context())
	if err != nil || len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, at := range all {
		out = append(out, at.Device)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
