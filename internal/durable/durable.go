// Package durable holds the few filesystem steps that make a change
// survive a power cut, written once for every package that needs them.
package durable

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// SyncDir makes the entries of dir (files created, renamed or removed in
// it) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// SyncParent makes path's directory entry durable.
func SyncParent(path string) error { return SyncDir(filepath.Dir(path)) }

// CreateFile makes the file at path, replacing any, with size bytes
// allocated (so that writes into it need no new space on a full
// filesystem) and head written at its start, and makes it and its
// directory entry durable: it is built under a temporary name and renamed.
// It returns the file open for reading and writing.
func CreateFile(path string, size int64, head []byte) (*os.File, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, size)
	if err == nil {
		_, err = f.WriteAt(head, 0)
	}
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = SyncParent(path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	return f, nil
}
