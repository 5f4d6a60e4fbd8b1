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
	if info.MetricsListen != "" {
		t.row("Metrics:", "http://"+info.MetricsListen+"/metrics")
	}
	if info.NBDListen != "" {
		t.row("NBD TCP:", info.NBDListen)
	}
	t.row("Disks:", fmt.Sprint(info.Disks))
	return t.flush()
}
