package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) machineCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:     "machine",
		Aliases: []string{"vm"},
		Short:   "Group a VM's disks into a machine; snapshot, roll back and delete them together",
		Long: "A machine is a VM as Cairn sees it: its disks in order, its configuration document (a libvirt\n" +
			"domain XML, say) and its guest agent's socket (docs/machines.md). A machine snapshot takes every\n" +
			"disk at one instant, filesystem-consistent when the guest agent freezes the guest.",
	}, a.machineCreateCmd(), a.machineListCmd(), a.machineShowCmd(), a.machineSetCmd(), a.machineDeleteCmd(),
		a.machineSnapshotCmd())
}

// configFlags read a configuration document from a file (- for stdin).
type configFlags struct{ file, mediaType string }

func (f *configFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.file, "config", "", "the VM's configuration document, kept verbatim (FILE, or - for stdin); an empty file removes it")
	cmd.Flags().StringVar(&f.mediaType, "config-type", "", "its media type (default: application/xml for a document starting with '<', application/json for '{' or '[', else text/plain)")
}

func (f *configFlags) load() (*api.Config, error) {
	if f.file == "" {
		return nil, nil
	}
	var data []byte
	var err error
	if f.file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(f.file)
	}
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	mt := f.mediaType
	if mt == "" {
		switch trimmed := strings.TrimSpace(string(data)); {
		case strings.HasPrefix(trimmed, "<"):
			mt = "application/xml"
		case strings.HasPrefix(trimmed, "{"), strings.HasPrefix(trimmed, "["):
			mt = "application/json"
		default:
			mt = "text/plain"
		}
	}
	return &api.Config{MediaType: mt, Data: string(data)}, nil
}

func (a *app) machineCreateCmd() *cobra.Command {
	var req api.CreateMachineRequest
	var cfg configFlags
	cmd := &cobra.Command{
		Use:   "create NAME --disk DISK [--disk DISK]... | --from-image IMAGE",
		Short: "Group existing disks into a machine (the first is the boot disk), or provision one from an image",
		Long: "With --from-image every disk is an instant clone of the image's (named NAME-DISK), and the\n" +
			"image's configuration comes back with its disk names rewritten (cairn machine show NAME --config).",
		Example: "  cairn machine create vm1 --disk vm1-root --disk vm1-data --config vm1.xml \\\n" +
			"      --agent-socket /run/cairn/agents/vm1.sock\n" +
			"  cairn machine create vm2 --from-image web-golden",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: show(a, func(ctx context.Context, args []string) (api.Machine, error) {
			req.Name = args[0]
			var err error
			if req.Config, err = cfg.load(); err != nil {
				return api.Machine{}, err
			}
			return a.client.CreateMachine(ctx, req)
		}, a.printMachine),
	}
	cmd.Flags().StringSliceVar(&req.Disks, "disk", nil, "a disk of the machine, in order (repeat, or comma-separate)")
	cmd.Flags().StringVar(&req.AgentSocket, "agent-socket", "", "the host's end of the guest agent's virtio-serial port (inside agent_socket_dirs)")
	cmd.Flags().StringVar(&req.FromImage, "from-image", "", "provision the machine from an image: its disks as instant clones")
	cmd.RegisterFlagCompletionFunc("from-image", a.completeImages)
	cmd.Flags().StringVar(&req.Description, "description", "", "free text kept with the machine")
	cfg.add(cmd)
	cmd.RegisterFlagCompletionFunc("disk", a.completeDisks)
	return cmd
}

func (a *app) machineListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List machines",
		Args:    cobra.NoArgs,
		RunE: show(a, func(ctx context.Context, args []string) ([]api.Machine, error) {
			return a.client.Machines(ctx)
		}, func(ms []api.Machine) error {
			t := a.table("NAME", "DISKS", "AGENT", "SNAPSHOTS", "CREATED")
			for _, m := range ms {
				t.row(m.Name, strings.Join(m.Disks, ","), orDash(m.AgentSocket), fmt.Sprint(m.Snapshots), m.Created.Local().Format(time.DateTime))
			}
			return t.flush()
		}),
	}
}

