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

func (a *app) policyCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "policy",
		Short: "Automatic snapshot policies: create, list, show, set, delete, apply, remove",
		Long: "A policy takes automatic snapshots of the disks and machines it is applied to, at its time points\n" +
			"(times of day or a step of minutes, on chosen weekdays, in a time zone), and deletes each when its\n" +
			"retention ends (docs/policies.md). Its snapshots are named auto-POLICY-TIME; manual snapshot names\n" +
			"may not start with auto. A disk or machine has at most one policy.",
	}, a.policyCreateCmd(), a.policyListCmd(), a.policyShowCmd(), a.policySetCmd(), a.policyDeleteCmd(),
		a.policyTargetsCmd("apply"), a.policyTargetsCmd("remove"))
}

// policyFlags are the fields create and set share, as flags.
type policyFlags struct {
	times, weekdays          []string
	every, retention         string
	zone, consistency, descr string
}

func (f *policyFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.times, "times", nil, "local times of day, HH:MM, comma-separated (02:00,14:00)")
	fl.StringVar(&f.every, "every", "", "instead of --times: a step from 00:00, such as 15m or 2h (1m to 12h, whole minutes)")
	fl.StringSliceVar(&f.weekdays, "weekdays", nil, "days it runs on: mon,tue,wed,thu,fri,sat,sun (default every day)")
	fl.StringVar(&f.retention, "retention", "", "days to keep each snapshot, 1 to 65536, or forever (default 30)")
	fl.StringVar(&f.zone, "time-zone", "", "IANA time zone of the times, such as Europe/Berlin or UTC (default the host's)")
	fl.StringVar(&f.consistency, "consistency", "", "of machine snapshots: crash, filesystem or auto (default auto)")
	fl.StringVar(&f.descr, "description", "", "free text kept with the policy")
	cmd.RegisterFlagCompletionFunc("consistency", cobra.FixedCompletions([]string{"auto", "filesystem", "crash"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("weekdays", cobra.FixedCompletions([]string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("retention", cobra.FixedCompletions([]string{"7", "30", "90", "forever"}, cobra.ShellCompDirectiveNoFileComp))
}

// everyMinutes parses --every: a duration of whole minutes.
func everyMinutes(s string) (int, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if n, nerr := strconv.Atoi(s); nerr == nil {
			return n, nil // a bare number is minutes
		}
		return 0, fmt.Errorf("invalid --every %q: give a duration such as 15m or 2h", s)
	}
	if d%time.Minute != 0 || d <= 0 {
		return 0, fmt.Errorf("invalid --every %q: a step is a whole number of minutes", s)
	}
	return int(d / time.Minute), nil
}

// retentionDays parses --retention: days, or forever.
func retentionDays(s string) (int, error) {
	if strings.EqualFold(s, "forever") {
		return api.RetentionForever, nil
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(s, "d"), " days"))
	if err != nil {
		return 0, fmt.Errorf("invalid --retention %q: give a number of days (1 to 65536) or forever", s)
	}
	return n, nil
}

func (a *app) policyCreateCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "create NAME (--times HH:MM,... | --every DURATION)",
		Short: "Create a policy (it applies to nothing until cairn policy apply)",
		Long: "Times are the time zone's wall-clock times. A time that does not exist on a day (the spring\n" +
			"daylight-saving gap) runs at the first instant after the gap; one that happens twice runs once, the\n" +
			"first time. Use --time-zone UTC for steps that must never skip (docs/policies.md).",
		Example: "  cairn policy create nightly --times 02:00 --retention 7 --time-zone Europe/Berlin\n" +
			"  cairn policy create rpo15 --every 15m --weekdays mon,tue,wed,thu,fri --retention 2",
		Args: cobra.ExactArgs(1),
		RunE: show(a, func(ctx context.Context, args []string) (api.Policy, error) {
			req := api.CreatePolicyRequest{Name: args[0], Times: f.times, Weekdays: f.weekdays, TimeZone: f.zone,
				Consistency: f.consistency, Description: f.descr}
			var err error
			if f.every != "" {
				if req.EveryMinutes, err = everyMinutes(f.every); err != nil {
					return api.Policy{}, err
				}
			}
			if f.retention != "" {
				days, err := retentionDays(f.retention)
				if err != nil {
					return api.Policy{}, err
				}
				req.RetentionDays = &days
			}
			return a.client.CreatePolicy(ctx, req)
		}, a.printPolicy),
	}
	f.add(cmd)
	return cmd
}

