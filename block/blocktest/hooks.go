package blocktest

import (
	"context"

	"github.com/cairn-storage/cairn/block"
)

// Op names a Backend call for Hooked.Before.
type Op string

// The calls Hooked intercepts.
const (
	OpRead    Op = "read"
	OpWrite   Op = "write"
	OpFlush   Op = "flush"
	OpTrim    Op = "trim"
	OpZero    Op = "zero"
	OpExtents Op = "extents"
)

// Hooked wraps a Backend and calls Before ahead of every call: Before may
// return an error (which the call then returns without reaching the
// backend), block, or panic. It injects faults and holds requests in tests.
type Hooked struct {
	block.Device
	Before func(ctx context.Context, op Op, off, length int64) error
}

var _ block.Device = (*Hooked)(nil)

func (h *Hooked) before(ctx context.Context, op Op, off, length int64) error {
	if h.Before == nil {
		return nil
	}
	return h.Before(ctx, op, off, length)
}

// ReadAt calls Before, then the backend.
func (h *Hooked) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := h.before(ctx, OpRead, off, int64(len(p))); err != nil {
		return err
	}
	return h.Device.ReadAt(ctx, p, off)
}

// WriteAt calls Before, then the backend.
func (h *Hooked) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := h.before(ctx, OpWrite, off, int64(len(p))); err != nil {
		return err
	}
	return h.Device.WriteAt(ctx, p, off, fua)
}

// Flush calls Before, then the backend.
func (h *Hooked) Flush(ctx context.Context) error {
	if err := h.before(ctx, OpFlush, 0, 0); err != nil {
		return err
	}
	return h.Device.Flush(ctx)
}

// Trim calls Before, then the backend.
func (h *Hooked) Trim(ctx context.Context, off, length int64, fua bool) error {
	if err := h.before(ctx, OpTrim, off, length); err != nil {
		return err
	}
	return h.Device.Trim(ctx, off, length, fua)
}

// Zero calls Before, then the backend.
func (h *Hooked) Zero(ctx context.Context, off, length int64, flags block.ZeroFlags) error {
	if err := h.before(ctx, OpZero, off, length); err != nil {
		return err
	}
	return h.Device.Zero(ctx, off, length, flags)
}

// Extents calls Before, then the backend.
func (h *Hooked) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	if err := h.before(ctx, OpExtents, off, length); err != nil {
		return nil, err
	}
	return h.Device.Extents(ctx, off, length)
}
