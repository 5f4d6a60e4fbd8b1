package cow

import (
	"context"
	"fmt"
	"math"
	"sort"

	"github.com/cairn-storage/cairn/block"
)

// Rollback makes the live disk read byte for byte as the named snapshot
// did. It writes back only the blocks changed since the snapshot (later
// entries, blocks pending for later snapshots, the epoch's dirty set),
// through the normal write path, so later snapshots stay intact and the
// rollback itself is tracked as a change. A disk that grew since the
// snapshot keeps its size (disks only grow): everything past the
// snapshot's size is zeroed through the write path too, so it reads as
// zeros and counts as changed. The caller must make sure no writer is
// connected. progress (may be nil) gets done/total blocks. The result is
// durable on return.
func (v *Volume) Rollback(ctx context.Context, name string, progress func(done, total uint64)) error {
	if v.st == nil {
		return errNoStore
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	v.mu.Lock()
	s, ok := v.findLocked(name)
	if ok && !s.readable() {
		v.mu.Unlock()
		return block.Errorf(block.ErrFailed, "snapshot %q is %s and cannot be rolled back to: %s", name, s.rec.State, s.rec.Reason)
	}
	v.mu.Unlock()
	if !ok {
		return notFound(name)
	}
	changed, err := v.changedBetween(ctx, s.seq(), math.MaxUint64)
	if err != nil {
		return fmt.Errorf("rollback to %q: %w", name, err)
	}
	size := v.Size()
	// Past the snapshot's size: its last block, if partial, is written
	// back with the rest; whole blocks after it are zeroed at the end in
	// one call (a hole: cheap however much the disk grew).
	tail := min((s.rec.Size+int64(v.blockSize)-1)&^(int64(v.blockSize)-1), size)
	if s.rec.Size < tail {
		changed.Set(uint64(s.rec.Size >> v.shift))
	}
	blocks := changed.Members()
	blocks = blocks[:sort.Search(len(blocks), func(i int) bool { return int64(blocks[i])<<v.shift >= tail })]
	total := uint64(len(blocks))
	buf := v.getBlock()
	defer putBlock(buf)
	for i, b := range blocks {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("rollback to %q interrupted after %d of %d blocks (run it again to finish): %w", name, i, total, err)
		}
		off := int64(b) << v.shift
		n := min(v.blockSize, size-off)
		if n <= 0 {
			continue
		}
		if err := v.readAt(ctx, s.seq(), b, *buf); err != nil {
			return fmt.Errorf("rollback to %q: %w", name, err)
		}
		if isZero((*buf)[:n]) {
			err = v.Zero(ctx, off, n, 0)
		} else {
			err = v.WriteAt(ctx, (*buf)[:n], off, false)
		}
		if err != nil {
			return fmt.Errorf("rollback to %q: write block %d: %w", name, b, err)
		}
		if progress != nil && (i%256 == 0 || i+1 == len(blocks)) {
			progress(uint64(i+1), total)
		}
	}
	if tail < size {
		if err := v.Zero(ctx, tail, size-tail, 0); err != nil {
			return fmt.Errorf("rollback to %q: zero the %d bytes the disk grew by since: %w", name, size-tail, err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		return fmt.Errorf("rollback to %q: %w", name, err)
	}
	return nil
}

func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}
