package inspect

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cairn-storage/cairn/fusefs/loop"
	"github.com/cairn-storage/cairn/fusefs/restore"
)

// Partition type ids that say how the disk boots.
const (
	gptESP      = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" // EFI system partition
	gptBIOSBoot = "21686148-6449-6e6f-744e-656564454649" // GRUB's BIOS boot partition
	mbrESP      = "0xef"
)

// Content checks what the raw image file raw holds, read-only: the
// partition table and boot mode, then (as root: it takes loop devices and
// mounts) each filesystem with a read-only fsck and a read-only mount
// that replays no journal, and the readiness report from what is mounted.
func Content(ctx context.Context, raw string, r *Report) error {
	layout, err := restore.ReadLayout(ctx, raw)
	if err != nil {
		r.add(Finding{Check: "partition-table", Status: StatusError, Message: err.Error(), Fix: "the partition table is damaged: repair it on the source (gdisk, fdisk) and export again"})
	}
	r.Scheme = layout.Scheme
	r.layoutFindings(layout)
	var parts []Partition
	if layout.Whole != "" {
		parts = append(parts, Partition{Number: 0, Size: fileSize(raw), FSType: layout.Whole})
	} else {
		for _, v := range layout.Partitions {
			parts = append(parts, Partition{Number: v.Number, Offset: v.Offset, Size: v.Size, Type: v.Type, FSType: v.FSType})
		}
	}
	if os.Geteuid() != 0 {
		r.Partitions = parts
		r.add(Finding{Check: "filesystem", Status: StatusInfo, Message: "filesystems not checked: that needs root (loop devices and read-only mounts)", Fix: "run cairn check as root"})
		return nil
	}
	tmp, err := os.MkdirTemp("", "cairn-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var fss []mounted
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}()
	for i := range parts {
		p := &parts[i]
		if p.FSType == "" || !restore.Supported(p.FSType) {
			continue
		}
		r.fsck(ctx, raw, p)
		dir := filepath.Join(tmp, fmt.Sprintf("p%d", p.Number))
		state := filepath.Join(tmp, "state")
		_, err := restore.Mount(ctx, raw, dir, restore.Options{ReadOnly: true, Partition: p.Number, StateDir: state})
		if err != nil {
			r.add(Finding{Check: "filesystem", Where: partName(p) + " (" + p.FSType + ")", Status: StatusError,
				Message: "does not mount read-only: " + err.Error(), Fix: "repair it on the source (fsck) and export again"})
			continue
		}
		undo = append(undo, func() { restore.Umount(context.Background(), dir, state) })
		root, err := os.OpenRoot(dir)
		if err != nil {
			return err
		}
		undo = append(undo, func() { root.Close() })
		p.Mounted = true
		fss = append(fss, mounted{part: p, fsys: root.FS()})
	}
	r.readiness(ctx, fss)
	r.Partitions = parts
	return nil
}

// layoutFindings says what the partition table and its types mean for
// the target.
func (r *Report) layoutFindings(l restore.Layout) {
	r.Boot = "unknown"
	switch l.Scheme {
	case restore.SchemeMBR:
		r.add(Finding{Check: "partition-table", Status: StatusOK, Message: "MBR partition table"})
	case restore.SchemeGPT:
		r.add(Finding{Check: "partition-table", Status: StatusWarning, Message: "GPT partition table: imports that need an MBR disk (Tencent Cloud's, BIOS-only targets) refuse it",
			Fix: "choose a target that boots GPT disks by UEFI, or convert the table to MBR on the source (gdisk: r, g) if the disk is under 2 TiB"})
	default:
		msg := "no partition table"
		if l.Whole != "" {
			msg += ": " + l.Whole + " on the whole disk (fine for a data disk; a system disk needs a table and a boot loader)"
		}
		r.add(Finding{Check: "partition-table", Status: StatusInfo, Message: msg})
	}
	for _, v := range l.Partitions {
		switch strings.ToLower(v.Type) {
		case gptESP, mbrESP:
			r.Boot = "uefi"
			r.add(Finding{Check: "boot", Where: fmt.Sprintf("partition %d", v.Number), Status: StatusWarning,
				Message: "EFI system partition: the disk boots by UEFI",
				Fix:     "boot the target by UEFI (qemu: OVMF firmware; clouds: a UEFI image type), or reinstall the boot loader for BIOS on the source"})
			return
		case gptBIOSBoot:
			r.Boot = "bios"
		}
	}
	if r.Boot == "bios" || l.Scheme == restore.SchemeMBR {
		r.Boot = "bios"
		r.add(Finding{Check: "boot", Status: StatusOK, Message: "no EFI system partition: the disk boots by BIOS"})
	}
}

