package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) exportCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "export",
		Short: "NBD exports and their connected clients",
	}, &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List NBD exports with their connected clients",
		Args:    cobra.NoArgs,
		RunE: a.run(func(ctx context.Context, args []string) error {
			exports, err := a.client.Exports(ctx)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(exports)
			}
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
}

// oldestClient says since when the export has had a client.
func oldestClient(clients []api.NBDClient) string {
	if len(clients) == 0 {
		return "-"
	}
	oldest := clients[0].Since
	for _, c := range clients[1:] {
		if c.Since.Before(oldest) {
			oldest = c.Since
		}
	}
	return oldest.Local().Format(time.DateTime)
}

func (a *app) infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show cairnd's version, uptime, data directory, sockets and the store's free space",
		Args:  cobra.NoArgs,
		RunE: a.run(func(ctx context.Context, args []string) error {
			info, err := a.client.Info(ctx)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(info)
			}
			t := a.table()
			t.row("Version:", info.Version)
			t.row("PID:", strconv.Itoa(info.PID))
			t.row("Uptime:", (time.Duration(info.UptimeSeconds) * time.Second).String())
			t.row("Data directory:", info.DataDir)
			t.row("API socket:", info.APISocket)
			t.row("NBD socket:", info.NBDSocket)
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
		}),
	}
}
