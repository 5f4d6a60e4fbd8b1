package daemon

import (
	"context"

	"github.com/cairn-storage/cairn/daemon/api"
)

// Verify starts a task that re-hashes every chunk (of one disk, or all)
// and checks every reference count.
func (d *Daemon) Verify(ctx context.Context, req api.VerifyRequest) (api.Task, error) {
	var id uint64
	if req.Disk != "" {
		if err := checkDiskName(fieldDisk, req.Disk); err != nil {
			return api.Task{}, err
		}
		k, _, err := d.volume(req.Disk)
		if err != nil {
			return api.Task{}, err
		}
		id = k.rec.ID
	}
	return d.tasks.start(d.bg, taskSpec{kind: api.TaskVerify, disk: req.Disk, unit: unitChunks, cancellable: true}, func(ctx context.Context, progress progressFunc) (any, error) {
		rep, err := d.store.Verify(ctx, id, progress)
		res := api.VerifyResult{ChunksChecked: rep.ChunksChecked, EntriesChecked: rep.EntriesChecked, Faults: rep.Faults}
		if res.Faults == nil {
			res.Faults = []string{}
		}
		if err == nil {
			d.metrics.verified(len(res.Faults))
		}
		if err == nil && len(res.Faults) > 0 {
			d.log.Error("verify found faults", "disk", req.Disk, "faults", len(res.Faults), "first", res.Faults[0])
		}
		return res, err
	})
}
