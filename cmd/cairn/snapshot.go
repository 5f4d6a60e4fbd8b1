package main

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) snapshotCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snap"},
		Short:   "Take, list, show, delete and roll back to snapshots; changed blocks; chain capacity",
		Long: "A snapshot is a crash-consistent, read-only point in time of one disk (docs/snapshots.md).\n" +
			"It is also an NBD export, DISK@SNAPSHOT.",
	}, a.snapshotCreateCmd(), a.snapshotListCmd(), a.snapshotShowCmd(), a.snapshotDeleteCmd(),
		a.snapshotRollbackCmd(), a.snapshotDiffCmd(), a.snapshotCapacityCmd())
}

func (a *app) snapshotCreateCmd() *cobra.Command {
	var req api.CreateSnapshotRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "create DISK NAME",
		Short: "Take a snapshot; it is copied into the store in the background (--wait follows it until ready)",
		Long: "Takes a crash-consistent snapshot of DISK at once: it holds every write acknowledged before\n" +
			"this command and none issued after. The snapshot starts 'copying' and becomes 'ready' when its\n" +
			"changed blocks are in the store. NAME is 2 to 128 characters of ASCII letters, digits and . _ - : +,\n" +
			"not starting with 'auto' (kept for automatic snapshots) nor http:// or https://.",
		Example: "  cairn snapshot create vm1-root before-upgrade --description 'kernel 6.12'\n" +
			"  cairn snapshot create vm1-root nightly-2026-11-23 --wait",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeDisks,
		RunE: show(a, func(ctx context.Context, args []string) (api.Snapshot, error) {
			req.Name = args[1]
			snap, err := a.client.CreateSnapshot(ctx, args[0], req)
			if err != nil || !wait {
				return snap, err
			}
			return a.waitSnapshot(ctx, snap)
		}, a.printSnapshot),
	}
	cmd.Flags().StringVar(&req.Description, "description", "", "free text kept with the snapshot")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the copy with a progress bar until the snapshot is ready (exit 1 if it fails)")
	return cmd
}

// waitSnapshot follows a copying snapshot until it is ready, and returns
// it as it ended; a failed snapshot is an error stating its reason.
func (a *app) waitSnapshot(ctx context.Context, snap api.Snapshot) (api.Snapshot, error) {
	return follow(ctx, a, "snapshot "+snap.Export, "cairn snapshot show "+snap.Disk+" "+snap.Name, snap,
		func(ctx context.Context) (api.Snapshot, error) { return a.client.Snapshot(ctx, snap.Disk, snap.Name) }, snapshotStatus)
}

// snapshotStatus is a snapshot's copy-out as a display sees it: its
// bytes are the blocks changed in the epoch it sealed.
func snapshotStatus(snap api.Snapshot) status {
	s := status{state: workRunning, percent: snap.Progress, totalBytes: snap.WrittenBytes,
		doneBytes: uint64(snap.Progress / 100 * float64(snap.WrittenBytes))}
	switch snap.State {
	case api.SnapshotReady:
		s.state = workDone
	case api.SnapshotFailed:
		s.state = workFailed
		s.err = fmt.Errorf("snapshot %s failed: %s", snap.Export, orNoReason(snap.Reason))
	case api.SnapshotDeleting:
		s.state = workFailed
		s.err = fmt.Errorf("snapshot %s is being deleted", snap.Export)
	}
	return s
}

func orNoReason(reason string) string {
	if reason == "" {
		return "no reason given (see cairnd's log)"
	}
	return reason
}

func (a *app) snapshotListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list DISK",
		Aliases: []string{"ls"},
		Short:   "List a disk's snapshots, oldest first",
		Long: "WRITTEN is what the snapshot holds itself: the blocks changed since the snapshot before it. UNIQUE is what\nonly it holds: what deleting it frees now (uncompressed). HOLD is how long guest writes waited while it was taken.\n" +
			"EXPIRES is when a policy deletes an automatic snapshot (never: kept until deleted by hand).",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: show(a, func(ctx context.Context, args []string) ([]api.Snapshot, error) {
			return a.client.Snapshots(ctx, args[0])
		},
			func(snaps []api.Snapshot) error {
				t := a.table("NAME", "CREATED", "STATE", "PROGRESS", "KIND", "EXPIRES", "WRITTEN", "UNIQUE", "HOLD")
				for _, s := range snaps {
					t.row(s.Name, s.Created.Local().Format(time.DateTime), s.State, snapshotProgress(s), s.Kind, expiresText(s.Kind, s.Expires),
						formatBytes(s.WrittenBytes), formatBytes(s.UniqueBytes), formatHold(s.HoldMicros))
				}
				return t.flush()
			}),
	}
}