func (a *app) machineShowCmd() *cobra.Command {
	var config bool
	cmd := &cobra.Command{
		Use:               "show NAME",
		Short:             "Show a machine (--config prints its configuration document alone)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeMachines,
		RunE: show(a, func(ctx context.Context, args []string) (api.Machine, error) {
			return a.client.Machine(ctx, args[0])
		}, func(m api.Machine) error {
			if config {
				if m.Config == nil {
					return fmt.Errorf("machine %s has no configuration document", m.Name)
				}
				_, err := fmt.Fprint(a.stdout, m.Config.Data)
				return err
			}
			return a.printMachine(m)
		}),
	}
	cmd.Flags().BoolVar(&config, "config", false, "print only the configuration document, verbatim (for virsh define)")
	return cmd
}

func (a *app) printMachine(m api.Machine) error {
	t := a.table()
	t.row("Name:", m.Name)
	t.row("Disks:", strings.Join(m.Disks, ", "))
	t.row("Agent socket:", orDash(m.AgentSocket))
	t.row("Policy:", orDash(m.Policy))
	if m.Config != nil {
		t.row("Config:", fmt.Sprintf("%s, %d bytes (cairn machine show %s --config)", m.Config.MediaType, len(m.Config.Data), m.Name))
	} else {
		t.row("Config:", "-")
	}
	if m.Description != "" {
		t.row("Description:", m.Description)
	}
	t.row("Created:", m.Created.Local().Format(time.RFC3339))
	t.row("Snapshots:", fmt.Sprint(m.Snapshots))
	return t.flush()
}

func (a *app) machineSetCmd() *cobra.Command {
	var disks []string
	var agent, desc string
	var cfg configFlags
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:               "set NAME [--disks D1,D2] [--config FILE] [--agent-socket PATH] [--description TEXT]",
		Short:             "Change a machine's disks, configuration, agent socket or description",
		Long:              "Only the flags given change. --agent-socket '' removes the agent; existing machine snapshots keep what they were taken with.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeMachines,
		RunE: show(a, func(ctx context.Context, args []string) (api.Machine, error) {
			var req api.UpdateMachineRequest
			if cmd.Flags().Changed("disks") {
				req.Disks = &disks
			}
			if cmd.Flags().Changed("agent-socket") {
				req.AgentSocket = &agent
			}
			if cmd.Flags().Changed("description") {
				req.Description = &desc
			}
			var err error
			if req.Config, err = cfg.load(); err != nil {
				return api.Machine{}, err
			}
			if cfg.file != "" && req.Config == nil {
				req.Config = &api.Config{}
			}
			return a.client.UpdateMachine(ctx, args[0], req)
		}, a.printMachine),
	}
	cmd.Flags().StringSliceVar(&disks, "disks", nil, "the machine's disks, in order (replaces the list)")
	cmd.Flags().StringVar(&agent, "agent-socket", "", "the guest agent's socket ('' removes it)")
	cmd.Flags().StringVar(&desc, "description", "", "free text kept with the machine")
	cfg.add(cmd)
	cmd.RegisterFlagCompletionFunc("disks", a.completeDisks)
	return cmd
}

func (a *app) machineDeleteCmd() *cobra.Command {
	var opts api.DeleteMachineOptions
	cmd := &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete a machine; its disks stay unless --with-disks",
		Long:              "A machine with machine snapshots is refused unless --with-snapshots, which deletes them too.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeMachines,
		RunE: a.run(func(ctx context.Context, args []string) error {
			if err := a.client.DeleteMachine(ctx, args[0], opts); err != nil {
				return err
			}
			return a.print(map[string]string{"deleted": args[0]}, func() error {
				_, err := fmt.Fprintf(a.stdout, "deleted machine %s\n", args[0])
				return err
			})
		}),
	}
	cmd.Flags().BoolVar(&opts.WithSnapshots, "with-snapshots", false, "also delete its machine snapshots")
	cmd.Flags().BoolVar(&opts.WithDisks, "with-disks", false, "also delete its disks (and their snapshots)")
	cmd.Flags().BoolVar(&opts.Force, "force", false, "disconnect NBD clients of what is deleted")
	return cmd
}

