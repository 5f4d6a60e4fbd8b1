package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/transfer"
)

func (a *app) exportCmd() *cobra.Command {
	var out outputFlags
	var opts transfer.ExportOptions
	cmd := group(&cobra.Command{
		Use:   "export DISK[@SNAPSHOT] FILE | list [DISK]",
		Short: "Export a disk or snapshot to an image file (qcow2, vmdk, vhd, vhdx, raw); list NBD exports",
		Long: "export DISK[@SNAPSHOT] FILE writes the disk to FILE with qemu-img, as the user who runs cairn, reading only\n" +
			"allocated data from the snapshot's NBD export. A live disk is exported from a snapshot cairnd takes for it\n" +
			"(filesystem-consistent through the guest agent of the disk's machine, when it has one) and deletes afterwards.\n" +
			"--incremental-from SNAP --backing FILE0 writes a qcow2 overlay of FILE0 (the export of SNAP) holding only the\n" +
			"blocks changed since SNAP. export list shows the NBD exports (a disk named list: cairn export -- list FILE).",
		Example: "  cairn export vm1 vm1.qcow2 --compress\n" +
			"  cairn export vm1@nightly vm1.vhd --format vhd --subformat fixed --force-size\n" +
			"  cairn export vm1@monday vm1-tue.qcow2 --incremental-from sunday --backing vm1-sun.qcow2",
		ValidArgsFunction: a.completeExports,
	}, &cobra.Command{
		Use:               "list [DISK]",
		Aliases:           []string{"ls"},
		Short:             "List NBD exports with their connected clients (of one disk and its snapshots with DISK)",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: show(a, func(ctx context.Context, args []string) ([]api.Export, error) {
			if len(args) == 0 {
				return a.client.Exports(ctx)
			}
			if _, err := a.client.Disk(ctx, args[0]); err != nil {
				return nil, err
			}
			all, err := a.client.Exports(ctx)
			exports := []api.Export{}
			for _, e := range all {
				if e.Disk == args[0] {
					exports = append(exports, e)
				}
			}
			return exports, err
		},
			func(exports []api.Export) error {
				t := a.table("EXPORT", "MODE", "SIZE", "CLIENTS", "CONNECTED SINCE")
				for _, e := range exports {
					mode := "rw"
					if e.ReadOnly {
						mode = "ro"
					}
					t.row(e.Name, mode, api.FormatSize(e.Size), strconv.Itoa(len(e.Clients)), oldestClient(e.Clients))
				}
				return t.flush()
			}),
	})
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return c.Help()
		}
		return a.exportRun(&out, &opts)(c, args)
	}
	out.add(cmd)
	f := cmd.Flags()
	f.StringVar(&opts.Consistency, "consistency", "", "for a live disk: crash, filesystem or auto (default: auto for a disk of a machine with a guest agent, else crash)")
	f.StringVar(&opts.IncrementalFrom, "incremental-from", "", "an earlier snapshot: write only the blocks changed since (with --backing)")
	f.StringVar(&opts.Backing, "backing", "", "the export of --incremental-from's snapshot: the new file's backing file")
	return cmd
}

// oldestClient says since when the export has had a client.
func oldestClient(clients []api.NBDClient) string {
	if len(clients) == 0 {
		return "-"
	}
	oldest := clients[0].Since
	for _, c := range clients[1:] {
		if c.Since.Before(oldest.Time) {
			oldest = c.Since
		}
	}
	return oldest.Local().Format(time.DateTime)
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print cairn's version and, when it answers, cairnd's",
		Args:  cobra.NoArgs,
		RunE:  a.run(func(ctx context.Context, _ []string) error { return a.printVersion(ctx) }),
	}
}

// versions is what cairn version prints with -o json.
type versions struct {
	CLI    string `json:"cli"`
	Daemon string `json:"daemon,omitempty"` // empty when cairnd did not answer
	Error  string `json:"daemon_error,omitempty"`
}

// printVersion prints cairn's version and cairnd's, or why cairnd's is
// unknown (that is no failure: the CLI's version is still true).
func (a *app) printVersion(ctx context.Context) error {
	v := versions{CLI: version}
	if a.client == nil {
		a.client = &api.Client{Socket: a.socketPath()}
	}
	if info, err := a.client.Info(ctx); err == nil {
		v.Daemon = info.Version
	} else {
		v.Error = err.Error()
	}
	return a.print(v, func() error {
		fmt.Fprintf(a.stdout, "cairn %s\n", v.CLI)
		if v.Daemon != "" {
			fmt.Fprintf(a.stdout, "cairnd %s\n", v.Daemon)
		} else {
			fmt.Fprintf(a.stdout, "cairnd: unknown (%s)\n", v.Error)
		}
		return nil
	})
}

func (a *app) infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show cairnd's version, uptime, data directory, sockets and the store's free space",
		Args:  cobra.NoArgs,
		RunE:  show(a, func(ctx context.Context, _ []string) (api.Info, error) { return a.client.Info(ctx) }, a.printInfo),
	}
}

// printInfo prints cairnd's info as key/value lines.
func (a *app) printInfo(info api.Info) error {
	t := a.table()
	t.row("Version:", info.Version)
	t.row("PID:", strconv.Itoa(info.PID))
	t.row("Uptime:", (time.Duration(info.UptimeSeconds) * time.Second).String())
	t.row("Data directory:", info.DataDir)
	t.row("API socket:", info.APISocket)
	t.row("NBD socket:", info.NBDSocket)
	if info.MetricsListen != "" {
		t.row("Metrics:", "http://"+info.MetricsListen+"/metrics")
	}
	if info.NBDListen != "" {
		t.row("NBD TCP:", info.NBDListen)
	}
	t.row("Disks:", fmt.Sprint(info.Disks))
	sp := info.Store
	t.row("Store space:", fmt.Sprintf("%s: %s free, reserve %s of %s held, snapshots stop below %s free",
		sp.State, formatBytes(sp.FreeBytes), formatBytes(sp.ReserveHeldBytes), formatBytes(sp.ReserveBytes), formatBytes(sp.StopBelowBytes)))
	if err := t.flush(); err != nil {
		return err
	}
	for _, w := range []string{sp.Broken, sp.Warning} {
		if w != "" {
			fmt.Fprintf(a.stderr, "cairn: warning: %s\n", w)
		}
	}
	return nil
}
