package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Changes lists the byte ranges changed after snapshot from up to
// snapshot to ("" = the live disk).
func (d *Daemon) Changes(ctx context.Context, disk, from, to string) (api.Changes, error) {
	if err := checkChangesRange(from); err != nil {
		return api.Changes{}, err
	}
	_, vol, err := d.volume(disk)
	if err != nil {
		return api.Changes{}, err
	}
	bm, err := vol.Changes(ctx, from, to)
	if err != nil {
		if errors.Is(err, block.ErrNotFound) {
			return api.Changes{}, fmt.Errorf("disk %q: %w", disk, err)
		}
		return api.Changes{}, invalidf("%v", err)
	}
	size := vol.Size()
	if to != "" {
		if in, err := vol.Snapshot(to); err == nil {
			size = in.Size
		}
	}
	bs := int64(vol.BlockSize())
	out := api.Changes{Disk: disk, From: from, To: to, BlockSize: int(bs), Size: size, Extents: []api.Extent{}}
	for _, b := range bm.Members() {
		off := int64(b) * bs
		if off >= size {
			break
		}
		n := min(bs, size-off)
		if l := len(out.Extents); l > 0 && out.Extents[l-1].Offset+out.Extents[l-1].Length == off {
			out.Extents[l-1].Length += n
		} else {
			out.Extents = append(out.Extents, api.Extent{Offset: off, Length: n})
		}
		out.ChangedBytes += n
	}
	return out, nil
}
