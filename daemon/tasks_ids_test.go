package daemon_test

import (
	"context"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// TestTaskIDsNeverReused: task ids come from a sequence in the store, so a
// restarted cairnd never hands out an id it gave before (a script waiting
// on rollback-1 must never wait on a different task).
func TestTaskIDsNeverReused(t *testing.T) {
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	ctx := context.Background()
	seen := map[string]bool{}
	for round := range 3 {
		in := daemontest.Start(t, &cfg)
		if round == 0 {
			createDisk(t, in, "d", "1M")
			if _, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s1"}); err != nil {
				t.Fatal(err)
			}
			waitSnapshot(t, in.Client, "d", "s1")
		}
		for range 2 {
			for _, start := range []func() (api.Task, error){
				func() (api.Task, error) { return in.Client.Verify(ctx, api.VerifyRequest{}) },
				func() (api.Task, error) { return in.Client.Rollback(ctx, "d", "s1", false) },
			} {
				task, err := start()
				if err != nil {
					t.Fatal(err)
				}
				if seen[task.ID] {
					t.Fatalf("round %d: task id %s was given before", round, task.ID)
				}
				seen[task.ID] = true
				waitTask(t, in.Client, task.ID)
			}
		}
		if err := in.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}
