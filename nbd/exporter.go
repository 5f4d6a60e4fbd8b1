package nbd

import (
	"context"
	"errors"

	"github.com/cairn-storage/cairn/block"
)

// Export is one name a client can open.
type Export struct {
	Name        string
	Description string
	Device      block.Device
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
	Contexts func() map[string]block.ExtentMap
	// Observer, when set, is told of every request a client of the export
	// completes (metrics). May be nil.
	Observer Observer
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