// ext superblock facts (Documentation/filesystems/ext4/super.rst).
const (
	extSuperblock    = 1024
	extIncompat      = 0x60
	extNeedsRecovery = 0x4
	extState         = 0x3A
	extStateErrors   = 0x2
)

// fsck checks one filesystem read-only on a read-only loop device.
func (r *Report) fsck(ctx context.Context, raw string, p *Partition) {
	where := partName(p) + " (" + p.FSType + ")"
	var cmd []string
	switch p.FSType {
	case "ext2", "ext3", "ext4":
		cmd = []string{"e2fsck", "-f", "-n"}
		r.extState(raw, p, where)
	case "xfs":
		cmd = []string{"xfs_repair", "-n"}
	case "vfat":
		cmd = []string{"fsck.vfat", "-n"}
	case "btrfs":
		cmd = []string{"btrfs", "check", "--readonly"}
	}
	if _, err := exec.LookPath(cmd[0]); err != nil {
		p.Fsck = "not-supported"
		r.add(Finding{Check: "fsck", Where: where, Status: StatusInfo, Message: cmd[0] + " is not installed: no read-only fsck of " + p.FSType})
		return
	}
	dev, err := loop.Attach(raw, loop.Options{ReadOnly: true, AutoClear: true, Offset: p.Offset, SizeLimit: p.Size})
	if err != nil {
		p.Fsck = "skipped"
		r.add(Finding{Check: "fsck", Where: where, Status: StatusInfo, Message: "no read-only fsck: " + err.Error()})
		return
	}
	defer dev.Close()
	out, err := exec.CommandContext(ctx, cmd[0], append(cmd[1:], dev.Path)...).CombinedOutput()
	if err == nil {
		p.Fsck = "clean"
		r.add(Finding{Check: "fsck", Where: where, Status: StatusOK, Message: strings.Join(cmd, " ") + ": clean"})
		return
	}
	p.Fsck = "errors"
	r.add(Finding{Check: "fsck", Where: where, Status: StatusError,
		Message: strings.Join(cmd, " ") + " found problems: " + summary(out),
		Fix:     "repair the filesystem on the source (" + cmd[0] + " without -n, unmounted) and export again; a snapshot of a running guest is best taken filesystem-consistent (--consistency filesystem)"})
}

// extState reads an ext superblock's flags: a journal not replayed (the
// filesystem was in use, as in any crash-consistent snapshot) and errors
// the kernel recorded.
func (r *Report) extState(raw string, p *Partition, where string) {
	f, err := os.Open(raw)
	if err != nil {
		return
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, p.Offset+extSuperblock); err != nil {
		return
	}
	if binary.LittleEndian.Uint32(sb[extIncompat:])&extNeedsRecovery != 0 {
		r.add(Finding{Check: "journal", Where: where, Status: StatusWarning,
			Message: "the journal was not replayed (the filesystem was in use when the image was taken): the target replays it at the first mount, and a read-only fsck here sees the state before it",
			Fix:     "export a filesystem-consistent snapshot (cairn export --consistency filesystem, with the guest agent), or shut the guest down before exporting"})
	}
	if binary.LittleEndian.Uint16(sb[extState:])&extStateErrors != 0 {
		r.add(Finding{Check: "filesystem", Where: where, Status: StatusError, Message: "the kernel recorded errors on this filesystem",
			Fix: "run e2fsck on the source (unmounted) and export again"})
	}
}

// summary is the gist of a checker's output: its first lines that say
// something.
func summary(out []byte) string {
	var lines []string
	for _, l := range bytes.Split(out, []byte("\n")) {
		s := strings.TrimSpace(string(l))
		if s == "" || strings.HasPrefix(s, "e2fsck ") || strings.HasPrefix(s, "Pass ") {
			continue
		}
		lines = append(lines, s)
		if len(lines) == 3 {
			break
		}
	}
	if len(lines) == 0 {
		return "exit status non-zero"
	}
	return strings.Join(lines, "; ")
}

func fileSize(file string) int64 {
	st, err := os.Stat(file)
	if err != nil {
		return 0
	}
	return st.Size()
}
