// Package cow is Cairn's volume engine: the live image of one disk, the
// change tracking of its current epoch, and (with the store) copy-on-write
// snapshots. Every frontend (NBD, FUSE, kernel attach) reads and writes a
// disk only through a Volume, so change tracking sees every write.
package cow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

// DefaultBlockSize is the unit of change tracking unless a disk says otherwise.
const DefaultBlockSize = 64 << 10

// Options configure Open.
type Options struct {
	// BlockSize is the change-tracking unit, a power of two from 4 KiB to 4 MiB.
	BlockSize int
	// ReadOnly opens the live image read-only; writes fail with block.ErrReadOnly.
	ReadOnly bool

	// Store keeps the disk's snapshot chain. Without it the volume tracks
	// changes in memory only and cannot take snapshots.
	Store *store.Store
	// DiskID names the disk's chain in the store; stable for the disk's life.
	DiskID uint64
	// TrackPrefix is the path prefix of the crash-safe change-tracking files
	// ("<prefix>.<epoch>"). Empty: tracking lives in memory only.
	TrackPrefix string
	// Logger receives copy-out and recovery messages. Nil: slog.Default().
	Logger *slog.Logger
	// JournalMax bounds the copy-before-write journal ("<TrackPrefix>.cbw")
	// in bytes; 0 means DefaultJournalMax. Without a TrackPrefix there is
	// no journal and old blocks go to the store inside the write.
	JournalMax int64
	// CopyOutShare is the share of time (0 < share <= 1) a copy-out
	// worker may run while the disk has guest I/O (in the last
	// busyWindow); when idle it runs flat out. 0 means DefaultCopyOutShare.
	CopyOutShare float64
	// Redirect turns redirect-on-write on (redirect.go): a write to a
	// block a copying snapshot still needs goes to the journal instead of
	// over the live image. Off, such a write saves the old pages to the
	// journal, waits for them to be durable and overwrites the image
	// (copy-before-write). Redirected writes found at start are honoured
	// either way.
	Redirect bool
	// OnWrite, if set, is called after every completed write, trim or zero
	// with the request's context and range, after the write gate is
	// released and before the write returns (the FUSE view uses it to drop
	// stale page cache; the context tells it which frontend wrote).
	OnWrite func(ctx context.Context, off, length int64)
}

// testWriteHook, set only by tests, runs inside every WriteAt while the
// write is in flight (begun, not yet issued to the live image).
var testWriteHook atomic.Pointer[func(off int64)]

// Volume is an open live image. Its methods are safe for concurrent use.
type Volume struct {
	path      string
	f         *os.File
	isDevice  bool
	readOnly  bool
	blockSize int64
	shift     uint

	opts     Options
	log      *slog.Logger
	liveSync *groupSync // fdatasync of the live image, batched

	// gate is held shared by every write while it is in flight and
	// exclusively by operations that must see no write in flight (growing,
	// undoing a seal; a seal itself does not take it, see tracker.seal).
	// Taking it exclusively holds new writes at the frontend boundary and
	// waits for the ones in flight.
	gate sync.RWMutex
	// size is guarded by gate; track is replaced under mu by a seal (and
	// under the gate's exclusive side when a seal is undone).
	size  int64
	track atomic.Pointer[tracker] // replaced under the exclusive side; read anywhere
	// shape counts changes made under the exclusive side (seals, grows):
	// a write that prepared under one shape redoes its preparation.
	shape atomic.Uint64
	// sealing is the tracker of an epoch sealed but not yet committed.
	sealing atomic.Pointer[tracker]
	// lastIO is when the last guest read or write arrived (unix ns): the
	// copy-out workers pace themselves while it is recent.
	lastIO atomic.Int64
	// trackLost is set when a change-tracking write failed: the next
	// snapshot then treats every allocated block as changed.
	trackLost atomic.Bool

	chain // snapshot state (snapshot.go)
}

var _ block.Device = (*Volume)(nil)

// Open opens the live image at path (a regular file or a block device).
func Open(path string, opts Options) (*Volume, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if err := ValidBlockSize(bs); err != nil {
		return nil, err
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open live image: %w", err)
	}
	v := &Volume{path: path, f: f, readOnly: opts.ReadOnly, blockSize: int64(bs), opts: opts, log: opts.Logger}
	if v.log == nil {
		v.log = slog.Default()
	}
	v.liveSync = newGroupSync(func() error { return unix.Fdatasync(int(f.Fd())) })
	for 1<<v.shift != bs {
		v.shift++
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat live image: %w", err)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		v.isDevice = true
		var sz uint64
		if err := ioctlUint64(int(f.Fd()), unix.BLKGETSIZE64, &sz); err != nil {
			f.Close()
			return nil, fmt.Errorf("size of block device %s: %w", path, err)
		}
		v.size = int64(sz)
	} else if fi.Mode().IsRegular() {
		v.size = fi.Size()
	} else {
		f.Close()
		return nil, fmt.Errorf("live image %s is neither a regular file nor a block device", path)
	}
	if err := v.openChain(); err != nil {
		f.Close()
		return nil, err
	}
	return v, nil
}

