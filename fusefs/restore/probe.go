package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// probe returns the filesystem type in [off, off+size) of file ("" when
// there is none it recognises). It asks blkid (util-linux), which knows
// every filesystem, and reads the ext and xfs superblocks itself where
// blkid is missing.
func probe(ctx context.Context, file string, off, size int64) (string, error) {
	if _, err := exec.LookPath("blkid"); err != nil {
		return probeMagic(file, off)
	}
	// -p: probe the data itself, not blkid's cache.
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE",
		"-O", strconv.FormatInt(off, 10), "-S", strconv.FormatInt(size, 10), file).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return "", nil // nothing found
	}
	if err != nil {
		return "", fmt.Errorf("blkid %s at %d: %w %s", file, off, err, bytes.TrimSpace(stderr(err)))
	}
	return strings.TrimSpace(string(out)), nil
}

func stderr(err error) []byte {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.Stderr
	}
	return nil
}

// Superblock facts (ext4: Documentation/filesystems/ext4/super.rst; xfs:
// xfs_format.h).
const (
	extSuperOffset = 1024
	extMagicOffset = 0x38
	extMagic       = 0xEF53
	extCompatOff   = 0x5C
	extIncompatOff = 0x60
	extHasJournal  = 0x4 // compat: has_journal
	// extIncompatExt3 are the incompatible features ext3 knows (filetype,
	// recover, journal_dev, meta_bg); any other one (extents, 64bit,
	// flex_bg...) needs ext4.
	extIncompatExt3 = 0x1e
)

// probeMagic recognises ext2/3/4 and xfs by their superblocks at off.
func probeMagic(file string, off int64) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("probe %s: %w", file, err)
	}
	defer f.Close()
	buf := make([]byte, extSuperOffset+1024)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("probe %s at %d: %w", file, off, err)
	}
	if string(buf[:4]) == "XFSB" {
		return "xfs", nil
	}
	sb := buf[extSuperOffset:]
	if binary.LittleEndian.Uint16(sb[extMagicOffset:]) != extMagic {
		return "", nil
	}
	compat := binary.LittleEndian.Uint32(sb[extCompatOff:])
	incompat := binary.LittleEndian.Uint32(sb[extIncompatOff:])
	switch {
	case incompat&^extIncompatExt3 != 0:
		return "ext4", nil
	case compat&extHasJournal != 0:
		return "ext3", nil
	}
	return "ext2", nil
}
