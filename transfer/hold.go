package transfer

import (
	"context"

	"github.com/cairn-storage/cairn/daemon/api"
)

// WithSnapshot runs fn with the NBD URI of disk's snapshot (a snapshot
// cairnd takes for it when snap is ""), held as an export transfer: the
// snapshot taken is deleted when fn returns, or by cairnd if this process
// dies (cairn check reads disks this way).
func WithSnapshot(ctx context.Context, c *api.Client, disk, snap string, fn func(ctx context.Context, uri string, td api.TransferDisk) error) error {
	tr, err := c.ExportDisk(ctx, disk, api.ExportRequest{Snapshot: snap})
	if err != nil {
		return err
	}
	td := tr.Disks[0]
	return run(ctx, c, tr, nil, func(ctx context.Context, _ Progress) error {
		return fn(ctx, nbdURI(tr, td.Export), td)
	})
}