func (a *app) policySetCmd() *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "set NAME [flags]",
		Short: "Change a policy: the flags given replace its fields",
		Long: "A new schedule counts from now (its points before the change are not due). A new --retention\n" +
			"applies to the snapshots the policy already took as well.",
		Example:           "  cairn policy set nightly --retention 14\n  cairn policy set rpo15 --every 10m",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completePolicies,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.UpdatePolicyRequest{}
			fl := cmd.Flags()
			if fl.Changed("times") {
				req.Times = &f.times
			}
			if fl.Changed("every") {
				n, err := everyMinutes(f.every)
				if err != nil {
					return err
				}
				req.EveryMinutes = &n
			}
			if fl.Changed("weekdays") {
				req.Weekdays = &f.weekdays
			}
			if fl.Changed("retention") {
				days, err := retentionDays(f.retention)
				if err != nil {
					return err
				}
				req.RetentionDays = &days
			}
			if fl.Changed("time-zone") {
				req.TimeZone = &f.zone
			}
			if fl.Changed("consistency") {
				req.Consistency = &f.consistency
			}
			if fl.Changed("description") {
				req.Description = &f.descr
			}
			if req == (api.UpdatePolicyRequest{}) {
				return fmt.Errorf("nothing to change: give at least one of --times, --every, --weekdays, --retention, --time-zone, --consistency, --description")
			}
			return show(a, func(ctx context.Context, args []string) (api.Policy, error) {
				return a.client.UpdatePolicy(ctx, args[0], req)
			}, a.printPolicy)(cmd, args)
		},
	}
	f.add(cmd)
	return cmd
}

func (a *app) policyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List policies with their schedule, retention, targets and next run",
		Args:    cobra.NoArgs,
		RunE: show(a, func(ctx context.Context, _ []string) ([]api.Policy, error) { return a.client.Policies(ctx) },
			func(ps []api.Policy) error {
				t := a.table("NAME", "SCHEDULE", "RETENTION", "TIME ZONE", "TARGETS", "NEXT RUN")
				for _, p := range ps {
					var targets []string
					for _, tg := range p.Targets {
						targets = append(targets, targetName(tg))
					}
					next := "-"
					if p.NextRun != nil {
						next = p.NextRun.Local().Format(time.DateTime)
					}
					t.row(p.Name, scheduleText(p), retentionText(p.RetentionDays), p.TimeZone, orDash(strings.Join(targets, ",")), next)
				}
				return t.flush()
			}),
	}
}

func (a *app) policyShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a policy and each target's last and next time points",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completePolicies,
		RunE:              show(a, func(ctx context.Context, args []string) (api.Policy, error) { return a.client.Policy(ctx, args[0]) }, a.printPolicy),
	}
}

func (a *app) policyDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete a policy; the snapshots it took stay, and are deleted when their retention ends",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completePolicies,
		RunE: a.run(func(ctx context.Context, args []string) error {
			if err := a.client.DeletePolicy(ctx, args[0]); err != nil {
				return err
			}
			if a.output == "json" {
				return a.printJSON(map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(a.stdout, "Deleted policy %s\n", args[0])
			return nil
		}),
	}
}

