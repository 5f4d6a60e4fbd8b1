/*
 * SPDX-FileCopyrightText: © Hypermode Inc. <hello@hypermode.com>
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import (
	"fmt"
)

// Truncate would truncate the mmapped file to the given size. On Linux, we truncate
// the underlying file and then call mremap, but on other systems, we unmap first,
// then truncate, then re-map.
func (m *MmapFile) Truncate(maxSz int64) error {
	if err := m.Sync(); err != nil {
		return fmt.Errorf("while sync file: %s, error: %v\n", m.Fd.Name(), err)
	}
	// Cairn patch: growth is allocated (allocate.go), not sparse, so that
	// no write into the grown mapping can fault on a full filesystem.
	if old := int64(len(m.Data)); maxSz > old {
		fi, err := m.Fd.Stat()
		if err != nil {
			return fmt.Errorf("while stat file: %s, error: %w", m.Fd.Name(), err)
		}
		if err := allocate(m.Fd, old, maxSz-old); err != nil {
			m.Fd.Truncate(fi.Size()) // give back what a partial allocation took
			return fmt.Errorf("while growing file: %s to %d bytes: %w", m.Fd.Name(), maxSz, err)
		}
	}
	if err := m.Fd.Truncate(maxSz); err != nil {
		return fmt.Errorf("while truncate file: %s, error: %v\n", m.Fd.Name(), err)
	}

	var err error
	m.Data, err = mremap(m.Data, int(maxSz)) // Mmap up to max size.
	return err
}
