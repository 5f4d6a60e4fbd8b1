package inspect

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// findings indexes a report's findings by check.
func findings(r Report) map[string]Finding {
	out := map[string]Finding{}
	for _, f := range r.Findings {
		if prev, ok := out[f.Check]; !ok || severityOf(f.Status) > severityOf(prev.Status) {
			out[f.Check] = f
		}
	}
	return out
}

func severityOf(s string) int {
	for i, x := range severity {
		if x == s {
			return i
		}
	}
	return -1
}

func TestScanInitramfs(t *testing.T) {
	ctx := context.Background()
	main := cpioArchive("init", "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko.xz", "usr/lib/modules/6.1/kernel/drivers/net/virtio_net.ko")
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"plain", main},
		{"gzip", gzipped(t, main)},
		{"zstd", zstded(t, main)},
		{"microcode then zstd", append(cpioArchive("kernel/x86/microcode/AuthenticAMD.bin"), zstded(t, main)...)},
	} {
		var names []string
		err := scanInitramfs(ctx, strings.NewReader(string(c.data)), func(n string) { names = append(names, filepath.Base(n)) })
		sort.Strings(names)
		if err != nil || !strings.Contains(strings.Join(names, " "), "virtio_blk.ko.xz virtio_net.ko") {
			t.Errorf("%s: %v, %v", c.name, names, err)
		}
	}
	if err := scanInitramfs(ctx, strings.NewReader("garbage!"), func(string) {}); err == nil || !strings.Contains(err.Error(), "unknown compression") {
		t.Errorf("garbage: %v", err)
	}
	if err := scanInitramfs(ctx, strings.NewReader(string(main[:200])), func(string) {}); err == nil {
		t.Error("a truncated archive read without error")
	}
}

func TestReadiness(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		tree systemTree
		want map[string]string // check -> status
	}{
		{"ready", cleanSystem, map[string]string{"fstab": StatusOK, "grub": StatusOK, "virtio": StatusOK, "cloud-init": StatusOK}},
		{"device names, no virtio, no cloud-init", systemTree{fstab: "/dev/sda1 / ext4 defaults 0 1\n/dev/vdb1 /srv xfs defaults 0 2", grubRoot: "/dev/sda1",
			modules: []string{"ata/ahci"}}, map[string]string{"fstab": StatusWarning, "grub": StatusWarning, "virtio": StatusWarning, "cloud-init": StatusWarning}},
		{"no grub", systemTree{fstab: "LABEL=root / ext4 defaults 0 1", modules: []string{"scsi/virtio_scsi"}, cloudInit: true},
			map[string]string{"fstab": StatusOK, "grub": StatusInfo, "virtio": StatusOK}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.tree.write(t, dir)
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			var r Report
			p := &Partition{Number: 1}
			r.readiness(ctx, []mounted{{part: p, fsys: root.FS()}})
			got := findings(r)
			for check, status := range c.want {
				if got[check].Status != status || status != StatusOK && status != StatusInfo && got[check].Fix == "" {
					t.Errorf("%s: %+v; want %s with a fix", check, got[check], status)
				}
			}
			if p.Role != "root" {
				t.Errorf("role %q", p.Role)
			}
		})
	}
}

