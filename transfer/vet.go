package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cairn-storage/cairn/daemon/api"
)

// Vetting an image file before anything is made of it. An image to import
// may come from anywhere, and a crafted one can name a backing file
// elsewhere on the host (which qemu-img would then read, as the user who
// runs it), loop its backing chain, claim an absurd size, or hide
// corruption that makes reads fail half-way. Each image of the chain is
// looked at with qemu-img info, which never opens a backing file by
// itself; the chain is followed here, so no file outside the allowed
// directories is ever opened.

// ErrRefused wraps every reason an image is refused.
var ErrRefused = errors.New("image refused")

// MaxChain bounds a backing chain's length.
const MaxChain = 16

// VetOptions are the rules an image to import must meet.
type VetOptions struct {
	// Format is the image's format; "" or "auto" lets qemu-img probe it.
	Format string
	// AllowBacking are directories backing files may lie in (after
	// symbolic links are resolved), besides the image's own directory
	// and those below it.
	AllowBacking []string
	// MaxSize bounds the virtual size (default: the largest disk cairnd
	// makes).
	MaxSize int64
}

// Vetted is an image that passed: its format, its chain (the image
// first) and its size.
type Vetted struct {
	File   string       `json:"file"`
	Format Format       `json:"-"`
	Chain  []Info       `json:"chain"`
	Size   int64        `json:"virtual_size"`
	Check  *CheckResult `json:"check,omitempty"`
	// DataBytes estimates the data a disk of it holds (qemu-img measure).
	DataBytes uint64 `json:"data_bytes"`
}

// MaxDiskSize is the largest disk cairnd makes (daemon.MaxDiskSize).
const MaxDiskSize = 64 << 40

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// Vet looks an image file and its backing chain over (VetChain), then
// checks the metadata of each (qemu-img check, where the format has one)
// and measures its data.
func Vet(ctx context.Context, file string, o VetOptions) (Vetted, error) {
	v, err := VetChain(ctx, file, o)
	if err != nil {
		return Vetted{}, err
	}
	for _, in := range v.Chain {
		res, err := qemuCheck(ctx, in.Filename, in.Format)
		if err != nil {
			return Vetted{}, err
		}
		if !res.Clean() {
			return Vetted{}, refused("%s is corrupt: qemu-img check found %d corruption(s) and %d error(s)%s; repair a copy with qemu-img check -r all, or export it again",
				in.Filename, res.Corruptions, res.CheckErrors, suffix(res.Message))
		}
		if in.Filename == v.File {
			r := res
			v.Check = &r
		}
	}
	if v.DataBytes, err = measure(ctx, v.File, v.Chain[0].Format); err != nil {
		return Vetted{}, fmt.Errorf("%w: %s: %v", ErrRefused, file, err)
	}
	return v, nil
}

