// Package nbd is Cairn's NBD protocol server. It serves any block.Device (the
// live volume, a read-only snapshot view, a clone, an in-memory disk in
// tests) to qemu, libnbd's tools, fio and the kernel's nbd client; it knows
// nothing of snapshots, chains or the store. The protocol is the one in
// NetworkBlockDevice/nbd doc/proto.md, with qemu's qemu: metadata
// namespace; proto.go names the sections each wire constant comes from.
//
// # Using it
//
// The daemon implements Exporter (export name -> *Export) and runs a
// Server on each listener:
//
//	srv := nbd.NewServer(nbd.Options{Exporter: exports, Logger: log})
//	go srv.Serve(unixListener)
//	...
//	srv.Connections()               // who is connected to what
//	srv.Disconnect(ctx, "disk1")    // before deleting disk1
//	srv.Shutdown(ctx)               // on SIGTERM
//
// ServeConn serves one already accepted connection (socket activation).
// ServeTransmission serves a connection that skips negotiation, from the
// first byte in the transmission phase of a given export: the kernel's
// nbd driver, told the size and Export.Flags over netlink (nbd/kernel).
// Package nbdtest has backends, an Exporter and a test server.
//
// # Negotiation
//
// Fixed newstyle only, with NBD_FLAG_NO_ZEROES. Options: NBD_OPT_GO,
// NBD_OPT_INFO (answered with NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, and
// NBD_INFO_NAME / NBD_INFO_DESCRIPTION when asked), NBD_OPT_EXPORT_NAME,
// NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY,
// NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT and, with
// Options.TLS, NBD_OPT_STARTTLS (tls.go: SELECTIVETLS on Serve's
// listeners, where an export refuses a plain client through
// ErrTLSRequired; FORCEDTLS on ServeTLS's). Every other option gets
// NBD_REP_ERR_UNSUP after its data is skipped. The Exporter learns who the
// client is from PeerFrom(ctx): the socket (a Unix socket's peer
// credentials) and the TLS session. Option data over 64 KiB is skipped
// and refused with NBD_REP_ERR_TOO_BIG; over 16 MiB, or any breach of a
// MUST (bad magic, unknown client flags), closes the connection with one
// log line. Option haggling must finish within Options.HandshakeTimeout,
// and reads through a 4 KiB buffer (the transmission phase's is 128 KiB),
// so a connection that never gets past it costs little. At most
// Options.MaxConns connections are held; Options.IdleTimeout, when set,
// closes one that has nothing in flight and sent nothing for that long.
//
// Meta contexts: base:allocation, answered by block.Device.Extents, plus
// whatever Export.Contexts returns when the client negotiates (for example
// qemu:dirty-bitmap:SNAP, answered by the block.ExtentMap). A query ending in a
// colon lists every context under it ("base:", "qemu:",
// "qemu:dirty-bitmap:"); other queries match one name exactly; listing
// with no query lists all; a query without a namespace is
// NBD_REP_ERR_INVALID. The contexts are looked up again in the export the
// client finally opens; one that has vanished since it was selected keeps
// answering through the block.ExtentMap object that was selected.
//
// Transmission flags follow the spec exactly: HAS_FLAGS always; for a
// writable export SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES and
// SEND_FAST_ZERO; READ_ONLY and none of those for a read-only one;
// SEND_CACHE always; SEND_DF once structured replies are on;
// CAN_MULTI_CONN only when Export.MultiConn. Block sizes default to 1 /
// 4096 / 32 MiB and are always sent with NBD_INFO_BLOCK_SIZE.
//
// # Requests
//
// READ answers with structured replies when negotiated: one OFFSET_DATA
// chunk, or, for reads of 64 KiB and more, OFFSET_DATA and OFFSET_HOLE
// chunks following block.Device.Extents so zeros are not sent (NBD_CMD_FLAG_DF
// forces a single data chunk); simple replies otherwise. Reads of 64 KiB
// and more from a backend that implements block.Backed (a range held by an
// ordinary file, as cow.Volume's live image) are sent with sendfile(2),
// never copied through the server. WRITE, TRIM and
// WRITE_ZEROES pass FUA, NO_HOLE and FAST_ZERO to the backend. CACHE calls
// the backend's block.Cacher if it has one, else succeeds. BLOCK_STATUS returns
// one chunk per selected context, clipped to the request (one extent with
// REQ_ONE), neighbours with equal flags merged, at most 2^20 descriptors.
// DISC answers everything in flight, then closes.
//
// Errors ("Error values"): unknown commands or flags, misaligned requests,
// READ or WRITE over the maximum payload, and ranges past the end get
// EINVAL (writes and zeroing past the end ENOSPC); write commands on a
// read-only export EPERM. The connection lives on, and the data of a
// refused WRITE is read and dropped (up to 64 MiB; beyond that the client
// is hung up on). block.Device errors map through errnoOf: block.ErrNotFast ->
// ENOTSUP, block.ErrNoSpace (and ENOSPC, EDQUOT, EFBIG) -> ENOSPC, block.ErrReadOnly
// -> EPERM, block.ErrInvalid -> EINVAL, block.ErrShutdown -> ESHUTDOWN, anything else
// EIO, logged (at most ten lines a second per connection). A panic in a
// backend call is recovered, logged with its stack and answered EIO.
// Garbage where a request header should be closes that connection only.
//
// # Concurrency and ordering
//
// Per connection one goroutine reads requests (into pooled buffers: no
// allocation per request once warm) and up to Options.MaxWorkers workers
// call the backend, so many requests are in flight and replies go out in
// completion order, which the spec allows. At most Options.MaxInFlight
// requests and Options.MaxInFlightBytes of large payloads are held per
// connection; beyond that the reader waits. Replies that complete together
// leave in one write.
//
// Handing a request to a worker costs more than a cached 4 KiB read, so
// the reader answers small reads itself when the backend implements
// block.TryReader and has the data in memory (preadv2 with RWF_NOWAIT), and runs
// small non-FUA writes itself while the backend answers them within
// microseconds (after a slow one, writes go to workers for a while; see
// Options.WritesOnWorkers). Their replies leave in one write when the
// reader runs out of buffered requests.
//
// A FLUSH waits until every write command received before it on the same
// connection has completed, then calls block.Device.Flush: so a client that
// pipelines WRITE, WRITE, FLUSH gets what it expects, which is stronger
// than the spec's "writes already replied to". FUA requests are durable
// when answered. Backends may be called concurrently from every connection
// and request; with MultiConn a Flush must cover writes completed on every
// connection.
//
// # Ending connections
//
// Shutdown and Disconnect stop a connection gracefully: it reads no further
// requests, answers those in flight, flushes the backend if this
// connection wrote since its last flush, closes the socket and calls the
// export's release. If their context ends first the rest are closed at
// once and backend calls see a cancelled context. A client that hangs up
// gets the same teardown (its replies go nowhere).
package nbd