func (a *app) machineSnapshotCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snap"},
		Short:   "Snapshot every disk of a machine at one instant; list, show, delete, roll back",
	}, a.machineSnapCreateCmd(), a.machineSnapListCmd(), a.machineSnapShowCmd(), a.machineSnapDeleteCmd(), a.machineSnapRollbackCmd())
}

func (a *app) machineSnapCreateCmd() *cobra.Command {
	var req api.CreateMachineSnapshotRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "create MACHINE NAME",
		Short: "Snapshot every disk of the machine at one instant (a task; --wait follows it)",
		Long: "Every disk is sealed at the same instant: no write answered after it is in any disk's snapshot,\n" +
			"and every write answered before it is in all. --consistency filesystem freezes the guest's\n" +
			"filesystems through its agent first (bounded by freeze_timeout, always thawed); auto, the default,\n" +
			"does so when the agent answers and is crash-consistent otherwise, saying why; crash never freezes.\n" +
			"Each disk's snapshot is DISK@NAME.",
		Example:           "  cairn machine snapshot create vm1 before-upgrade --consistency filesystem --wait",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeMachines,
		RunE: show(a, func(ctx context.Context, args []string) (api.MachineSnapshot, error) {
			req.Name = args[1]
			task, err := a.client.CreateMachineSnapshot(ctx, args[0], req)
			if err != nil {
				return api.MachineSnapshot{}, err
			}
			if wait {
				if _, err := a.followTask(ctx, task); err != nil {
					return api.MachineSnapshot{}, err
				}
			} else if a.output != "json" {
				fmt.Fprintf(a.stderr, "started task %s (cairn task wait %s)\n", task.ID, task.ID)
			}
			// The record exists once the task has sealed the disks;
			// without --wait it may not yet.
			return a.machineSnapAfter(ctx, args[0], args[1], task)
		}, a.printMachineSnapshot),
	}
	cmd.Flags().StringVar(&req.Consistency, "consistency", "auto", "crash, filesystem or auto")
	cmd.Flags().StringVar(&req.Description, "description", "", "free text kept with the snapshot")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the task until every disk's snapshot is ready (exit 1 if it fails)")
	cmd.RegisterFlagCompletionFunc("consistency", cobra.FixedCompletions([]string{"auto", "filesystem", "crash"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// machineSnapAfter fetches the machine snapshot a task took, waiting for
// the task to get past the seal if it has not.
func (a *app) machineSnapAfter(ctx context.Context, machine, name string, task api.Task) (api.MachineSnapshot, error) {
	for {
		ms, err := a.client.MachineSnapshot(ctx, machine, name)
		if err == nil {
			return ms, nil
		}
		t, terr := a.client.Task(ctx, task.ID)
		if terr != nil {
			return ms, err
		}
		if t.State == api.TaskFailed {
			return ms, fmt.Errorf("task %s failed: %s", t.ID, orNoReason(t.Error))
		}
		select {
		case <-ctx.Done():
			return ms, ctx.Err()
		case <-time.After(20 * time.Millisecond): // the seal takes microseconds, a freeze up to freeze_timeout
		}
	}
}

func (a *app) machineSnapListCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "list MACHINE",
		Aliases:           []string{"ls"},
		Short:             "List a machine's snapshots, oldest first",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeMachines,
		RunE: show(a, func(ctx context.Context, args []string) ([]api.MachineSnapshot, error) {
			return a.client.MachineSnapshots(ctx, args[0])
		}, func(list []api.MachineSnapshot) error {
			t := a.table("NAME", "CREATED", "STATE", "PROGRESS", "CONSISTENCY", "FROZEN", "HOLD")
			for _, s := range list {
				t.row(s.Name, s.Created.Local().Format(time.DateTime), s.State, fmt.Sprintf("%.0f%%", s.Progress),
					s.Consistency, formatHold(s.FrozenMicros), formatHold(s.HoldMicros))
			}
			return t.flush()
		}),
	}
}

func (a *app) machineSnapShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "show MACHINE NAME",
		Short:             "Show a machine snapshot and its members",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeMachineSnapshots,
		RunE: show(a, func(ctx context.Context, args []string) (api.MachineSnapshot, error) {
			return a.client.MachineSnapshot(ctx, args[0], args[1])
		}, a.printMachineSnapshot),
	}
}