// ValidBlockSize reports whether bs can be a disk's block size.
func ValidBlockSize(bs int) error {
	if bs < 4096 || bs > 4<<20 || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d: must be a power of two from 4 KiB to 4 MiB", bs)
	}
	return nil
}

func (v *Volume) blocks(size int64) uint64 {
	return uint64((size + v.blockSize - 1) >> v.shift)
}

// Path is the live image's path.
func (v *Volume) Path() string { return v.path }

// BlockSize is the change-tracking unit in bytes.
func (v *Volume) BlockSize() int { return int(v.blockSize) }

// Size is the disk's size in bytes.
func (v *Volume) Size() int64 {
	v.gate.RLock()
	defer v.gate.RUnlock()
	return v.size
}

// ReadAt reads the live disk: the live image, and redirected writes.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.touch()
	if v.rd != nil && v.rd.count.Load() > 0 {
		// Held across the image read: a retire merging a page between
		// the two reads must not leave the older content in p.
		v.rd.mu.RLock()
		defer v.rd.mu.RUnlock()
		if err := v.readImage(p, off); err != nil {
			return err
		}
		return v.readOverlay(p, off)
	}
	return v.readImage(p, off)
}

func (v *Volume) readImage(p []byte, off int64) error {
	n, err := v.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == io.EOF {
		// A regular file shorter than the disk (never written at the end)
		// reads as zeros.
		clear(p[n:])
		err = nil
	}
	return err
}

// beginWrite runs before any change to [off, off+length) reaches the live
// image and returns holding the gate shared, for the caller to make the
// change and release it. It makes the blocks part of the epoch's durable
// dirty set and copies out the old content of blocks still pending for a
// snapshot. Both slow steps run before the gate is taken, so a seal never
// waits for a tracker sync or a copy-out, only for writes already issued
// to the live image; if a seal slipped in between, the steps are redone for
// the new epoch. Neither step can fail the guest's write: a tracking
// failure makes the next snapshot full, a copy-out failure fails that
// snapshot (DESIGN.md invariant 5).
//
// The write counts as in flight in its epoch (the returned tracker) until
// endWrite; a seal does not wait for it, but nothing reads a sealed
// epoch's blocks from the live image before its writes have drained.
//
// A write to blocks that are all pending for a snapshot does not wait for
// the tracker's sync: the copy-before-write journal records it must wait
// for anyway prove the write after a crash (a start marks the blocks of
// the records it adopts as changed), and the copy-out worker flushes the
// tracker before it stores such a block (after which the records no
// longer count). One fdatasync per write instead of two.
func (v *Volume) beginWrite(ctx context.Context, off, length int64) *tracker {
	first := uint64(off >> v.shift)
	last := uint64((max(length, 1) + off - 1) >> v.shift)
	for {
		shape := v.shape.Load()
		t := v.track.Load()
		lazy := v.jr != nil && v.allPending(first, last)
		var err error
		if lazy {
			err = t.markLazy(first, last)
		} else {
			err = t.mark(first, last)
		}
		v.trackErr(err)
		covered, need := v.copyBeforeWrite(ctx, off, length)
		if lazy && !covered {
			// Some block was stored meanwhile: no record proves this write.
			v.trackErr(t.mark(first, last))
		}
		v.settle(ctx, t.epoch, off, length, need)
		v.gate.RLock()
		t.enter()
		if v.shape.Load() == shape {
			return t
		}
		t.exit()
		v.gate.RUnlock() // sealed or grown meanwhile: prepare again for the new epoch
	}
}

func (v *Volume) trackErr(err error) {
	if err != nil && !errors.Is(err, errRetired) && !v.trackLost.Swap(true) {
		v.log.Error("change tracking failed; the next snapshot will copy every allocated block", "live", v.path, "err", err)
	}
}

