// Package nbdtest holds what tests of NBD frontends and their users need:
// a file-backed Backend (pread/pwrite, fallocate, SEEK_DATA/SEEK_HOLE), an
// in-memory one, a fault-injecting wrapper, a fixed meta context, a
// map-based Exporter, and Serve, which runs an nbd.Server on a unix socket
// in a test's temporary directory.
package nbdtest
