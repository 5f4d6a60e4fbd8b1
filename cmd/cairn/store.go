package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) verifyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "verify [DISK]",
		Short: "Check the store: every chunk's hash, every reference count (exit 1 when a fault is found)",
		Long: "Re-hashes every chunk and checks every reference count against the chain entries, for the\n" +
			"whole store or only what DISK's chain references. Follows the verify task with a progress bar\n" +
			"and prints the faults. Exit 0: no fault; exit 1: faults found (or verify could not run).",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completeDisks,
		RunE: a.run(func(ctx context.Context, args []string) error {
			var req api.VerifyRequest
			if len(args) == 1 {
				req.Disk = args[0]
			}
			task, err := a.client.Verify(ctx, req)
			if err != nil {
				return err
			}
			if task, err = a.followTask(ctx, task); err != nil {
				return err
			}
			err = a.print(task, func() error {
				res, err := verifyResult(task)
				if err == nil {
					a.printVerifyResult(res)
				}
				return err
			})
			if err != nil {
				return err
			}
			return taskFaults(task)
		}),
	}
}

// printVerifyResult prints what a verify checked and each fault found.
func (a *app) printVerifyResult(r api.VerifyResult) {
	verdict := "no faults"
	if len(r.Faults) > 0 {
		verdict = fmt.Sprintf("%d fault(s):", len(r.Faults))
	}
	fmt.Fprintf(a.stdout, "checked %d chunks and %d entries: %s\n", r.ChunksChecked, r.EntriesChecked, verdict)
	for _, f := range r.Faults {
		fmt.Fprintf(a.stdout, "  %s\n", f)
	}
}

func (a *app) storeCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "store",
		Short: "The chunk store that holds every snapshot",
	}, &cobra.Command{
		Use:   "stats",
		Short: "Show the store's logical, stored and reclaimable bytes, and its dedup and compression ratios",
		Args:  cobra.NoArgs,
		RunE:  show(a, func(ctx context.Context, _ []string) (api.StoreStats, error) { return a.client.StoreStats(ctx) }, a.printStoreStats),
	})
}

func (a *app) printStoreStats(s api.StoreStats) error {
	t := a.table()
	t.row("Chunks:", strconv.FormatUint(s.Chunks, 10))
	t.row("Logical:", formatBytes(s.LogicalBytes)+" (every snapshot's blocks, before dedup and compression)")
	t.row("Unique:", formatBytes(s.UniqueBytes)+" (after dedup"+ratio(s.LogicalBytes, s.UniqueBytes)+")")
	t.row("Stored:", formatBytes(s.StoredBytes)+" (after compression"+ratio(s.UniqueBytes, s.StoredBytes)+")")
	t.row("Reclaimable:", formatBytes(s.ReclaimBytes)+" (freed, given back to the filesystem in the background)")
	t.row("On disk:", formatBytes(s.DiskBytes))
	t.row("Entries:", fmt.Sprintf("%d data, %d zero", s.DataEntries, s.ZeroEntries))
	return t.flush()
}

// ratio writes ", 2.50x" for before/after, or nothing when after is 0.
func ratio(before, after uint64) string {
	if after == 0 {
		return ""
	}
	return fmt.Sprintf(", %.2fx", float64(before)/float64(after))
}
