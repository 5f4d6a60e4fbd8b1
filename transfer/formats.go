// Package transfer is the client side of Cairn's exports and imports
// (docs/export.md): it converts between image files and cairnd's NBD
// exports with qemu-img, as the user who runs it, and reports progress to
// the transfer task cairnd keeps (which cleans up if this side stops).
// Image files to import are untrusted: they are vetted (vet.go) before
// any disk is made, and qemu-img reads them under resource limits.
package transfer

import (
	"fmt"
	"slices"
	"strings"
)

// Format is an image file format as users name it, with what qemu calls
// it and what it can do.
type Format struct {
	Name string // qcow2, vmdk, vhd, vhdx, raw
	Qemu string // qemu's driver: vhd is vpc
	// Subformats qemu-img accepts for -o subformat= (the first is the
	// default); none for qcow2 and raw.
	Subformats []string
	// Compress: qemu-img convert -c writes compressed clusters.
	Compress bool
	// Extension of files in machine image directories.
	Extension string
}

// Formats are the formats Cairn exports and imports.
var Formats = []Format{
	{Name: "qcow2", Qemu: "qcow2", Compress: true, Extension: "qcow2"},
	{Name: "vmdk", Qemu: "vmdk", Subformats: []string{"monolithicSparse", "streamOptimized"}, Compress: true, Extension: "vmdk"},
	{Name: "vhd", Qemu: "vpc", Subformats: []string{"dynamic", "fixed"}, Extension: "vhd"},
	{Name: "vhdx", Qemu: "vhdx", Subformats: []string{"dynamic", "fixed"}, Extension: "vhdx"},
	{Name: "raw", Qemu: "raw", Extension: "raw"},
}

// FormatNames lists the formats' names, for messages and completion.
func FormatNames() []string {
	var out []string
	for _, f := range Formats {
		out = append(out, f.Name)
	}
	return out
}

// LookupFormat finds a format by its name or qemu's (vpc is vhd).
func LookupFormat(name string) (Format, error) {
	for _, f := range Formats {
		if f.Name == name || f.Qemu == name {
			return f, nil
		}
	}
	return Format{}, fmt.Errorf("format %q is not one cairn converts (%s)", name, strings.Join(FormatNames(), ", "))
}

// OutputOptions say how an export writes its file.
type OutputOptions struct {
	Format Format
	// Compress writes compressed clusters (qcow2; vmdk, where it means
	// the streamOptimized subformat).
	Compress bool
	// Subformat is qemu's subformat option (vmdk streamOptimized, vhd
	// fixed); "" is the format's default.
	Subformat string
	// ForceSize (vhd) keeps the disk's exact size instead of rounding it
	// to a CHS geometry, as Azure and Hyper-V expect.
	ForceSize bool
	// Backing and BackingFormat make the file an overlay of an earlier
	// export (qcow2 only): blocks not written read from it.
	Backing, BackingFormat string
}

// check applies the rules of the options.
func (o *OutputOptions) check() error {
	f := o.Format
	if o.Compress && !f.Compress {
		return fmt.Errorf("--compress: %s files cannot be compressed (qcow2 and vmdk can)", f.Name)
	}
	if o.Compress && f.Name == "vmdk" {
		switch o.Subformat {
		case "":
			o.Subformat = "streamOptimized"
		case "streamOptimized":
		default:
			return fmt.Errorf("--compress: a compressed vmdk is streamOptimized, not %s", o.Subformat)
		}
	}
	if o.Subformat != "" && !slices.Contains(f.Subformats, o.Subformat) {
		if len(f.Subformats) == 0 {
			return fmt.Errorf("--subformat: %s has no subformats", f.Name)
		}
		return fmt.Errorf("--subformat %q: %s subformats are %s", o.Subformat, f.Name, strings.Join(f.Subformats, ", "))
	}
	if o.ForceSize && f.Name != "vhd" {
		return fmt.Errorf("--force-size is for vhd files only")
	}
	if o.Backing != "" && f.Name != "qcow2" {
		return fmt.Errorf("an incremental export is a qcow2 overlay: use --format qcow2")
	}
	return nil
}

// convertArgs are qemu-img convert's output arguments for o.
func (o OutputOptions) convertArgs() []string {
	args := []string{"-O", o.Format.Qemu}
	if o.Compress {
		args = append(args, "-c")
	}
	var opts []string
	if o.Subformat != "" {
		opts = append(opts, "subformat="+o.Subformat)
	}
	if o.ForceSize {
		opts = append(opts, "force_size=on")
	}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	if o.Backing != "" {
		args = append(args, "-B", o.Backing, "-F", o.BackingFormat)
	}
	return args
}
