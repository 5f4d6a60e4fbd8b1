package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sh runs a command (qemu-img, qemu-io: the real ones; these tests vet files qemu made).
func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// dataImage makes a qcow2 of 16 MiB with 8 MiB of data in dir.
func dataImage(t *testing.T, dir, name string) string {
	t.Helper()
	raw := filepath.Join(dir, name+".raw")
	sh(t, "qemu-img", "create", "-q", "-f", "raw", raw, "16M")
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", raw)
	q := filepath.Join(dir, name)
	sh(t, "qemu-img", "convert", "-O", "qcow2", raw, q)
	os.Remove(raw)
	return q
}

func TestVetRefusesHostileImages(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is missing (scripts/deps.sh installs qemu-utils)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	good := dataImage(t, dir, "good.qcow2")
	v, err := Vet(ctx, good, VetOptions{})
	if err != nil || v.Format.Name != "qcow2" || v.Size != 16<<20 || v.DataBytes < 8<<20 || v.DataBytes > 9<<20 || v.Check == nil || !v.Check.Clean() {
		t.Fatalf("a good image: %+v, %v", v, err)
	}

	// Backing file outside the image's directory.
	other := t.TempDir()
	base := dataImage(t, other, "base.qcow2")
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	outside := filepath.Join(sub, "outside.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", outside)
	// A symbolic link in the allowed directory to a file elsewhere.
	os.Symlink(base, filepath.Join(sub, "link.qcow2"))
	viaLink := filepath.Join(sub, "vialink.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "link.qcow2", "-F", "qcow2", viaLink)
	// A backing loop: a -> b -> a.
	loopA, loopB := filepath.Join(dir, "loop-a.qcow2"), filepath.Join(dir, "loop-b.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "loop-b.qcow2", "-F", "qcow2", loopA, "16M")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "loop-a.qcow2", "-F", "qcow2", loopB, "16M")
	// A protocol backing file.
	proto := filepath.Join(dir, "proto.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nbd+unix:///x?socket=/tmp/s", "-F", "raw", proto, "16M")
	// A virtual size far beyond any host.
	huge := filepath.Join(dir, "huge.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", huge, "100T")
	// Truncated: the data clusters are gone.
	trunc := filepath.Join(dir, "trunc.qcow2")
	data, _ := os.ReadFile(good)
	os.WriteFile(trunc, data[:1<<20], 0o644)
	// Corrupt L1 table: its first entry points to a misaligned place past the end.
	corrupt := filepath.Join(dir, "corrupt.qcow2")
	l1 := binary.BigEndian.Uint64(data[40:])
	bad := append([]byte(nil), data...)
	binary.BigEndian.PutUint64(bad[l1:], 1<<63|0x1234567200)
	os.WriteFile(corrupt, bad, 0o644)
	// A vmdk descriptor naming a data file anywhere.
	desc := filepath.Join(dir, "desc.vmdk")
	os.WriteFile(desc, []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 32768 FLAT \"/etc/passwd\" 0\n"), 0o644)
	// A format cairn does not import.
	vdi := filepath.Join(dir, "disk.vdi")
	sh(t, "qemu-img", "create", "-q", "-f", "vdi", vdi, "16M")

	for _, c := range []struct {
		name, file string
		o          VetOptions
		want       string
	}{
		{"backing outside", outside, VetOptions{}, "outside the allowed directories"},
		{"backing through a link", viaLink, VetOptions{}, "outside the allowed directories"},
		{"backing loop", loopA, VetOptions{}, "the backing chain loops"},
		{"protocol backing", proto, VetOptions{}, "only plain files are followed"},
		{"huge", huge, VetOptions{}, "more than the largest disk cairn makes"},
		{"truncated", trunc, VetOptions{}, "is corrupt: qemu-img check found"},
		{"corrupt L1", corrupt, VetOptions{}, "is corrupt: qemu-img check found"},
		{"vmdk descriptor", desc, VetOptions{}, "vmdk descriptor"},
		{"unknown format", vdi, VetOptions{}, `format "vdi" is not one cairn converts`},
		{"format mismatch", good, VetOptions{Format: "vmdk"}, "cannot be read as an image"},
		{"not a file", dir, VetOptions{}, "not a regular file"},
		{"missing", filepath.Join(dir, "nope"), VetOptions{}, "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Vet(ctx, c.file, c.o)
			if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Vet(%s) = %v; want a refusal saying %q", c.file, err, c.want)
			}
		})
	}
	// Allowed explicitly, the outside backing file is followed.
	if v, err := Vet(ctx, outside, VetOptions{AllowBacking: []string{other}}); err != nil || len(v.Chain) != 2 {
		t.Fatalf("--allow-backing: %+v, %v", v, err)
	}
}
