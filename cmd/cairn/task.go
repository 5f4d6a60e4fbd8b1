package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

func (a *app) taskCmd() *cobra.Command {
	return group(&cobra.Command{
		Use:   "task",
		Short: "Long operations (copy-outs, machine snapshots, rollbacks, verify): list, show, wait, cancel",
		Long: "Every long operation is a task with an id, a state (queued, running, succeeded, failed, cancelled)\n" +
			"and progress. Tasks outlive a restart of cairnd; finished ones are kept for task_history.",
	}, a.taskListCmd(), &cobra.Command{
		Use:               "show ID",
		Short:             "Show one task",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeTasks,
		RunE:              show(a, func(ctx context.Context, args []string) (api.Task, error) { return a.client.Task(ctx, args[0]) }, a.printTask),
	}, &cobra.Command{
		Use:               "wait ID",
		Short:             "Follow a task with a progress bar until it ends (exit 1 if it fails, or a verify finds faults)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeTasks,
		RunE: a.run(func(ctx context.Context, args []string) error {
			task, err := a.client.Task(ctx, args[0])
			if err != nil {
				return err
			}
			task, err = a.followTask(ctx, task)
			if err != nil {
				return err
			}
			if err := a.print(task, func() error { return a.printTask(task) }); err != nil {
				return err
			}
			return taskFaults(task)
		}),
	}, &cobra.Command{
		Use:               "cancel ID",
		Short:             "Stop a task that can be stopped safely (a verify); others are refused with why",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeTasks,
		RunE: show(a, func(ctx context.Context, args []string) (api.Task, error) {
			return a.client.CancelTask(ctx, args[0])
		}, a.printTask),
	})
}

func (a *app) taskListCmd() *cobra.Command {
	var f api.TaskFilter
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List tasks, newest first (--state, --kind, --disk, --target filter)",
		Args:    cobra.NoArgs,
		RunE: show(a, func(ctx context.Context, _ []string) ([]api.Task, error) { return a.client.Tasks(ctx, f) },
			func(tasks []api.Task) error {
				t := a.table("ID", "KIND", "DISK", "TARGET", "STATE", "PROGRESS", "CREATED")
				for _, k := range tasks {
					t.row(k.ID, k.Kind, orDash(k.Disk), orDash(k.Target), k.State, fmt.Sprintf("%.0f%%", k.Progress), k.Created.Local().Format(time.DateTime))
				}
				return t.flush()
			}),
	}
	cmd.Flags().StringVar(&f.State, "state", "", "only tasks in this state: queued, running, succeeded, failed or cancelled")
	cmd.Flags().StringVar(&f.Kind, "kind", "", "only tasks of this kind: copy-out, rollback, verify, machine-snapshot, machine-rollback")
	cmd.Flags().StringVar(&f.Disk, "disk", "", "only tasks of this disk")
	cmd.Flags().StringVar(&f.Target, "target", "", "only tasks whose target contains this")
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{api.TaskQueued, api.TaskRunning, api.TaskSucceeded, api.TaskFailed, api.TaskCancelled}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("disk", a.completeDisks)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printTask prints a task as key/value lines (a verify's faults after
// them).
func (a *app) printTask(k api.Task) error {
	t := a.table()
	t.row("ID:", k.ID)
	t.row("Kind:", k.Kind)
	if k.Disk != "" {
		t.row("Disk:", k.Disk)
	}
	if k.Target != "" {
		t.row("Target:", k.Target)
	}
	t.row("State:", k.State)
	progress := fmt.Sprintf("%.1f%%", k.Progress)
	if k.TotalBytes > 0 {
		progress += fmt.Sprintf(", %s of %s", formatBytes(k.DoneBytes), formatBytes(k.TotalBytes))
	}
	if k.RateBytes > 0 && !k.Ended() {
		progress += fmt.Sprintf(", %s/s", formatBytes(uint64(k.RateBytes)))
	}
	if k.ETASeconds > 0 && !k.Ended() {
		progress += fmt.Sprintf(", %s left", (time.Duration(k.ETASeconds) * time.Second).Round(time.Second))
	}
	t.row("Progress:", progress)
	if k.Message != "" {
		t.row("Message:", k.Message)
	}
	if k.Error != "" {
		t.row("Error:", k.Error)
	}
	t.row("Created:", k.Created.Local().Format(time.RFC3339))
	if k.Finished != nil {
		t.row("Finished:", fmt.Sprintf("%s (took %s)", k.Finished.Local().Format(time.RFC3339), k.Finished.Sub(k.Created.Time).Round(time.Millisecond)))
	}
	if !k.Ended() && !k.Cancellable {
		t.row("Cancellable:", "no")
	}
	if err := t.flush(); err != nil {
		return err
	}
	if k.Kind == api.TaskVerify && k.Result != nil {
		res, err := verifyResult(k)
		if err != nil {
			return err
		}
		a.printVerifyResult(res)
	}
	return nil
}

// verifyResult decodes a verify task's Result (a JSON object once it has
// crossed the API).
func verifyResult(k api.Task) (api.VerifyResult, error) {
	var res api.VerifyResult
	b, err := json.Marshal(k.Result)
	if err == nil {
		err = json.Unmarshal(b, &res)
	}
	if err != nil {
		return res, fmt.Errorf("task %s: cannot read its verify result: %w", k.ID, err)
	}
	return res, nil
}

// taskFaults is the error of a finished verify task that found faults.
func taskFaults(k api.Task) error {
	if k.Kind != api.TaskVerify || k.State != api.TaskSucceeded {
		return nil
	}
	res, err := verifyResult(k)
	if err != nil {
		return err
	}
	if n := len(res.Faults); n > 0 {
		return fmt.Errorf("verify found %d fault(s)", n)
	}
	return nil
}

// completeTasks completes a task id.
func (a *app) completeTasks(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	client := &api.Client{Socket: a.socketPath()}
	tasks, err := client.Tasks(cmd.Context(), api.TaskFilter{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ids := make([]string, 0, len(tasks))
	for _, k := range tasks {
		ids = append(ids, k.ID+"\t"+k.Kind+" "+k.State)
	}
	return ids, cobra.ShellCompDirectiveNoFileComp
}

// followTask follows a task until it finishes and returns it as it ended.
// A failed task is returned with an error stating its Error.
func (a *app) followTask(ctx context.Context, t api.Task) (api.Task, error) {
	label := t.Kind
	switch {
	case t.Disk != "" && t.Target != "":
		label += " " + t.Disk + "@" + t.Target
	case t.Disk != "":
		label += " " + t.Disk
	case t.Target != "":
		label += " " + t.Target
	}
	return follow(ctx, a, label, "cairn task wait "+t.ID, t,
		func(ctx context.Context) (api.Task, error) { return a.client.Task(ctx, t.ID) }, taskStatus)
}

// taskStatus is a task as a display sees it. Tasks report units of their
// own (blocks, chunks), not bytes.
func taskStatus(t api.Task) status {
	s := status{state: workRunning, percent: t.Progress, message: t.Message, doneBytes: t.DoneBytes, totalBytes: t.TotalBytes}
	switch t.State {
	case api.TaskSucceeded:
		s.state = workDone
	case api.TaskFailed, api.TaskCancelled:
		s.state = workFailed
		s.err = fmt.Errorf("task %s (%s) %s: %s", t.ID, t.Kind, t.State, orNoReason(t.Error))
	}
	return s
}
