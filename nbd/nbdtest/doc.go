// Package nbdtest holds what tests of the NBD server and its users need
// beyond the devices in block/blocktest: a map-based Exporter, and Serve,
// which runs an nbd.Server on a unix socket in a test's temporary
// directory.
package nbdtest
