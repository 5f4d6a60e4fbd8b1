package cow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

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
	// ReadOnly opens the live image read-only; writes fail with
	// block.ErrReadOnly and no snapshots can be taken.
	ReadOnly bool

	// Store keeps the disk's snapshot chain. Without it the volume tracks
	// changes in memory only and cannot take snapshots.
	Store *store.Store
	// DiskID names the disk's chain in the store; stable for the disk's life.
	DiskID uint64
	// TrackPrefix is the path prefix of the disk's crash-safe change
	// tracking: tracker files "<prefix>.<epoch>" and redirected writes
	// "<prefix>.row.<epoch>". Required with a Store.
	TrackPrefix string
	// Logger receives copy-out and recovery messages. Nil: slog.Default().
	Logger *slog.Logger
	// CopyOutShare is the share of time (0 < share <= 1) a copy-out
	// worker may run while the disk has guest I/O (in the last
	// busyWindow); when idle it runs flat out. 0 means DefaultCopyOutShare.
	CopyOutShare float64
	// Origin makes the volume a clone (clone.go): its unwritten pages read
	// from these layers of the store (the parent's chain as of the
	// snapshot cloned, then the parent's origin), which must exist for as
	// long as the clone has them. Nil: an ordinary disk.
	Origin []store.Layer
	// CopyOnRead makes a clone's reads copy the blocks they read from
	// the origin into its live image (as a first write would, without
	// changing a byte), so data read once is read locally afterwards.
	CopyOnRead bool
	// OnWrite, if set, is called after every completed write, trim or zero
	// with the request's context and range, after the write gate is
	// released and before the write returns (the FUSE view uses it to drop
	// stale page cache; the context tells it which frontend wrote).
	OnWrite func(ctx context.Context, off, length int64)
	// Image, when set, is the live image already opened by the caller
	// (who checked what it is: the daemon opens adopted images itself so
	// that no symlink or rename between its checks and the open is
	// followed). Open takes it over; path then only names it in messages.
	Image *os.File

	hooks *testHooks // tests in this package only
}

// testHooks let this package's tests hold or fail the engine at chosen
// points. Production volumes have none.
type testHooks struct {
	// beforeMark runs at the start of every in-place write, before it
	// marks its blocks (after the caller chose to write in place).
	beforeMark atomic.Pointer[func(off int64)]
	// inFlight runs inside every in-place write while it is in flight
	// (begun in its epoch, not yet issued to the live image).
	inFlight atomic.Pointer[func(off int64)]
	// beforeCopyOut runs when a copy-out worker starts its work.
	beforeCopyOut atomic.Pointer[func(ctx context.Context)]
	// sideWriteErr, when set, is the result of every side-file write.
	sideWriteErr atomic.Pointer[error]
	// afterSeal runs in a group seal after this volume's epoch is sealed
	// and before the next volume's (to widen the window between them).
	afterSeal atomic.Pointer[func()]
	// recordErr, when set, is the result of every snapshot record write.
	recordErr atomic.Pointer[error]
}

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

	// gate: lock 3 of doc.go. Taking it exclusively holds new writes at
	// the frontend boundary and waits for the ones in flight; a seal does
	// not take it (see tracker.seal).
	gate sync.RWMutex
	size int64 // guarded by gate
	// track is the current epoch's tracker: replaced under mu by a seal
	// (and under the gate's exclusive side when a seal is undone); read
	// anywhere.
	track atomic.Pointer[tracker]
	// shape counts changes a write must not straddle (seals, grows, undone
	// seals): a write that prepared under one shape prepares again.
	shape atomic.Uint64
	// sealing is the tracker of an epoch sealed but not yet committed.
	sealing atomic.Pointer[tracker]
	// held, while a group of volumes is sealed at one instant, is a
	// channel closed when writes may go on: a write arriving meanwhile
	// waits for it (enter).
	held atomic.Pointer[chan struct{}]
	// lastIO is when the last guest read or write arrived (unix ns): the
	// copy-out workers pace themselves while it is recent.
	lastIO atomic.Int64
	// trackLost is set when a change-tracking write failed: the next
	// snapshot then treats every block as changed.
	trackLost atomic.Bool

	rd   *redirects // redirected writes (rindex.go); nil without a store
	side *sideFiles // where they are (side.go); nil without a store

	// origin and local make the volume a clone (clone.go); nil for a disk.
	origin atomic.Pointer[[]store.Layer]
	local  *localPages

	chain // snapshot state (chain.go)
}