// VetChain looks an image file and its backing chain over without reading
// any data: a regular file, a format Cairn imports, a virtual size within
// MaxSize, and a backing chain of plain files in the allowed directories
// with no loop.
func VetChain(ctx context.Context, file string, o VetOptions) (Vetted, error) {
	if o.MaxSize <= 0 {
		o.MaxSize = MaxDiskSize
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return Vetted{}, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return Vetted{}, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if !st.Mode().IsRegular() {
		return Vetted{}, refused("%s is not a regular file", file)
	}
	format := o.Format
	if format == "auto" {
		format = ""
	}
	if format != "" {
		f, err := LookupFormat(format)
		if err != nil {
			return Vetted{}, fmt.Errorf("%w: --format: %v", ErrRefused, err)
		}
		format = f.Qemu
	}
	allowed := []string{realDir(filepath.Dir(abs))}
	for _, dir := range o.AllowBacking {
		if d, err := filepath.Abs(dir); err == nil {
			allowed = append(allowed, realDir(d))
		}
	}
	chain, err := vetChain(ctx, abs, format, allowed)
	if err != nil {
		return Vetted{}, err
	}
	v := Vetted{File: abs, Chain: chain, Size: chain[0].VirtualSize}
	v.Format, _ = LookupFormat(chain[0].Format)
	if v.Size <= 0 {
		return Vetted{}, refused("%s: virtual size %d", file, v.Size)
	}
	if v.Size > o.MaxSize {
		return Vetted{}, refused("%s: virtual size %s is more than the largest disk cairn makes (%s): the image is damaged or hostile",
			file, api.FormatSize(v.Size), api.FormatSize(o.MaxSize))
	}
	return v, nil
}

// Check runs qemu-img check on a vetted image file (read-only).
func Check(ctx context.Context, v Vetted) (CheckResult, error) {
	return qemuCheck(ctx, v.File, v.Format.Qemu)
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return " (" + firstLine(msg) + ")"
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// vetChain follows the backing chain from file, refusing unknown formats,
// external data files, encryption, backing files outside allowed, loops
// and chains longer than MaxChain.
func vetChain(ctx context.Context, file, format string, allowed []string) ([]Info, error) {
	var chain []Info
	seen := map[string]bool{}
	for {
		real, err := filepath.EvalSymlinks(file)
		if err != nil {
			return nil, refused("%s: %v", file, err)
		}
		if seen[real] {
			return nil, refused("the backing chain loops: %s is its own backing file (through %d images)", file, len(chain))
		}
		seen[real] = true
		if len(chain) == MaxChain {
			return nil, refused("the backing chain is longer than %d images", MaxChain)
		}
		if err := refuseDescriptor(real); err != nil {
			return nil, err
		}
		in, err := info(ctx, file, format)
		if err == nil && format == "" && in.Format == "raw" && hasVHDFooter(real) {
			in, err = info(ctx, file, "vpc") // a fixed VHD: raw data and a footer, which qemu does not probe
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s cannot be read as an image: %v", ErrRefused, file, err)
		}
		in.Filename = file
		if err := vetOne(in); err != nil {
			return nil, err
		}
		chain = append(chain, in)
		if in.BackingFilename == "" {
			return chain, nil
		}
		next, err := backingPath(in, allowed)
		if err != nil {
			return nil, err
		}
		file, format = next, ""
		if in.BackingFormat != "" {
			f, err := LookupFormat(in.BackingFormat)
			if err != nil {
				return nil, fmt.Errorf("%w: backing file %s of %s: %v", ErrRefused, next, in.Filename, err)
			}
			format = f.Qemu
		}
	}
}

// refuseDescriptor refuses a text vmdk descriptor: it names extent files
// anywhere on the host, and qemu opens those as soon as it opens the
// descriptor, before any check here could see them.
func refuseDescriptor(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return refused("%s: %v", file, err)
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := f.Read(head)
	if strings.Contains(string(head[:n]), "# Disk DescriptorFile") {
		return refused("%s is a vmdk descriptor that names its data files elsewhere: import the data file itself (a monolithic vmdk or the flat file as raw)", file)
	}
	return nil
}

// hasVHDFooter reports whether file ends with a VHD footer (a fixed VHD).
func hasVHDFooter(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() < 512 {
		return false
	}
	cookie := make([]byte, 8)
	_, err = f.ReadAt(cookie, st.Size()-512)
	return err == nil && string(cookie) == "conectix"
}

// vetOne refuses what Cairn does not import of one image's metadata.
func vetOne(in Info) error {
	if _, err := LookupFormat(in.Format); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrRefused, in.Filename, err)
	}
	switch {
	case in.Encrypted || in.FormatSpecific.Data.Encrypt != nil:
		return refused("%s is encrypted: decrypt it first (qemu-img convert --object secret,...)", in.Filename)
	case in.FormatSpecific.Data.DataFile != "":
		return refused("%s keeps its data in an external file (%s): convert it to a self-contained image first", in.Filename, in.FormatSpecific.Data.DataFile)
	case in.FormatSpecific.Data.Corrupt:
		return refused("%s is marked corrupt by qemu: repair a copy with qemu-img check -r all", in.Filename)
	case in.Format == "vmdk" && len(in.FormatSpecific.Data.Extents) > 1:
		return refused("%s is a vmdk with %d extent files: convert it to a single-file vmdk or qcow2 first", in.Filename, len(in.FormatSpecific.Data.Extents))
	case in.Format == "vmdk" && strings.Contains(strings.ToLower(in.FormatSpecific.Data.CreateType), "flat"):
		return refused("%s is a vmdk descriptor whose data is in another file (%s): import the flat file as raw", in.Filename, in.FormatSpecific.Data.CreateType)
	}
	return nil
}

// backingPath resolves an image's backing file and refuses one that is
// not a plain file in an allowed directory.
func backingPath(in Info, allowed []string) (string, error) {
	name := in.BackingFilename
	if strings.HasPrefix(name, "json:") || strings.Contains(name, "://") {
		return "", refused("%s names its backing file with a protocol (%s): only plain files are followed", in.Filename, name)
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(filepath.Dir(in.Filename), name)
	}
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return "", refused("backing file %s of %s: %v", in.BackingFilename, in.Filename, err)
	}
	dir := filepath.Dir(real)
	for _, a := range allowed {
		if dir == a || strings.HasPrefix(dir, a+string(filepath.Separator)) {
			return real, nil
		}
	}
	return "", refused("backing file %s of %s is outside the allowed directories (%s): allow its directory with --allow-backing DIR if you trust it",
		real, in.Filename, strings.Join(allowed, ", "))
}

// realDir resolves symbolic links of an existing directory.
func realDir(dir string) string {
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return r
	}
	return filepath.Clean(dir)
}
