package inspect

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// cpioArchive builds a newc cpio archive holding empty files named names.
func cpioArchive(names ...string) []byte {
	var b bytes.Buffer
	add := func(name string, mode int) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x", 1, mode, 0, 0, 1, 0, 4, 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name)
		b.WriteByte(0)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.WriteString("data")
	}
	for _, n := range names {
		add(n, 0o100644)
	}
	fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x", 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0)
	b.WriteString("TRAILER!!!\x00")
	for b.Len()%512 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func zstded(t *testing.T, data []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return w.EncodeAll(data, nil)
}

// systemTree writes a small Linux root filesystem tree into dir.
type systemTree struct {
	fstab, grubRoot string // "" leaves the file out
	modules         []string
	cloudInit       bool
}

func (s systemTree) write(t *testing.T, dir string) {
	t.Helper()
	put := func(name string, data []byte) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if s.fstab != "" {
		put("etc/fstab", []byte("# /etc/fstab\n"+s.fstab+"\nproc /proc proc defaults 0 0\n"))
	}
	if s.grubRoot != "" {
		put("boot/grub/grub.cfg", []byte("menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-9-amd64 root="+s.grubRoot+" ro quiet\n}\n"))
	}
	put("boot/vmlinuz-6.1.0-9-amd64", []byte("kernel"))
	var mods []string
	for _, m := range s.modules {
		mods = append(mods, "usr/lib/modules/6.1.0-9-amd64/kernel/drivers/"+m+".ko")
	}
	// An early uncompressed archive (microcode), then the main one, compressed.
	initrd := append(cpioArchive("kernel/x86/microcode/GenuineIntel.bin"), zstded(t, cpioArchive(append([]string{"init", "bin/sh"}, mods...)...))...)
	put("boot/initrd.img-6.1.0-9-amd64", initrd)
	if s.cloudInit {
		put("etc/cloud/cloud.cfg", []byte("users: [default]\n"))
	}
}

// cleanSystem is a system disk ready to travel.
var cleanSystem = systemTree{fstab: "UUID=0a3407de-014b-458b-b5c1-848e92a327a3 / ext4 errors=remount-ro 0 1",
	grubRoot: "UUID=0a3407de-014b-458b-b5c1-848e92a327a3", modules: []string{"block/virtio_blk", "scsi/virtio_scsi"}, cloudInit: true}

// part is a partition to lay out: its type and an ext4 with tree on it
// (nil: empty).
type part struct {
	mbrType byte
	gptType string // GUID, mixed-endian as GPT stores it
	sizeMB  int64
	tree    *systemTree
}

// diskImage writes a raw disk image with a partition table (gpt or mbr)
// and the partitions, the first at 1 MiB.
func diskImage(t *testing.T, dir string, gpt bool, parts []part) string {
	t.Helper()
	file := filepath.Join(dir, "disk.raw")
	total := int64(2)
	for _, p := range parts {
		total += p.sizeMB
	}
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(total << 20)
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	entries := make([]byte, 128*128)
	start := int64(2048)
	for i, p := range parts {
		sectors := p.sizeMB << 11
		if gpt {
			e := entries[i*128:]
			copy(e, guidBytes(p.gptType))
			e[16] = byte(i + 1) // a unique GUID
			binary.LittleEndian.PutUint64(e[32:], uint64(start))
			binary.LittleEndian.PutUint64(e[40:], uint64(start+sectors-1))
		} else {
			e := mbr[446+16*i:]
			e[4] = p.mbrType
			binary.LittleEndian.PutUint32(e[8:], uint32(start))
			binary.LittleEndian.PutUint32(e[12:], uint32(sectors))
		}
		start += sectors
	}
	if gpt {
		e := mbr[446:]
		e[4] = 0xEE
		binary.LittleEndian.PutUint32(e[8:], 1)
		binary.LittleEndian.PutUint32(e[12:], uint32(total<<11-1))
		hdr := make([]byte, 92)
		copy(hdr, "EFI PART")
		binary.LittleEndian.PutUint32(hdr[8:], 0x10000)
		binary.LittleEndian.PutUint32(hdr[12:], 92)
		binary.LittleEndian.PutUint64(hdr[24:], 1)
		binary.LittleEndian.PutUint64(hdr[32:], uint64(total<<11-1))
		binary.LittleEndian.PutUint64(hdr[40:], 34)
		binary.LittleEndian.PutUint64(hdr[48:], uint64(total<<11-34))
		binary.LittleEndian.PutUint64(hdr[72:], 2)
		binary.LittleEndian.PutUint32(hdr[80:], 128)
		binary.LittleEndian.PutUint32(hdr[84:], 128)
		binary.LittleEndian.PutUint32(hdr[88:], crc32.ChecksumIEEE(entries))
		binary.LittleEndian.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr))
		f.WriteAt(hdr, 512)
		f.WriteAt(entries, 1024)
	}
	f.WriteAt(mbr, 0)
	f.Close()
	off := int64(1 << 20)
	for i, p := range parts {
		if p.tree != nil {
			tree := filepath.Join(dir, fmt.Sprintf("tree%d", i))
			p.tree.write(t, tree)
			mkfs(t, file, off, p.sizeMB, tree)
		}
		off += p.sizeMB << 20
	}
	return file
}

// mkfs makes an ext4 of sizeMB at off in file holding tree.
func mkfs(t *testing.T, file string, off, sizeMB int64, tree string) {
	t.Helper()
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", off), "-d", tree, file, fmt.Sprintf("%dM", sizeMB)).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

// guidBytes encodes a GUID as GPT stores it.
func guidBytes(s string) []byte {
	h := strings.ReplaceAll(s, "-", "")
	var raw [16]byte
	for i := 0; i < 16; i++ {
		fmt.Sscanf(h[2*i:2*i+2], "%02x", &raw[i])
	}
	out := make([]byte, 16)
	out[0], out[1], out[2], out[3] = raw[3], raw[2], raw[1], raw[0]
	out[4], out[5] = raw[5], raw[4]
	out[6], out[7] = raw[7], raw[6]
	copy(out[8:], raw[8:])
	return out
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices here")
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "debugfs", "blkid"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing (scripts/deps.sh installs it)", tool)
		}
	}
}
