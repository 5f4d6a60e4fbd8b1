package main

import (
	"cmp"
	"context"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) eventsCmd() *cobra.Command {
	var f api.EventFilter
	var follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "The events log: what policies did (runs, skips, missed points, deletions, failures)",
		Long: "Events, oldest first: the newest --limit, or with --since ID those after that event. Kinds: taken,\n" +
			"skipped, missed, failed, expired, evicted, kept, dropped (docs/policies.md). --follow keeps printing new\n" +
			"events until interrupted. Events are kept for event_history.",
		Example: "  cairn events --policy nightly\n  cairn events --kind failed --since 120\n  cairn events --follow",
		Args:    cobra.NoArgs,
		RunE: a.run(func(ctx context.Context, _ []string) error {
			events, err := a.client.Events(ctx, f)
			if err != nil {
				return err
			}
			if err := a.printEvents(events, true); err != nil || !follow {
				return err
			}
			for {
				if len(events) > 0 {
					f.Since = events[len(events)-1].ID
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(cmp.Or(a.poll, time.Second)):
				}
				if events, err = a.client.Events(ctx, f); err != nil {
					return err
				}
				if err := a.printEvents(events, false); err != nil {
					return err
				}
			}
		}),
	}
	fl := cmd.Flags()
	fl.Uint64Var(&f.Since, "since", 0, "only events after this event id")
	fl.IntVar(&f.Limit, "limit", 0, "at most this many (default 100)")
	fl.StringVar(&f.Kind, "kind", "", "only events of this kind")
	fl.StringVar(&f.Policy, "policy", "", "only events of this policy")
	fl.StringVar(&f.Disk, "disk", "", "only events about this disk")
	fl.StringVar(&f.Machine, "machine", "", "only events about this machine")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{api.EventTaken, api.EventSkipped, api.EventMissed,
		api.EventFailed, api.EventExpired, api.EventEvicted, api.EventKept, api.EventDropped}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("policy", a.completePolicies)
	cmd.RegisterFlagCompletionFunc("disk", a.completeDisks)
	cmd.RegisterFlagCompletionFunc("machine", a.completeMachines)
	return cmd
}

// printEvents prints events: a JSON array (one per line when following)
// or table rows, with the header when header is set.
func (a *app) printEvents(events []api.Event, header bool) error {
	if a.output == "json" {
		if !header && len(events) == 0 {
			return nil
		}
		return a.printJSON(events)
	}
	var t *table
	if header {
		t = a.table("ID", "TIME", "KIND", "POLICY", "TARGET", "MESSAGE")
	} else {
		t = a.table()
	}
	for _, e := range events {
		target := e.Disk
		if e.Machine != "" {
			target = "machine/" + e.Machine
		}
		t.row(strconv.FormatUint(e.ID, 10), e.Time.Local().Format(time.DateTime), e.Kind, orDash(e.Policy), orDash(target), e.Message)
	}
	return t.flush()
}
