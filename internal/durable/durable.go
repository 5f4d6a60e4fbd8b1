// Package durable holds the few filesystem steps that make a change
// survive a power cut, written once for every package that needs them.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
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
