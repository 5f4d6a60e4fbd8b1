package daemon

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Every rule a request's fields must follow, each stated once. A broken
// rule is a block.ErrInvalid error whose Field names the API field (the
// JSON member, path segment or query parameter) and whose message starts
// with that name, so the CLI can point at the flag and a script's author
// sees what to fix (a well-formed value that conflicts, such as a taken
// name, names its field in Field too). Rules that depend on the daemon's state (a disk that
// exists, a snapshot that is readable) are not here: they are checked
// where the state is, under its lock.

// API field names, as requests spell them.
const (
	fieldName        = "name"
	fieldDisk        = "disk"
	fieldSize        = "size"
	fieldBlockSize   = "block_size"
	fieldDescription = "description"
	fieldAdopt       = "adopt"
	fieldFrom        = "from"
	fieldDisks       = "disks"
	fieldConfig      = "config"
	fieldAgentSocket = "agent_socket"
	fieldConsistency = "consistency"
	fieldFromImage   = "from_image"
	// Query parameters that let a request past a refusal; an error that
	// such a parameter would lift names it in Field and says
	// "FIELD=true" in its message (the CLI shows its flag instead).
	fieldForce         = "force"
	fieldDeleteAdopted = "delete_adopted"
	fieldWithSnapshots = "with_snapshots"
)

// fieldError is a request field that breaks a rule: kind (block.ErrInvalid
// unless the field is well formed but names something that conflicts),
// Field set, and a message that starts with the field's name.
func fieldError(kind error, field, format string, args ...any) error {
	return &block.Error{Kind: kind, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// invalidField is fieldError of kind block.ErrInvalid.
func invalidField(field, format string, args ...any) error {
	return fieldError(block.ErrInvalid, field, format, args...)
}

// NameRule is the rule every disk name follows, as error messages state it.
// Names never reach a filesystem path (live images are named by the disk's
// numeric id), and '@' is left free to separate DISK@SNAPSHOT exports.
const NameRule = "1 to 64 characters from a-z A-Z 0-9 . _ -, not starting with '.' or '-'"

// ValidName reports whether name follows NameRule.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// checkDiskName applies NameRule to the disk name in field.
func checkDiskName(field, name string) error {
	if !ValidName(name) {
		return invalidField(field, "%s %q: a name is %s", field, name, NameRule)
	}
	return nil
}

// SnapshotNameRule is the rule every new snapshot name follows (after
// Alibaba's: 2–128 characters, not starting with "auto", which automatic
// snapshots use, nor with a URL scheme). Letters are ASCII only, so that
// no two names can look alike ("snap" and "snаp" with a Cyrillic а).
// Snapshots named under the older rule, which allowed any Unicode letter,
// keep their names: lookups take any name that exists.
const SnapshotNameRule = "2 to 128 characters from a-z A-Z 0-9 . _ - : +, starting with a letter or digit, " +
	"not starting with 'auto' (reserved for automatic snapshots) nor 'http://' or 'https://'"

// checkSnapshotName applies SnapshotNameRule to the name of a new
// snapshot of kind (api.SnapshotManual or api.SnapshotAuto: only manual
// names may not start with "auto").
func checkSnapshotName(name string, kind string) error {
	ok := len(name) >= 2 && len(name) <= 128
	for i, r := range name {
		if !ok {
			break
		}
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		case i > 0 && strings.ContainsRune("._-:+", r):
		default:
			ok = false
		}
	}
	lower := strings.ToLower(name)
	if ok && kind == api.SnapshotManual && strings.HasPrefix(lower, "auto") {
		ok = false
	}
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") {
		ok = false
	}
	if !ok {
		return invalidField(fieldName, "name %q: a snapshot name is %s", name, SnapshotNameRule)
	}
	return nil
}

// MaxDescription bounds a description (it travels in NBD_INFO_DESCRIPTION).
const MaxDescription = 256

// checkDescription applies the rules of a disk's or snapshot's description.
func checkDescription(s string) error {
	if len(s) > MaxDescription {
		return invalidField(fieldDescription, "description: %d bytes is longer than the limit of %d", len(s), MaxDescription)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return invalidField(fieldDescription, "description: must be UTF-8 text without control characters")
	}
	return nil
}