func (a *app) printMachineSnapshot(s api.MachineSnapshot) error {
	t := a.table()
	t.row("Name:", s.Machine+"@"+s.Name)
	t.row("State:", fmt.Sprintf("%s (%.0f%%)", s.State, s.Progress))
	cons := s.Consistency
	if s.Requested != s.Consistency {
		cons += " (" + s.Requested + " requested)"
	}
	t.row("Consistency:", cons)
	if s.Reason != "" {
		t.row("Reason:", s.Reason)
	}
	t.row("Frozen:", formatHold(s.FrozenMicros))
	t.row("Write hold:", formatHold(s.HoldMicros)+" (every disk)")
	t.row("Created:", s.Created.Local().Format(time.RFC3339))
	if s.Config != nil {
		t.row("Config:", fmt.Sprintf("%s, %d bytes", s.Config.MediaType, len(s.Config.Data)))
	}
	for i, m := range s.Members {
		label := ""
		if i == 0 {
			label = "Members:"
		}
		t.row(label, fmt.Sprintf("%s  %s (%.0f%%)", m.Export, m.State, m.Progress))
	}
	return t.flush()
}

func (a *app) machineSnapDeleteCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "delete MACHINE NAME",
		Aliases:           []string{"rm"},
		Short:             "Delete a machine snapshot and every disk's snapshot in it",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeMachineSnapshots,
		RunE: a.run(func(ctx context.Context, args []string) error {
			res, err := a.client.DeleteMachineSnapshot(ctx, args[0], args[1], force)
			if err != nil {
				return err
			}
			return a.print(res, func() error {
				_, err := fmt.Fprintf(a.stdout, "deleted machine snapshot %s@%s, freed %s\n", args[0], args[1], formatBytes(res.FreedBytes))
				return err
			})
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect NBD clients reading the members first")
	return cmd
}

func (a *app) machineSnapRollbackCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rollback MACHINE NAME",
		Short: "Roll every disk of the machine back to a machine snapshot (stop the VM first)",
		Long: "Refused while an NBD client is connected to any disk's live export, unless --force disconnects\n" +
			"them: a running VM would see its disks change under it. Follows the task.",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeMachineSnapshots,
		RunE: show(a, func(ctx context.Context, args []string) (api.Task, error) {
			task, err := a.client.RollbackMachine(ctx, args[0], args[1], force)
			if err != nil {
				return task, err
			}
			return a.followTask(ctx, task)
		}, func(task api.Task) error {
			_, err := fmt.Fprintf(a.stdout, "rolled back machine %s\n", task.Target)
			return err
		}),
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect NBD clients of the live disks first")
	return cmd
}

func (a *app) completeMachines(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ms, err := (&api.Client{Socket: a.socketPath()}).Machines(cmd.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(ms))
	for _, m := range ms {
		names = append(names, m.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) completeMachineSnapshots(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return a.completeMachines(cmd, args, toComplete)
	}
	if len(args) > 1 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	list, err := (&api.Client{Socket: a.socketPath()}).MachineSnapshots(cmd.Context(), args[0])
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, 0, len(list))
	for _, s := range list {
		names = append(names, s.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