func snapshotProgress(s api.Snapshot) string {
	switch s.State {
	case api.SnapshotReady:
		return "100%"
	case api.SnapshotCopying:
		return fmt.Sprintf("%.0f%%", s.Progress)
	}
	return "-"
}

// formatHold writes a write hold's duration at a useful precision.
func formatHold(us float64) string {
	switch {
	case us < 10:
		return fmt.Sprintf("%.1fµs", us)
	case us < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case us < 1e6:
		return fmt.Sprintf("%.2fms", us/1e3)
	}
	return fmt.Sprintf("%.2fs", us/1e6)
}

func formatBytes(n uint64) string { return api.FormatSize(int64(n)) }

func (a *app) snapshotShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "show DISK NAME",
		Short:             "Show one snapshot",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSnapshots,
		RunE: show(a, func(ctx context.Context, args []string) (api.Snapshot, error) {
			return a.client.Snapshot(ctx, args[0], args[1])
		}, a.printSnapshot),
	}
}

// printSnapshot prints one snapshot as key/value lines.
func (a *app) printSnapshot(s api.Snapshot) error {
	t := a.table()
	t.row("Name:", s.Name)
	t.row("Disk:", s.Disk)
	t.row("Sequence:", strconv.FormatUint(s.Seq, 10))
	t.row("Kind:", s.Kind)
	if s.Policy != "" {
		t.row("Policy:", s.Policy)
		t.row("Retention:", retentionText(s.RetentionDays)+", expires "+expiresText(s.Kind, s.Expires))
	}
	state := s.State
	if s.State == api.SnapshotCopying {
		state += fmt.Sprintf(" (%.1f%%)", s.Progress)
	}
	t.row("State:", state)
	if s.Reason != "" {
		t.row("Reason:", s.Reason)
	}
	if s.Description != "" {
		t.row("Description:", s.Description)
	}
	t.row("Created:", s.Created.Local().Format(time.RFC3339))
	t.row("Disk size:", fmt.Sprintf("%s (%d bytes)", api.FormatSize(s.Size), s.Size))
	t.row("Written:", formatBytes(s.WrittenBytes)+" (changed since the snapshot before it)")
	t.row("Unique:", fmt.Sprintf("%s (%s stored; what deleting it frees)", formatBytes(s.UniqueBytes), formatBytes(s.UniqueStoredBytes)))
	t.row("Write hold:", formatHold(s.HoldMicros))
	t.row("Drain:", formatHold(s.DrainMicros)+" (writes in flight at the seal finishing)")
	t.row("Export:", s.Export+" (read-only)")
	t.row("Clients:", strconv.Itoa(len(s.Clients)))
	return t.flush()
}