// Size rules for disks.
const (
	// SizeAlign: created and grown disks are a whole number of 4 KiB, so
	// guests with 4 KiB sectors see whole sectors.
	SizeAlign = 4 << 10
	// AdoptAlign: an adopted image must be a whole number of 512-byte
	// sectors (every image qemu-img makes is).
	AdoptAlign = 512
	// MaxDiskSize bounds a disk's size.
	MaxDiskSize = 64 << 40
	// MaxBlocks bounds size/block size: the change-tracking bitmap of a
	// disk costs one bit per block in memory (128 MiB at the bound).
	MaxBlocks = 1 << 30
	// maxBlockSize bounds block_size before cow's own rule sees it (an
	// int on every platform).
	maxBlockSize = 1 << 30
)

// parseSize parses a size field; empty is an error naming the field.
func parseSize(field string, s api.Size) (int64, error) {
	if s == "" {
		return 0, invalidField(field, "%s is required: a number of bytes or a number with a unit (K, M, G, T), such as 10G", field)
	}
	n, err := api.ParseSize(string(s))
	if err != nil {
		return 0, invalidField(field, "%s: %v", field, err)
	}
	return n, nil
}

// parseBlockSize parses block_size: empty is the default, anything else a
// block size cow accepts.
func parseBlockSize(s api.Size) (int, error) {
	if s == "" {
		return cow.DefaultBlockSize, nil
	}
	bs, err := parseSize(fieldBlockSize, s)
	if err != nil {
		return 0, err
	}
	if bs > maxBlockSize || cow.ValidBlockSize(int(bs)) != nil {
		return 0, invalidField(fieldBlockSize, "block_size: %d bytes: must be a power of two from 4 KiB to 4 MiB", bs)
	}
	return int(bs), nil
}

// parseDiskSize parses the size of a disk to create (adopting: none, the
// disk takes its image's).
func parseDiskSize(req api.CreateDiskRequest, blockSize int) (int64, error) {
	if req.Adopt != "" {
		if req.Size != "" {
			return 0, invalidField(fieldSize, "size: leave it out when adopting: the disk takes the size of %s (grow it afterwards if needed)", req.Adopt)
		}
		return 0, nil
	}
	size, err := parseSize(fieldSize, req.Size)
	if err != nil {
		return 0, err
	}
	return size, checkDiskSize(size, blockSize)
}

// checkDiskSize applies the size rules to a created or grown disk.
func checkDiskSize(size int64, blockSize int) error {
	switch {
	case size%SizeAlign != 0:
		return invalidField(fieldSize, "size: %d bytes is not a multiple of 4 KiB (4096 bytes)", size)
	case size > MaxDiskSize:
		return invalidField(fieldSize, "size: %s is larger than the limit of %s", api.FormatSize(size), api.FormatSize(MaxDiskSize))
	}
	return checkBlocks(fieldSize, size, blockSize)
}

// checkBlocks bounds the number of blocks of a disk of size whose size
// comes from field.
func checkBlocks(field string, size int64, blockSize int) error {
	if blocks := (size + int64(blockSize) - 1) / int64(blockSize); blocks > MaxBlocks {
		return invalidField(field, "%s: %s in %s blocks is %d blocks, over the limit of %d; choose a larger block_size",
			field, api.FormatSize(size), api.FormatSize(int64(blockSize)), blocks, MaxBlocks)
	}
	return nil
}

// checkGrowSize applies the rules of a disk's new size: larger than cur,
// and a size a disk may have.
func checkGrowSize(size, cur int64, blockSize int) error {
	switch {
	case size == cur:
		return invalidField(fieldSize, "size: the disk is already %s (%d bytes); give a larger size", api.FormatSize(cur), cur)
	case size < cur:
		return invalidField(fieldSize, "size: %s is smaller than the disk's %s: disks only grow (shrinking would lose data)", api.FormatSize(size), api.FormatSize(cur))
	}
	return checkDiskSize(size, blockSize)
}

// checkAdoptedSize applies the size rules to an adopted image of size
// bytes (known once it is open).
func checkAdoptedSize(path string, size int64, blockSize int) error {
	if size == 0 || size%AdoptAlign != 0 {
		return invalidField(fieldAdopt, "adopt: %s is %d bytes: an adopted image must be a non-zero multiple of 512 bytes", path, size)
	}
	return checkBlocks(fieldAdopt, size, blockSize)
}

// checkChangesRange checks the snapshots a changes request compares.
func checkChangesRange(from string) error {
	if from == "" {
		return invalidField(fieldFrom, "from is required: the snapshot to compare against")
	}
	return nil
}