// policyTargetsCmd is apply or remove.
func (a *app) policyTargetsCmd(verb string) *cobra.Command {
	var machines []string
	short := "Apply a policy to disks and machines (replacing the policy each had)"
	long := "A disk or a machine has at most one policy. A machine's policy takes machine snapshots: every disk\n" +
		"at one instant, with the policy's --consistency. The first run is the policy's first time point from now."
	if verb == "remove" {
		short = "Remove a policy from disks and machines; the snapshots it took stay"
		long = "The snapshots the policy took of them stay, and are deleted when their retention ends."
	}
	cmd := &cobra.Command{
		Use:               verb + " POLICY [DISK...] [--machine MACHINE]...",
		Short:             short,
		Long:              long,
		Example:           "  cairn policy " + verb + " nightly vm1-root vm1-data\n  cairn policy " + verb + " nightly --machine db",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: a.completePolicyThenDisks,
		RunE: show(a, func(ctx context.Context, args []string) (api.Policy, error) {
			req := api.PolicyTargetsRequest{Disks: args[1:], Machines: machines}
			if len(req.Disks) == 0 && len(req.Machines) == 0 {
				return api.Policy{}, fmt.Errorf("name at least one DISK or --machine")
			}
			if verb == "remove" {
				return a.client.RemovePolicy(ctx, args[0], req)
			}
			return a.client.ApplyPolicy(ctx, args[0], req)
		}, a.printPolicy),
	}
	cmd.Flags().StringSliceVar(&machines, "machine", nil, "a machine (repeat or comma-separate for several)")
	cmd.RegisterFlagCompletionFunc("machine", a.completeMachines)
	return cmd
}

// printPolicy shows a policy and its targets' next runs.
func (a *app) printPolicy(p api.Policy) error {
	t := a.table()
	t.row("Name:", p.Name)
	if p.Description != "" {
		t.row("Description:", p.Description)
	}
	t.row("Schedule:", scheduleText(p))
	t.row("Time zone:", p.TimeZone)
	t.row("Retention:", retentionText(p.RetentionDays))
	t.row("Machine snapshots:", p.Consistency+" consistency")
	t.row("Created:", p.Created.Local().Format(time.RFC3339))
	if err := t.flush(); err != nil {
		return err
	}
	if len(p.Targets) == 0 {
		fmt.Fprintf(a.stdout, "\nApplied to nothing (cairn policy apply %s DISK...).\n", p.Name)
		return nil
	}
	fmt.Fprintln(a.stdout)
	tt := a.table("TARGET", "LAST POINT", "RESULT", "NEXT RUNS")
	for _, tg := range p.Targets {
		last := "-"
		if tg.LastPoint != nil {
			last = tg.LastPoint.In(time.Local).Format(time.DateTime)
		}
		var next []string
		for _, n := range tg.NextRuns {
			next = append(next, n.In(time.Local).Format("01-02 15:04"))
		}
		tt.row(targetName(tg), last, orDash(tg.LastResult), orDash(strings.Join(next, ", ")))
	}
	return tt.flush()
}

func targetName(tg api.PolicyTarget) string {
	if tg.Kind == api.TargetMachine {
		return "machine/" + tg.Name
	}
	return tg.Name
}

// scheduleText writes a policy's schedule in words.
func scheduleText(p api.Policy) string {
	when := "at " + strings.Join(p.Times, ",")
	if p.EveryMinutes > 0 {
		when = "every " + (time.Duration(p.EveryMinutes) * time.Minute).String()
		when = strings.TrimSuffix(strings.TrimSuffix(when, "0s"), "0m")
	}
	days := strings.Join(p.Weekdays, ",")
	if len(p.Weekdays) == 7 {
		days = "every day"
	}
	return when + ", " + days
}

func retentionText(days int) string {
	if days == api.RetentionForever {
		return "forever"
	}
	if days == 1 {
		return "1 day"
	}
	return strconv.Itoa(days) + " days"
}

func (a *app) completePolicies(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ps, err := (&api.Client{Socket: a.socketPath()}).Policies(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(ps))
	for _, p := range ps {
		names = append(names, p.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completePolicyThenDisks completes POLICY, then DISKs.
func (a *app) completePolicyThenDisks(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return a.completePolicies(cmd, args, toComplete)
	}
	return a.completeDisks(cmd, nil, toComplete)
}