// TestReadinessStaysInTheImage: a link in the image to a host file is not
// followed out of it.
func TestReadinessStaysInTheImage(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(t.TempDir(), "fstab")
	os.WriteFile(host, []byte("/dev/sda1 / ext4 defaults 0 1\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.Symlink(host, filepath.Join(dir, "etc", "fstab"))
	root, _ := os.OpenRoot(dir)
	defer root.Close()
	var r Report
	p := &Partition{Number: 1}
	r.readiness(context.Background(), []mounted{{part: p, fsys: root.FS()}})
	for _, f := range r.Findings {
		if strings.Contains(f.Message, "/dev/sda1") {
			t.Fatalf("read the host's file through the image's link: %+v", f)
		}
	}
}

func TestContent(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	clean := cleanSystem
	for _, c := range []struct {
		name   string
		gpt    bool
		parts  []part
		broken func(t *testing.T, file string)
		status string
		want   map[string]string
		boot   string
	}{
		{name: "clean mbr system disk", parts: []part{{mbrType: 0x83, sizeMB: 24, tree: &clean}}, status: StatusOK,
			want: map[string]string{"partition-table": StatusOK, "boot": StatusOK, "fsck": StatusOK, "fstab": StatusOK, "virtio": StatusOK}, boot: "bios"},
		{name: "gpt with an efi partition", gpt: true, parts: []part{
			{gptType: gptESP, sizeMB: 4}, {gptType: "0fc63daf-8483-4772-8e79-3d69d8477de4", sizeMB: 24, tree: &clean}},
			status: StatusWarning, want: map[string]string{"partition-table": StatusWarning, "boot": StatusWarning, "fsck": StatusOK}, boot: "uefi"},
		{name: "block bitmap damaged", parts: []part{{mbrType: 0x83, sizeMB: 24, tree: &clean}}, status: StatusError,
			broken: func(t *testing.T, file string) { debugfs(t, file, "freeb 200 100") },
			want:   map[string]string{"fsck": StatusError}},
		{name: "superblock damaged", parts: []part{{mbrType: 0x83, sizeMB: 24, tree: &clean}}, status: StatusError,
			broken: func(t *testing.T, file string) { corruptSuperblock(t, file) },
			want:   map[string]string{"fsck": StatusError, "filesystem": StatusError}},
		{name: "journal not replayed", parts: []part{{mbrType: 0x83, sizeMB: 24, tree: &clean}}, status: StatusWarning,
			broken: func(t *testing.T, file string) { debugfs(t, file, "feature needs_recovery") },
			want:   map[string]string{"journal": StatusWarning}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			file := diskImage(t, dir, c.gpt, c.parts)
			if c.broken != nil {
				c.broken(t, file)
			}
			r := Report{Target: file}
			if err := Content(ctx, file, &r); err != nil {
				t.Fatal(err)
			}
			r.Finish()
			got := findings(r)
			for check, status := range c.want {
				if got[check].Status != status {
					t.Errorf("%s: %+v; want %s", check, got[check], status)
				}
			}
			if r.Status != c.status || c.boot != "" && r.Boot != c.boot {
				t.Errorf("status %s boot %s; want %s %s\n%+v", r.Status, r.Boot, c.status, c.boot, r.Findings)
			}
			mounted := false
			for _, p := range r.Partitions {
				mounted = mounted || p.Mounted
			}
			if !mounted && c.name != "superblock damaged" {
				t.Errorf("nothing was mounted: %+v", r.Partitions)
			}
		})
	}
}

// corruptSuperblock breaks the checksum of the first partition's ext4
// superblock (at 1 MiB): e2fsck falls back to a backup and finds the
// groups it describes wrong; the kernel refuses to mount it.
func corruptSuperblock(t *testing.T, file string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, 1<<20+1024+0x3FC); err != nil {
		t.Fatal(err)
	}
}

// debugfs changes the ext4 of the first partition (at 1 MiB) in file.
func debugfs(t *testing.T, file, cmd string) {
	t.Helper()
	dev := file + ".p1"
	// debugfs has no offset option: work on a copy of the partition and write it back.
	if out, err := exec.Command("dd", "if="+file, "of="+dev, "bs=1M", "skip=1", "count=24", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v %s", err, out)
	}
	if out, err := exec.Command("debugfs", "-w", "-R", cmd, dev).CombinedOutput(); err != nil {
		t.Fatalf("debugfs %s: %v %s", cmd, err, out)
	}
	if out, err := exec.Command("dd", "if="+dev, "of="+file, "bs=1M", "seek=1", "conv=notrunc", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v %s", err, out)
	}
}