func (a *app) snapshotDeleteCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete DISK NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot: merged into its successor, freeing only what nothing else holds",
		Long: "Deletes any snapshot of the chain, first, middle or last. Its blocks that a later snapshot still\n" +
			"needs pass to it; the rest are freed. Only metadata changes, so it takes the same time whatever\n" +
			"the chain's length. Refused while NBD clients read DISK@NAME or it is attached as /dev/nbdN, unless\n" +
			"--force disconnects the clients and detaches the devices.",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSnapshots,
		RunE: a.run(func(ctx context.Context, args []string) error {
			res, err := a.client.DeleteSnapshot(ctx, args[0], args[1], force)
			if err != nil {
				return err
			}
			return a.print(res, func() error {
				_, err := fmt.Fprintf(a.stdout, "deleted snapshot %s@%s, freed %s (%d bytes; %s stored)\n", args[0], args[1],
					formatBytes(res.FreedBytes), res.FreedBytes, formatBytes(res.FreedStoredBytes))
				return err
			})
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect NBD clients reading the snapshot and detach its kernel attachments first")
	return cmd
}

func (a *app) snapshotRollbackCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rollback DISK NAME",
		Short: "Roll a disk back to a snapshot, writing back only the blocks that differ",
		Long: "Makes DISK read exactly as snapshot NAME does. Refused while an NBD client is connected to the\n" +
			"live disk or it is attached as /dev/nbdN, unless --force disconnects the client and detaches the\n" +
			"device. Later snapshots stay. The command follows the rollback\n" +
			"task with a progress bar; Ctrl-C stops following, not the rollback (cairn task wait ID).",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSnapshots,
		RunE: show(a, func(ctx context.Context, args []string) (api.Task, error) {
			task, err := a.client.Rollback(ctx, args[0], args[1], force)
			if err != nil {
				return task, err
			}
			return a.followTask(ctx, task)
		}, func(task api.Task) error {
			_, err := fmt.Fprintf(a.stdout, "rolled back %s to snapshot %s\n", task.Disk, task.Target)
			return err
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect NBD clients of the live disk and detach its kernel attachments first")
	return cmd
}

func (a *app) snapshotDiffCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "diff DISK FROM [TO]",
		Short: "List the byte ranges changed after snapshot FROM, up to snapshot TO or the live disk",
		Long: "What a backup tool copies for an incremental backup: the extents changed after FROM, up to TO\n" +
			"(default: the live disk, as it is now). Offsets and lengths are in bytes, whole blocks.\n" +
			"NBD clients see the same as the meta context qemu:dirty-bitmap:FROM (docs/snapshots.md).",
		Example: "  cairn snapshot diff vm1-root monday tuesday\n" +
			"  cairn snapshot diff vm1-root monday -o json | jq '.extents[]'",
		Args:              cobra.RangeArgs(2, 3),
		ValidArgsFunction: a.completeSnapshots,
		RunE: show(a, func(ctx context.Context, args []string) (api.Changes, error) {
			to := ""
			if len(args) == 3 {
				to = args[2]
			}
			return a.client.Changes(ctx, args[0], args[1], to)
		}, a.printChanges),
	}
}

// printChanges prints changed extents as a table and their total.
func (a *app) printChanges(ch api.Changes) error {
	t := a.table("OFFSET", "LENGTH")
	for _, e := range ch.Extents {
		t.row(strconv.FormatInt(e.Offset, 10), strconv.FormatInt(e.Length, 10))
	}
	if err := t.flush(); err != nil {
		return err
	}
	to := cmp.Or(ch.To, "live")
	_, err := fmt.Fprintf(a.stdout, "total: %s (%d bytes) in %d extents changed from %s to %s, of %s\n",
		api.FormatSize(ch.ChangedBytes), ch.ChangedBytes, len(ch.Extents), ch.From, to, api.FormatSize(ch.Size))
	return err
}

func (a *app) snapshotCapacityCmd() *cobra.Command {
	var history bool
	var machine, since string
	cmd := &cobra.Command{
		Use:   "capacity [DISK] [--history [--since DURATION]] [--machine MACHINE]",
		Short: "Show a disk's snapshot chain capacity, or every chain's and the store's; --history over time",
		Long: "Without --history: the capacity now. With it: the samples cairnd takes every capacity_interval\n" +
			"(hourly by default, kept capacity_history) of DISK's chain, of --machine's disks, or of the whole\n" +
			"store, as a chart of stored bytes and a table of the newest samples (-o json: every sample).",
		Example:           "  cairn snapshot capacity vm1-root --history\n  cairn snapshot capacity --history --since 168h\n  cairn snapshot capacity --machine db --history",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: a.run(func(ctx context.Context, args []string) error {
			if machine != "" && len(args) == 1 {
				return fmt.Errorf("give DISK or --machine, not both")
			}
			if history || machine != "" || since != "" {
				return a.printHistory(ctx, args, machine, since)
			}
			if len(args) == 1 {
				c, err := a.client.ChainCapacity(ctx, args[0])
				if err != nil {
					return err
				}
				return a.print(c, func() error { return a.printChainCapacity(c) })
			}
			c, err := a.client.Capacity(ctx)
			if err != nil {
				return err
			}
			return a.print(c, func() error { return a.printCapacity(c) })
		}),
	}
	cmd.Flags().BoolVar(&history, "history", false, "show the capacity samples over time")
	cmd.Flags().StringVar(&machine, "machine", "", "with --history: a machine's (the sum of its disks')")
	cmd.Flags().StringVar(&since, "since", "", "with --history: only samples this recent (a duration such as 24h or 168h, or an RFC 3339 time)")
	cmd.RegisterFlagCompletionFunc("machine", a.completeMachines)
	return cmd
}