// allPending reports whether every block of first..last is pending for
// some copying snapshot.
func (v *Volume) allPending(first, last uint64) bool {
	list := v.copying.Load()
	if list == nil || len(*list) == 0 {
		return false
	}
	for b := first; b <= last; b++ {
		found := false
		for _, s := range *list {
			if b < s.pending.Len() && s.pending.Test(b) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// flushTrackers makes lazily marked bits durable in the current tracker
// and in one still being sealed (the copy-out worker runs it before it
// stores blocks, whose journal records then stop proving writes).
func (v *Volume) flushTrackers() error {
	if err := v.track.Load().flush(); err != nil {
		return err
	}
	if t := v.sealing.Load(); t != nil {
		return t.flush()
	}
	return nil
}

// endWrite ends a write begun with beginWrite.
func (v *Volume) endWrite(t *tracker) {
	t.exit()
	v.gate.RUnlock()
}

func (v *Volume) afterWrite(ctx context.Context, off, length int64) {
	if v.opts.OnWrite != nil {
		v.opts.OnWrite(ctx, off, length)
	}
}

// WriteAt writes p at off; with fua the data is durable on return.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if v.readOnly {
		return block.ErrReadOnly
	}
	v.touch()
	var err error
	if v.redirecting() {
		err = v.splitWrite(off, int64(len(p)), func(o, n int64, redirect bool) error {
			if redirect {
				return v.writeRedirected(ctx, p[o-off:o-off+n], o, n)
			}
			return v.writeInPlace(ctx, p[o-off:o-off+n], o, n)
		})
	} else {
		err = v.writeInPlace(ctx, p, off, int64(len(p)))
	}
	v.afterWrite(ctx, off, int64(len(p)))
	if err != nil {
		return mapErr(err)
	}
	if fua {
		return v.sync()
	}
	return nil
}

func (v *Volume) sync() error {
	if err := v.liveSync.Wait(); err != nil {
		return mapErr(fmt.Errorf("fdatasync live image: %w", err))
	}
	if v.rd != nil && v.rd.count.Load() > 0 {
		if err := v.side.sync(); err != nil {
			return mapErr(fmt.Errorf("sync redirected writes: %w", err))
		}
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

// Trim punches a hole; the range reads as zeros afterwards.
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	return v.Zero(ctx, off, length, zeroFlagsFromFUA(fua))
}

func zeroFlagsFromFUA(fua bool) block.ZeroFlags {
	if fua {
		return block.ZeroFUA
	}
	return 0
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
	err := v.splitWrite(off, length, func(o, n int64, redirect bool) error {
		if redirect {
			return v.writeRedirected(ctx, nil, o, n)
		}
		t := v.beginWrite(ctx, o, n)
		err := v.zero(o, n, flags)
		v.endWrite(t)
		return err
	})
	v.afterWrite(ctx, off, length)
	if err != nil {
		return err
	}
	if flags&block.ZeroFUA != 0 {
		return v.sync()
	}
	return nil
}

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

// Extents reports data and holes from the filesystem (SEEK_DATA/SEEK_HOLE).
// A block device reports all data.
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	if v.isDevice {
		return []block.Extent{{Length: length}}, nil
	}
	ext, err := fileExtents(int(v.f.Fd()), off, length, v.Size())
	if err != nil {
		return nil, err
	}
	return v.overlayExtents(ext, off, length), nil
}

// fileExtents walks SEEK_DATA/SEEK_HOLE over [off, off+length).
func fileExtents(fd int, off, length, size int64) ([]block.Extent, error) {
	end := min(off+length, size)
	var out []block.Extent
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // only a hole from here to EOF
		} else if err != nil {
			return []block.Extent{{Length: end - off}}, nil // filesystem without SEEK_DATA: all data
		}
		if data > off {
			n := min(data, end) - off
			out = append(out, block.Extent{Length: n, Flags: block.StateHole | block.StateZero})
			off += n
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		n := min(hole, end) - off
		out = append(out, block.Extent{Length: n})
		off += n
		if len(out) >= 1024 {
			break
		}
	}
	return out, nil
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

// Close stops copy-out workers (their work resumes at the next Open),
// flushes the live image and closes it.
func (v *Volume) Close() error {
	v.stopWorkers()
	var err error
	if v.rd != nil {
		v.rd.retirer.Wait()
		if !v.readOnly && v.rd.count.Load() > 0 {
			// Nothing copying: merge now rather than at the next start.
			if rerr := v.retire(context.Background(), false); rerr != nil && !errors.Is(rerr, errStillCopying) {
				v.log.Warn("redirected writes stay in their side files until the next start", "live", v.path, "err", rerr)
			}
		}
	}
	if ferr := v.flushTrackers(); err == nil {
		err = ferr
	}
	if !v.readOnly {
		if serr := v.sync(); err == nil {
			err = serr
		}
	}
	if cerr := v.f.Close(); err == nil {
		err = cerr
	}
	if cerr := v.track.Load().close(); err == nil {
		err = cerr
	}
	if v.jr != nil {
		if cerr := v.jr.close(); err == nil {
			err = cerr
		}
	}
	if v.side != nil {
		if cerr := v.side.close(); err == nil {
			err = cerr
		}
	}
	return err
}

func mapErr(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %v", block.ErrNoSpace, err)
	}
	return err
}

// Backing returns the live image's descriptor for reads of [off,
// off+length): the live disk's content is exactly the image's, so a
// frontend may splice from it without a copy (fusefs.Backed). The
// descriptor stays valid until Close.
func (v *Volume) Backing(off, length int64) (fd uintptr, fdOff int64, ok bool) {
	if v.overlaps(off, length) {
		return 0, 0, false // redirected writes are not in the image
	}
	return v.f.Fd(), off, true
}

// TryReadAt reads the live image only if every byte is in the page cache
// (preadv2 with RWF_NOWAIT), so the NBD server can answer cached small
// reads without handing them to a worker (block.TryReader).
func (v *Volume) TryReadAt(p []byte, off int64) bool {
	if len(p) == 0 || v.overlaps(off, int64(len(p))) {
		return false
	}
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	v.touch()
	n, _, errno := unix.Syscall6(unix.SYS_PREADV2, v.f.Fd(), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), uintptr(off>>32), unix.RWF_NOWAIT)
	return errno == 0 && int(n) == len(p)
}

var (
	_ block.TryReader = (*Volume)(nil)
	_ block.Backed    = (*Volume)(nil)
)