var (
	_ block.Device    = (*Volume)(nil)
	_ block.TryReader = (*Volume)(nil)
	_ block.Backed    = (*Volume)(nil)
)

// Open opens the live image at path (a regular file or a block device),
// recovers its change tracking and snapshot chain after a crash, and
// resumes unfinished copy-outs.
func Open(path string, opts Options) (*Volume, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	err := ValidBlockSize(bs)
	if err == nil && opts.Store != nil && !opts.ReadOnly && opts.TrackPrefix == "" {
		err = fmt.Errorf("open live image %s: a volume with a snapshot store needs a TrackPrefix", path)
	}
	if err != nil {
		if opts.Image != nil {
			opts.Image.Close()
		}
		return nil, err
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f := opts.Image
	if f == nil {
		if f, err = os.OpenFile(path, flag, 0); err != nil {
			return nil, fmt.Errorf("open live image: %w", err)
		}
	}
	v := &Volume{path: path, f: f, readOnly: opts.ReadOnly, blockSize: int64(bs), opts: opts, log: opts.Logger}
	if v.log == nil {
		v.log = slog.Default()
	}
	v.changed = make(chan struct{})
	v.liveSync = newGroupSync(func() error { return unix.Fdatasync(int(f.Fd())) })
	for 1<<v.shift != bs {
		v.shift++
	}
	if v.size, v.isDevice, err = imageSize(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("live image %s: %w", path, err)
	}
	if len(opts.Origin) > 0 {
		if opts.Store == nil {
			f.Close()
			return nil, fmt.Errorf("open clone %s: a clone needs the store its origin is in", path)
		}
		if err := v.openClone(); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := v.openChain(); err != nil {
		f.Close()
		return nil, err
	}
	return v, nil
}

// imageSize is the size of a regular file or a block device.
func imageSize(f *os.File) (size int64, isDevice bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		var sz uint64
		if err := ioctlUint64(int(f.Fd()), unix.BLKGETSIZE64, &sz); err != nil {
			return 0, true, fmt.Errorf("size of block device: %w", err)
		}
		return int64(sz), true, nil
	case fi.Mode().IsRegular():
		return fi.Size(), false, nil
	}
	return 0, false, errors.New("neither a regular file nor a block device")
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

// blockRange is the first and last block of [off, off+length) (one block
// for an empty range).
func (v *Volume) blockRange(off, length int64) (first, last uint64) {
	return uint64(off >> v.shift), uint64((off + max(length, 1) - 1) >> v.shift)
}

func (v *Volume) pagesPerBlock() int { return int(v.blockSize / pageSize) }

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

// Close stops copy-out workers (their work resumes at the next Open),
// merges redirected writes into the live image if nothing copies, makes
// change tracking and the live image durable, and closes it.
func (v *Volume) Close() error {
	v.stopWorkers()
	v.recorder.Wait()
	if n := v.writeUnrecorded(); n > 0 {
		v.log.Warn("could not record the failure of snapshots: they will copy out again at the next start", "live", v.path, "snapshots", n)
	}
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
	if v.side != nil {
		if cerr := v.side.close(); err == nil {
			err = cerr
		}
	}
	if cerr := v.marks.close(); err == nil {
		err = cerr
	}
	return err
}

// SyncError returns why the live image can no longer be made durable (a
// failed fdatasync: the kernel may have dropped the pages it was to write,
// so every later flush fails too until the volume is reopened), or nil.
func (v *Volume) SyncError() error {
	if err := v.liveSync.broken(); err != nil {
		return fmt.Errorf("syncing the live image failed (%v): every flush fails until cairnd restarts, once its disk is healthy", err)
	}
	return nil
}

// mapErr turns a full filesystem into block.ErrNoSpace.
func mapErr(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("%w: %v", block.ErrNoSpace, err)
	}
	return err
}
