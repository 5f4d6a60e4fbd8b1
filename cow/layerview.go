package cow

import (
	"context"
	"fmt"
	"math/bits"
	"sync"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// LayerView is a read-only device over chains in the store, with no live
// image: each block is the first layer's that holds it, else zeros. It
// serves an image's disk (the image's chain as of its base) as the NBD
// export image:NAME/DISK, for exports to files. The caller keeps the
// layers from being dropped while the view is open.
type LayerView struct {
	st        *store.Store
	layers    []store.Layer
	size      int64
	blockSize int64
	shift     uint

	allocOnce sync.Once
	alloc     *bitmap.Bitmap // blocks some layer holds, built on first use
	allocErr  error
}

var _ block.Device = (*LayerView)(nil)

// NewLayerView opens a view of layers, size bytes in blocks of blockSize
// (a power of two, ValidBlockSize).
func NewLayerView(st *store.Store, layers []store.Layer, size int64, blockSize int) (*LayerView, error) {
	if err := ValidBlockSize(blockSize); err != nil {
		return nil, err
	}
	return &LayerView{st: st, layers: layers, size: size, blockSize: int64(blockSize), shift: uint(bits.TrailingZeros64(uint64(blockSize)))}, nil
}

// Size is the view's size in bytes.
func (w *LayerView) Size() int64 { return w.size }

// ReadAt reads the layers' content.
func (w *LayerView) ReadAt(ctx context.Context, p []byte, off int64) error {
	buf := make([]byte, w.blockSize)
	for len(p) > 0 {
		b := uint64(off >> w.shift)
		in := off & (w.blockSize - 1)
		n := min(int64(len(p)), w.blockSize-in)
		if err := w.readBlock(ctx, b, buf); err != nil {
			return err
		}
		copy(p[:n], buf[in:in+n])
		p = p[n:]
		off += n
	}
	return nil
}

// readBlock fills buf with block b of the first layer holding it.
func (w *LayerView) readBlock(ctx context.Context, b uint64, buf []byte) error {
	return readLayers(ctx, w.st, w.layers, b, buf)
}

// readLayers fills buf (one block) with block b of the first of layers
// that holds it, else zeros (a view's reads, a clone's origin).
func readLayers(ctx context.Context, st *store.Store, layers []store.Layer, b uint64, buf []byte) error {
	for _, l := range layers {
		found, err := st.ReadBlock(ctx, l.Disk, b, l.Seq, buf)
		if err != nil {
			return fmt.Errorf("read block %d (chain %d as of %d): %w", b, l.Disk, l.Seq, err)
		}
		if found {
			return nil
		}
	}
	clear(buf)
	return nil
}

// layersAllocated is the set of nblocks blocks that some layer holds
// data in; its cost is the layers' entries.
func layersAllocated(ctx context.Context, st *store.Store, layers []store.Layer, nblocks uint64) (*bitmap.Bitmap, error) {
	bm := bitmap.New(nblocks)
	for i := len(layers) - 1; i >= 0; i-- { // the first layer wins: apply it last
		if err := st.Allocated(ctx, layers[i].Disk, layers[i].Seq, bm); err != nil {
			return nil, err
		}
	}
	return bm, nil
}

// WriteAt fails: the view is read-only.
func (w *LayerView) WriteAt(context.Context, []byte, int64, bool) error { return block.ErrReadOnly }

// Trim fails: the view is read-only.
func (w *LayerView) Trim(context.Context, int64, int64, bool) error { return block.ErrReadOnly }

// Zero fails: the view is read-only.
func (w *LayerView) Zero(context.Context, int64, int64, block.ZeroFlags) error {
	return block.ErrReadOnly
}

// Flush has nothing to do.
func (w *LayerView) Flush(context.Context) error { return nil }

// Extents reports the allocation: blocks no layer holds (or holds as
// zero) are holes. Its cost, once, is the layers' entries.
func (w *LayerView) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	w.allocOnce.Do(func() {
		w.alloc, w.allocErr = layersAllocated(ctx, w.st, w.layers, uint64((w.size+w.blockSize-1)>>w.shift))
	})
	if w.allocErr != nil {
		return nil, w.allocErr
	}
	return bitmapExtents(w.alloc, w.shift, off, length, w.size, 0, block.StateHole|block.StateZero), nil
}
