package fusefs

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/cairn-storage/cairn/block"
)

// overlayBlock is the unit in which an overlay records what was written.
const overlayBlock = 4096

// overlay is a private, throwaway, writable view of a read-only device (a
// snapshot): writes land in an unlinked temporary file and vanish when
// the overlay closes; reads take each block from there if it was written,
// else from the base. It lets a filesystem replay its journal on a
// crash-consistent snapshot without changing the snapshot.
type overlay struct {
	base block.Device
	// mu is held shared by reads and exclusively by writes, so a read
	// never sees a block half copied in.
	mu      sync.RWMutex
	written *roaring.Bitmap // guarded by mu: blocks present in scratch
	scratch *os.File
}

var _ block.Device = (*overlay)(nil)

// newOverlay opens an empty overlay over base, keeping written blocks in
// an unlinked file in dir.
func newOverlay(base block.Device, dir string) (*overlay, error) {
	if base.Size() > overlayBlock<<32 {
		return nil, fmt.Errorf("snapshot overlay: %d bytes is more than an overlay can track (16 TiB)", base.Size())
	}
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "cairn-scratch-*")
	if err != nil {
		return nil, fmt.Errorf("scratch file for a snapshot overlay: %w", err)
	}
	os.Remove(f.Name()) // lives until closed
	return &overlay{base: base, written: roaring.New(), scratch: f}, nil
}

func (o *overlay) Size() int64 { return o.base.Size() }

func (o *overlay) ReadAt(ctx context.Context, p []byte, off int64) error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	for len(p) > 0 {
		// The longest run from off whose blocks are all in the same place.
		block := uint32(off / overlayBlock)
		inScratch := o.written.Contains(block)
		end := int64(block+1) * overlayBlock
		for end < off+int64(len(p)) && o.written.Contains(uint32(end/overlayBlock)) == inScratch {
			end += overlayBlock
		}
		n := min(end-off, int64(len(p)))
		var err error
		if inScratch {
			_, err = o.scratch.ReadAt(p[:n], off)
		} else {
			err = o.base.ReadAt(ctx, p[:n], off)
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

func (o *overlay) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if len(p) == 0 {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	first := uint32(off / overlayBlock)
	last := uint32((off + int64(len(p)) - 1) / overlayBlock)
	// A block written in part takes the rest from the base first.
	if off%overlayBlock != 0 {
		if err := o.copyUp(ctx, first); err != nil {
			return err
		}
	}
	if end := off + int64(len(p)); end%overlayBlock != 0 && end < o.Size() {
		if err := o.copyUp(ctx, last); err != nil {
			return err
		}
	}
	if _, err := o.scratch.WriteAt(p, off); err != nil {
		return fmt.Errorf("snapshot overlay: %w", err)
	}
	o.written.AddRange(uint64(first), uint64(last)+1)
	return nil
}

// copyUp copies block from the base into scratch unless it is there. The
// caller holds mu exclusively.
func (o *overlay) copyUp(ctx context.Context, block uint32) error {
	if o.written.Contains(block) {
		return nil
	}
	off := int64(block) * overlayBlock
	buf := make([]byte, min(overlayBlock, o.Size()-off))
	if err := o.base.ReadAt(ctx, buf, off); err != nil {
		return err
	}
	if _, err := o.scratch.WriteAt(buf, off); err != nil {
		return fmt.Errorf("snapshot overlay: %w", err)
	}
	o.written.Add(block)
	return nil
}

// Flush does nothing: an overlay is thrown away.
func (o *overlay) Flush(ctx context.Context) error { return nil }

func (o *overlay) Trim(ctx context.Context, off, length int64, fua bool) error {
	return o.Zero(ctx, off, length, 0)
}

// Zero writes zeros into the overlay.
func (o *overlay) Zero(ctx context.Context, off, length int64, flags block.ZeroFlags) error {
	zeros := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if err := o.WriteAt(ctx, zeros[:n], off, false); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Extents reports everything as data: the overlay does not track holes.
func (o *overlay) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	return []block.Extent{{Length: length}}, nil
}

// Close discards the overlay.
func (o *overlay) Close() error { return o.scratch.Close() }
