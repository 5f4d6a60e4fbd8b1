package cow

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
)

// WriteAt writes p at off; with fua the data is durable on return.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if v.readOnly {
		return block.ErrReadOnly
	}
	v.touch()
	err := v.write(ctx, p, off, int64(len(p)), 0)
	v.afterWrite(ctx, off, int64(len(p)))
	if err != nil {
		return mapErr(err)
	}
	if fua {
		return v.sync()
	}
	return nil
}

// Trim punches a hole; the range reads as zeros afterwards.
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	var flags block.ZeroFlags
	if fua {
		flags = block.ZeroFUA
	}
	return v.Zero(ctx, off, length, flags)
}

// Zero makes the range read as zeros, punching a hole unless ZeroNoHole.
func (v *Volume) Zero(ctx context.Context, off, length int64, flags block.ZeroFlags) error {
	if v.readOnly {
		return block.ErrReadOnly
	}
	if length == 0 {
		return nil
	}
	v.touch()
	err := v.write(ctx, nil, off, length, flags)
	v.afterWrite(ctx, off, length)
	if err != nil {
		return mapErr(err)
	}
	if flags&block.ZeroFUA != 0 {
		return v.sync()
	}
	return nil
}

// Flush makes every completed write durable.
func (v *Volume) Flush(ctx context.Context) error {
	if v.readOnly {
		return nil
	}
	return v.sync()
}

func (v *Volume) sync() error {
	if err := v.liveSync.Wait(); err != nil {
		return mapErr(fmt.Errorf("fdatasync live image: %w", err))
	}
	if v.rd.countOrZero() > 0 {
		if err := v.side.sync(); err != nil {
			return mapErr(fmt.Errorf("sync redirected writes: %w", err))
		}
	}
	return nil
}

func (v *Volume) afterWrite(ctx context.Context, off, length int64) {
	if v.opts.OnWrite != nil {
		v.opts.OnWrite(ctx, off, length)
	}
}

// write changes [off, off+length) to p or, with p nil, to zeros as flags
// say: in place, or redirected where a snapshot still needs the old
// content (redirect.go).
func (v *Volume) write(ctx context.Context, p []byte, off, length int64, flags block.ZeroFlags) error {
	return v.splitWrite(off, length, func(o, n int64, redirect bool) (bool, error) {
		var data []byte
		if p != nil {
			data = p[o-off : o-off+n]
		}
		if redirect {
			return false, v.writeRedirected(ctx, data, o, n, flags)
		}
		return v.writeInPlace(o, n, func() error {
			switch {
			case v.isClone() && data == nil && flags&block.ZeroFast != 0:
				return block.ErrNotFast // a clone writes its zeros: a hole would read the origin
			case v.isClone():
				return v.writeClone(data, o, n)
			case data == nil:
				return v.zero(o, n, flags)
			}
			_, err := v.f.WriteAt(data, o)
			return err
		})
	})
}

// writeInPlace runs write, a change of [off, off+length) to the live
// image, once the blocks are in the epoch's durable dirty set (invariant
// 4) and while the write counts as in flight in its epoch. It reports
// redo, without writing, if a block of the range must be redirected now
// (a seal made it pending since the caller decided): no copying snapshot
// ever needs what an in-place write overwrites.
//
// A tracking failure does not fail the write: the next snapshot then
// copies every block.
func (v *Volume) writeInPlace(off, length int64, write func() error) (redo bool, err error) {
	first, last := v.blockRange(off, length)
	if h := v.opts.hooks; h != nil {
		if f := h.beforeMark.Load(); f != nil {
			(*f)(off)
		}
	}
	t := v.enter(first, last, false)
	defer v.leave(t)
	if v.mustRedirect(first, last) {
		return true, nil
	}
	if h := v.opts.hooks; h != nil {
		if f := h.inFlight.Load(); f != nil {
			(*f)(off)
		}
	}
	return false, write()
}

