package nbd

import (
	"context"
	"errors"
)

// Backend is the storage behind one export. The server has already checked
// every offset and length against Size and the export's block-size limits
// before it calls a method. Methods may be called concurrently from many
// connections and many in-flight requests.
type Backend interface {
	// Size is the export's size in bytes.
	Size() int64
	// ReadAt fills p from off.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With fua the data is durable on return.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every write completed before the call durable.
	Flush(ctx context.Context) error
	// Trim tells the backend the range is no longer needed; later reads may
	// return zeros or old data (the server reads zeros after a trim only if
	// the backend guarantees it). With fua the trim is durable on return.
	Trim(ctx context.Context, off, length int64, fua bool) error
	// Zero makes the range read as zeros.
	Zero(ctx context.Context, off, length int64, flags ZeroFlags) error
	// Extents describes the allocation of [off, off+length) for the
	// base:allocation context. It may describe less than asked (at least
	// one extent) or more; the server clips.
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// ZeroFlags modify Backend.Zero.
type ZeroFlags uint8

const (
	// ZeroFUA: the zeroes are durable on return.
	ZeroFUA ZeroFlags = 1 << iota
	// ZeroNoHole: the range must stay allocated (write real zeros).
	ZeroNoHole
	// ZeroFast: fail with ErrNotFast instead of doing it slowly.
	ZeroFast
)

// Extent is one run of a block-status reply. Flags are context specific:
// for base:allocation StateHole and StateZero; for qemu:dirty-bitmap
// StateDirty.
type Extent struct {
	Length int64
	Flags  uint32
}

// Block-status flags (proto.md "base:allocation metadata context" and
// qemu's interop notes for qemu:dirty-bitmap).
const (
	StateHole  uint32 = 1 << 0
	StateZero  uint32 = 1 << 1
	StateDirty uint32 = 1 << 0
)

// Cacher is implemented by backends that can prefetch a range (NBD_CMD_CACHE).
// Backends without it get a successful no-op.
type Cacher interface {
	Cache(ctx context.Context, off, length int64) error
}

// TryReader is implemented by backends that can serve a read without
// waiting for I/O when the data is already in memory, such as a file whose
// pages are cached (preadv2 with RWF_NOWAIT). The server answers small
// reads that succeed this way on the connection's reader goroutine, which
// saves handing each one to a worker; the others go to ReadAt as usual.
type TryReader interface {
	// TryReadAt fills all of p from off and returns true, or returns false
	// (leaving p undefined) when that would wait for I/O or fail.
	TryReadAt(p []byte, off int64) bool
}

// Backed is implemented by backends whose content in a range is an
// ordinary file's (a live disk's image). The server sends large reads of
// such ranges with sendfile(2), so the data never passes through its
// memory. (The method is the one fusefs splices from.)
type Backed interface {
	// Backing returns the descriptor and offset that hold [off,
	// off+length), or ok false (then ReadAt serves the read). The
	// descriptor must stay open while the export is open. Bytes past the
	// end of the file read as zeros.
	Backing(off, length int64) (fd uintptr, fdOff int64, ok bool)
}

// MetaContext answers block status for one named context other than
// base:allocation (for example qemu:dirty-bitmap:SNAP).
type MetaContext interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Errors a Backend may return to choose the NBD error sent to the client.
// Any other error is sent as EIO (and logged).
var (
	ErrNotFast  = errors.New("nbd: fast zero not possible")  // ENOTSUP
	ErrNoSpace  = errors.New("nbd: no space left")           // ENOSPC
	ErrReadOnly = errors.New("nbd: export is read-only")     // EPERM
	ErrInvalid  = errors.New("nbd: invalid request")         // EINVAL
	ErrShutdown = errors.New("nbd: server is shutting down") // ESHUTDOWN
)

// Export is one name a client can open.
type Export struct {
	Name        string
	Description string
	Backend     Backend
	ReadOnly    bool
	// MultiConn is advertised (NBD_FLAG_CAN_MULTI_CONN) only when true:
	// every connection sees every other's completed writes and a FLUSH on
	// one flushes all.
	MultiConn bool
	// Block sizes advertised with NBD_INFO_BLOCK_SIZE; zero means the
	// defaults (1, 4096, 32 MiB).
	MinBlock, PrefBlock, MaxBlock uint32
	// Contexts returns the meta contexts beyond base:allocation, keyed by
	// full name ("qemu:dirty-bitmap:snap1"). It is called at negotiation
	// time so the set can change while the server runs. May be nil.
	Contexts func() map[string]MetaContext
}

// Exporter resolves export names. The daemon implements it; tests use a map.
type Exporter interface {
	// Open returns the export for name, or an error wrapping
	// ErrUnknownExport. release is called once when the connection that
	// opened it ends.
	Open(ctx context.Context, name string) (exp *Export, release func(), err error)
	// List returns the exports for NBD_OPT_LIST.
	List(ctx context.Context) []ExportInfo
}

// ExportInfo is what NBD_OPT_LIST reports for one export.
type ExportInfo struct {
	Name        string
	Description string
}

// ErrUnknownExport is wrapped by Exporter.Open for names that do not exist.
var ErrUnknownExport = errors.New("nbd: unknown export")
