// Package block is the contract between Cairn's frontends (the NBD server,
// the FUSE tree, kernel attach) and what they serve (a live volume, a
// read-only snapshot view, a clone, an in-memory disk in tests, a
// fault-injecting wrapper): a Device of fixed size answering reads,
// writes, flushes, trims, zeroing and allocation queries, with optional
// capabilities as separate one-method interfaces.
//
// It is a leaf: it imports nothing of Cairn's, so the frontends and the
// engine (cow) both import it and neither imports the other. The errors
// here are the one vocabulary every layer speaks; each frontend maps them
// to its own codes once (nbd: NBD error values, fusefs: errnos, daemon:
// HTTP statuses).
package block

import "context"

// Device is the storage behind one export or file. A frontend has already
// checked every offset and length against Size before it calls a method.
// Methods may be called concurrently.
type Device interface {
	// Size is the device's size in bytes.
	Size() int64
	// ReadAt fills p from off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With fua the data is durable on return.
	// A read-only device returns ErrReadOnly.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write completed before the call durable.
	Flush(ctx context.Context) error
	// Trim releases the range; it reads as zeros afterwards. With fua the
	// trim is durable on return.
	Trim(ctx context.Context, off, length int64, fua bool) error
	// Zero makes the range read as zeros.
	Zero(ctx context.Context, off, length int64, flags ZeroFlags) error
	// Extents describes the allocation of [off, off+length) (holes flagged
	// StateHole|StateZero). It may describe less than asked (at least one
	// extent) or more; the caller clips.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// ZeroFlags modify Device.Zero.
type ZeroFlags uint8

const (
	// ZeroFUA: the zeroes are durable on return.
	ZeroFUA ZeroFlags = 1 << iota
	// ZeroNoHole: the range must stay allocated (write real zeros).
	ZeroNoHole
	// ZeroFast: fail with ErrNotFast instead of doing it slowly.
	ZeroFast
)

// Extent is one run of an allocation or change map. Flags depend on the
// map: for allocation StateHole and StateZero; for changed blocks
// StateDirty.
type Extent struct {
	Length int64
	Flags  uint32
}

// Extent flags. Their values are NBD's on the wire (nbd-proto.md,
// "base:allocation metadata context"; qemu's interop notes for
// qemu:dirty-bitmap), so the NBD server sends them unchanged.
const (
	StateHole  uint32 = 1 << 0
	StateZero  uint32 = 1 << 1
	StateDirty uint32 = 1 << 0
)

// ExtentMap answers a map of a device other than its allocation, such as
// the blocks changed since a snapshot (served as qemu:dirty-bitmap:SNAP).
type ExtentMap interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Cacher is implemented by devices that can prefetch a range. Devices
// without it get a successful no-op.
type Cacher interface {
	Cache(ctx context.Context, off, length int64) error
}

// TryReader is implemented by devices that can serve a read without
// waiting for I/O when the data is already in memory, such as a file whose
// pages are cached (preadv2 with RWF_NOWAIT). The NBD server answers small
// reads that succeed this way on the connection's reader goroutine.
type TryReader interface {
	// TryReadAt fills all of p from off and returns true, or returns false
	// (leaving p undefined) when that would wait for I/O or fail.
	TryReadAt(p []byte, off int64) bool
}

// Backed is implemented by devices whose content in a range is an
// ordinary file's (a live disk's image). Frontends send such ranges with
// sendfile(2) or splice(2), so the data never passes through the daemon's
// memory.
type Backed interface {
	// Backing returns the descriptor and offset that hold [off,
	// off+length), or ok false (then ReadAt serves the read). The
	// descriptor stays open while the device is open. Bytes past the end
	// of the file read as zeros.
	Backing(off, length int64) (fd uintptr, fdOff int64, ok bool)
}
