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
		RunE: show(a, func(ctx context.Context, _ []string) ([]api.Export, error) { return a.client.Exports(ctx) },
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

func (a *app) infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show cairnd's version, uptime, data directory and sockets",
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
	if info.NBDListen != "" {
		t.row("NBD TCP:", info.NBDListen)
	}
	t.row("Disks:", fmt.Sprint(info.Disks))
	return t.flush()
}