// enter makes blocks first..last part of the current epoch's dirty set
// (lazily: the caller's side file proves its write after a crash) and
// returns holding the gate shared, with the write counted in flight in
// that epoch (the returned tracker); the caller issues its write and
// calls leave. The mark runs before the gate is taken, so a seal never
// waits for a tracker sync, only for writes already issued; if a seal or
// a grow slipped in between, the mark is redone for the new epoch.
func (v *Volume) enter(first, last uint64, lazy bool) *tracker {
	for {
		shape := v.shape.Load()
		t := v.track.Load()
		if lazy {
			v.trackErr(t.markLazy(first, last))
		} else {
			v.trackErr(t.mark(first, last))
		}
		v.gate.RLock()
		t.enter()
		if v.shape.Load() == shape {
			// Checked after the shape: a group seal holds writes before
			// it changes any volume's shape, so a write that sees the old
			// shape here belongs to the sealed epoch, and one that would
			// land in a new epoch before the whole group is sealed waits.
			held := v.held.Load()
			if held == nil {
				return t
			}
			t.exit()
			v.gate.RUnlock()
			<-*held
			continue
		}
		t.exit()
		v.gate.RUnlock()
	}
}

// leave ends a write begun with enter.
func (v *Volume) leave(t *tracker) {
	t.exit()
	v.gate.RUnlock()
}

func (v *Volume) trackErr(err error) {
	if err != nil && !errors.Is(err, errRetired) && !v.trackLost.Swap(true) {
		v.log.Error("change tracking failed; the next snapshot will copy every allocated block", "live", v.path, "err", err)
	}
}

// flushTrackers makes lazily marked bits durable in the current tracker
// and in one still being sealed.
func (v *Volume) flushTrackers() error {
	if err := v.track.Load().flush(); err != nil {
		return err
	}
	if t := v.sealing.Load(); t != nil {
		return t.flush()
	}
	return nil
}

// zero zeroes [off, off+length) of the live image.
func (v *Volume) zero(off, length int64, flags block.ZeroFlags) error {
	fd := int(v.f.Fd())
	if v.isDevice {
		r := [2]uint64{uint64(off), uint64(length)}
		if err := ioctlRange(fd, unix.BLKZEROOUT, &r); err == nil {
			return nil
		} else if flags&block.ZeroFast != 0 {
			return block.ErrNotFast
		}
		return v.writeZeros(off, length)
	}
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if flags&block.ZeroNoHole != 0 {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(fd, mode, off, length)
	if err == nil {
		return nil
	}
	if flags&block.ZeroFast != 0 {
		return block.ErrNotFast
	}
	return v.writeZeros(off, length)
}

var zeroBuf = make([]byte, 1<<20)

func (v *Volume) writeZeros(off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := v.f.WriteAt(zeroBuf[:n], off); err != nil {
			return mapErr(err)
		}
		off += n
		length -= n
	}
	return nil
}

// Grow enlarges the disk to size bytes; new space reads as zeros.
func (v *Volume) Grow(size int64) error {
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	v.gate.Lock()
	defer v.gate.Unlock()
	if size < v.size {
		return fmt.Errorf("grow to %d bytes: smaller than the current size %d (shrinking is not supported)", size, v.size)
	}
	if v.isDevice {
		return fmt.Errorf("grow: the live image is a block device; grow the device itself")
	}
	v.shape.Add(1)
	if err := v.track.Load().grow(v.blocks(size)); err != nil {
		return err
	}
	if v.isClone() {
		v.local.grow(v.blocks(size))
	}
	if err := v.f.Truncate(size); err != nil {
		return fmt.Errorf("grow live image: %w", err)
	}
	v.size = size
	return nil
}

// DirtyBlocks returns the blocks written in the current epoch, in order.
func (v *Volume) DirtyBlocks() []uint64 {
	v.gate.RLock()
	defer v.gate.RUnlock()
	return v.track.Load().bits().Members()
}
