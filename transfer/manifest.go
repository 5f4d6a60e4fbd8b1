package transfer

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cairn-storage/cairn/daemon/api"
)

// A machine image directory (docs/export.md) holds one file per disk, the
// machine's configuration document and manifest.json, which says what
// they are. The manifest is versioned: a reader refuses a version it
// does not know rather than misread it.

// ManifestName is the manifest's file name in the directory.
const ManifestName = "manifest.json"

// ManifestVersion is the version this code writes and reads.
const ManifestVersion = 1

// ManifestKind marks a Cairn machine image manifest.
const ManifestKind = "cairn-machine-image"

// Manifest describes a machine image directory.
type Manifest struct {
	Kind    string `json:"kind"`
	Version int    `json:"version"`
	// Image is the image's name; Source what it was made from
	// (MACHINE@SNAPSHOT or DISK@SNAPSHOT).
	Image   string         `json:"image"`
	Source  string         `json:"source,omitempty"`
	Created api.Time       `json:"created"`
	Config  *ManifestFile  `json:"config,omitempty"`
	Disks   []ManifestDisk `json:"disks"` // in the machine's order
}

// ManifestFile is the configuration document's file.
type ManifestFile struct {
	File      string `json:"file"`
	MediaType string `json:"media_type"`
	SHA256    string `json:"sha256"`
}

// ManifestDisk is one disk's file.
type ManifestDisk struct {
	Name        string `json:"name"`
	File        string `json:"file"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual_size"`
	BlockSize   int    `json:"block_size,omitempty"`
	Boot        bool   `json:"boot,omitempty"`
	FileBytes   int64  `json:"file_bytes"`
	SHA256      string `json:"sha256"`
}

// ParseManifest reads a manifest, refusing what is not one of a known
// version or names files outside its directory.
func ParseManifest(data []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s is not JSON: %v", ErrRefused, ManifestName, err)
	}
	switch {
	case m.Kind != ManifestKind:
		return Manifest{}, fmt.Errorf("%w: %s is not a Cairn machine image manifest (kind %q, want %q)", ErrRefused, ManifestName, m.Kind, ManifestKind)
	case m.Version != ManifestVersion:
		return Manifest{}, fmt.Errorf("%w: %s is version %d; this cairn reads version %d: use a cairn as new as the one that wrote it", ErrRefused, ManifestName, m.Version, ManifestVersion)
	case len(m.Disks) == 0:
		return Manifest{}, fmt.Errorf("%w: %s lists no disks", ErrRefused, ManifestName)
	}
	files := map[string]bool{}
	check := func(file string) error {
		if file == "" || file != filepath.Base(file) || strings.HasPrefix(file, ".") || file == ManifestName {
			return fmt.Errorf("%w: %s names the file %q: files are plain names in the image's directory", ErrRefused, ManifestName, file)
		}
		if files[file] {
			return fmt.Errorf("%w: %s names the file %q twice", ErrRefused, ManifestName, file)
		}
		files[file] = true
		return nil
	}
	for _, d := range m.Disks {
		if err := check(d.File); err != nil {
			return Manifest{}, err
		}
		if _, err := LookupFormat(d.Format); err != nil {
			return Manifest{}, fmt.Errorf("%w: disk %q: %v", ErrRefused, d.Name, err)
		}
		if len(d.SHA256) != 64 {
			return Manifest{}, fmt.Errorf("%w: disk %q: sha256 %q is not a SHA-256 in hex", ErrRefused, d.Name, d.SHA256)
		}
	}
	if m.Config != nil {
		if err := check(m.Config.File); err != nil {
			return Manifest{}, err
		}
	}
	return m, nil
}

// configFileName is the configuration document's file name for its media
// type.
func configFileName(mediaType string) string {
	switch {
	case strings.Contains(mediaType, "xml"):
		return "config.xml"
	case strings.Contains(mediaType, "json"):
		return "config.json"
	case strings.Contains(mediaType, "yaml"):
		return "config.yaml"
	}
	return "config.txt"
}

// ImportedDiskName is the name an image's disk gets in a machine made of
// it: NAME-DISK, or, when DISK starts with the image's source machine's
// name, that prefix replaced by NAME (as cairn machine create
// --from-image names them).
func ImportedDiskName(machine, source, disk string) string {
	src, _, _ := strings.Cut(source, "@")
	if rest, ok := strings.CutPrefix(disk, src+"-"); ok && src != "" {
		return machine + "-" + rest
	}
	return machine + "-" + disk
}
