// Package blocktest holds block.Devices for tests of frontends and their
// users: a file-backed one (pread/pwrite, fallocate, SEEK_DATA/SEEK_HOLE),
// an in-memory one, a wrapper that runs a hook (to inject faults or
// delays) before every call, and a fixed ExtentMap.
package blocktest