// printHistory prints capacity samples as a chart and a table.
func (a *app) printHistory(ctx context.Context, args []string, machine, since string) error {
	kind, name, what := "store", "", "the store"
	switch {
	case len(args) == 1:
		kind, name, what = api.TargetDisk, args[0], "disk "+args[0]+"'s chain"
	case machine != "":
		kind, name, what = api.TargetMachine, machine, "machine "+machine+"'s disks"
	}
	var from api.Time
	if since != "" {
		if d, err := time.ParseDuration(since); err == nil {
			from = api.At(time.Now().Add(-d))
		} else if t, err := time.Parse(time.RFC3339, since); err == nil {
			from = api.At(t)
		} else {
			return fmt.Errorf("invalid --since %q: give a duration such as 24h or an RFC 3339 time", since)
		}
	}
	h, err := a.client.CapacityHistory(ctx, kind, name, from, api.Time{})
	if err != nil {
		return err
	}
	return a.print(h, func() error {
		var times []time.Time
		var stored []uint64
		for _, s := range h.Samples {
			times = append(times, s.Time.Time)
			stored = append(stored, s.StoredBytes)
		}
		fmt.Fprintf(a.stdout, "Stored bytes of %s, %d samples every %v:\n", what, len(h.Samples), time.Duration(h.Interval)*time.Second)
		if err := chart(a.stdout, times, stored, 60, 8); err != nil || len(h.Samples) == 0 {
			return err
		}
		fmt.Fprintln(a.stdout)
		t := a.table("TIME", "SNAPSHOTS", "LOGICAL", "UNIQUE", "STORED")
		for _, s := range h.Samples[max(len(h.Samples)-10, 0):] {
			t.row(s.Time.Local().Format("2006-01-02 15:04"), strconv.Itoa(s.Snapshots), formatBytes(s.LogicalBytes), formatBytes(s.UniqueBytes), formatBytes(s.StoredBytes))
		}
		return t.flush()
	})
}

// printCapacity prints every chain's capacity and the store's.
func (a *app) printCapacity(c api.Capacity) error {
	t := a.table("DISK", "SNAPSHOTS", "QUOTA", "STORED", "UNCOMPRESSED", "ENTRIES")
	for _, ch := range c.Chains {
		t.row(ch.Disk, strconv.Itoa(ch.Snapshots), strconv.Itoa(ch.Quota), formatBytes(ch.StoredBytes), formatBytes(ch.UncompressedBytes),
			strconv.FormatUint(ch.Entries, 10))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	return a.printStoreStats(c.Store)
}

func (a *app) printChainCapacity(c api.ChainCapacity) error {
	t := a.table()
	t.row("Disk:", c.Disk)
	t.row("Snapshots:", fmt.Sprintf("%d of %d", c.Snapshots, c.Quota))
	t.row("Stored:", fmt.Sprintf("%s (%s uncompressed; chunks shared with other disks counted in full)", formatBytes(c.StoredBytes), formatBytes(c.UncompressedBytes)))
	t.row("Entries:", strconv.FormatUint(c.Entries, 10))
	if err := t.flush(); err != nil {
		return err
	}
	if len(c.PerSnapshot) == 0 {
		return nil
	}
	fmt.Fprintln(a.stdout)
	t = a.table("SNAPSHOT", "STATE", "WRITTEN", "UNIQUE", "UNIQUE STORED")
	for _, s := range c.PerSnapshot {
		t.row(s.Name, s.State, formatBytes(s.WrittenBytes), formatBytes(s.UniqueBytes), formatBytes(s.UniqueStoredBytes))
	}
	return t.flush()
}

// completeSnapshots completes DISK, then NAME (and TO) with the disk's
// snapshots.
func (a *app) completeSnapshots(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return a.completeDisks(cmd, args, toComplete)
	}
	if len(args) > 2 || len(args) == 2 && cmd.Name() != "diff" {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	client := &api.Client{Socket: a.socketPath()}
	snaps, err := client.Snapshots(cmd.Context(), args[0])
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(snaps))
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// expiresText is when an automatic snapshot expires.
func expiresText(kind string, expires *api.Time) string {
	switch {
	case kind != api.SnapshotAuto:
		return "-"
	case expires == nil:
		return "never"
	}
	return expires.Local().Format(time.DateTime)
}
