package inspect

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
)

// The migration readiness report: what another hypervisor (a public
// cloud's import, another KVM host) needs of a system disk, read from its
// mounted filesystems. Tencent Cloud's import guide asks for each of these
// by hand; each finding here says what to do.

// mounted is one filesystem of the image, mounted read-only, and read
// through an os.Root: the image is untrusted, and its symbolic links must
// never lead to the host's files (an absolute or escaping link fails).
type mounted struct {
	part *Partition
	fsys fs.FS
}

// deviceName matches fstab and kernel root= names that depend on the
// hypervisor's disk bus: they change when the disk moves (sda on SCSI/IDE,
// vda on virtio, xvda on Xen, nvme0n1 on NVMe).
var deviceName = regexp.MustCompile(`^/dev/(sd|hd|vd|xvd)[a-z]+[0-9]*$|^/dev/nvme[0-9]+n[0-9]+(p[0-9]+)?$`)

// readiness reads the mounted filesystems and adds the report's findings.
func (r *Report) readiness(ctx context.Context, fss []mounted) {
	var root, boot *mounted
	for i := range fss {
		m := &fss[i]
		switch {
		case exists(m.fsys, "etc/fstab") && root == nil:
			root, m.part.Role = m, "root"
		case (exists(m.fsys, "grub/grub.cfg") || exists(m.fsys, "grub2/grub.cfg") || len(glob(m.fsys, "vmlinuz-*")) > 0) && boot == nil:
			boot, m.part.Role = m, "boot"
		case exists(m.fsys, "EFI") && m.part.Role == "":
			m.part.Role = "efi"
		}
	}
	if root == nil {
		r.add(Finding{Check: "root", Status: StatusInfo, Message: "no filesystem with /etc/fstab: this is not a Linux system disk (or its root is on LVM, LUKS or a filesystem cairn does not mount); the readiness checks are skipped"})
		return
	}
	bootFS, bootPrefix := root.fsys, "boot"
	if boot != nil {
		bootFS, bootPrefix = boot.fsys, "."
	}
	r.checkFstab(root)
	r.checkGrub(bootFS, bootPrefix, where(boot, root))
	r.checkVirtio(ctx, bootFS, bootPrefix, where(boot, root))
	r.checkCloudInit(root)
}

func where(boot, root *mounted) string {
	if boot != nil {
		return partName(boot.part)
	}
	return partName(root.part)
}

func partName(p *Partition) string {
	if p.Number == 0 {
		return "whole disk"
	}
	return fmt.Sprintf("partition %d", p.Number)
}

// checkFstab reads /etc/fstab: entries naming devices by bus-specific
// names break when the disk moves.
func (r *Report) checkFstab(root *mounted) {
	f, err := root.fsys.Open("etc/fstab")
	if err != nil {
		r.add(Finding{Check: "fstab", Where: partName(root.part), Status: StatusWarning, Message: "cannot read /etc/fstab: " + err.Error()})
		return
	}
	defer f.Close()
	var byName, stable []string
	sc := bufio.NewScanner(io.LimitReader(f, maxConfigFile))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch spec := fields[0]; {
		case deviceName.MatchString(spec):
			byName = append(byName, spec+" on "+fields[1])
		case strings.HasPrefix(spec, "UUID=") || strings.HasPrefix(spec, "LABEL=") || strings.HasPrefix(spec, "PARTUUID=") ||
			strings.HasPrefix(spec, "PARTLABEL=") || strings.HasPrefix(spec, "/dev/disk/by-") || strings.HasPrefix(spec, "/dev/mapper/"):
			stable = append(stable, fields[1])
		}
	}
	if len(byName) > 0 {
		r.add(Finding{Check: "fstab", Where: partName(root.part) + ": /etc/fstab", Status: StatusWarning,
			Message: "mounts by device name: " + strings.Join(byName, ", ") + "; the names change when the disk moves to another bus or hypervisor",
			Fix:     "name them by UUID= (blkid shows each filesystem's UUID) in /etc/fstab before exporting"})
		return
	}
	r.add(Finding{Check: "fstab", Where: partName(root.part) + ": /etc/fstab", Status: StatusOK,
		Message: fmt.Sprintf("%d mount(s) by UUID, label or stable path; none by device name", len(stable))})
}

// rootArg finds root= on kernel command lines.
var rootArg = regexp.MustCompile(`\broot=(\S+)`)

// checkGrub reads GRUB's configuration: a kernel root= by device name
// breaks when the disk moves.
func (r *Report) checkGrub(fsys fs.FS, prefix, where string) {
	var cfg string
	for _, p := range []string{"grub/grub.cfg", "grub2/grub.cfg"} {
		if exists(fsys, path.Join(prefix, p)) {
			cfg = path.Join(prefix, p)
			break
		}
	}
	if cfg == "" {
		r.add(Finding{Check: "grub", Where: where, Status: StatusInfo, Message: "no GRUB configuration (grub/grub.cfg) found: another boot loader, or /boot on a filesystem cairn did not mount; check the kernel's root= by hand"})
		return
	}
	data, err := readLimited(fsys, cfg)
	if err != nil {
		r.add(Finding{Check: "grub", Where: where, Status: StatusWarning, Message: "cannot read " + cfg + ": " + err.Error()})
		return
	}
	roots := map[string]bool{}
	for _, m := range rootArg.FindAllStringSubmatch(string(data), -1) {
		roots[m[1]] = true
	}
	var byName, all []string
	for root := range roots {
		all = append(all, root)
		if deviceName.MatchString(root) {
			byName = append(byName, root)
		}
	}
	sort.Strings(byName)
	sort.Strings(all)
	switch {
	case len(all) == 0:
		r.add(Finding{Check: "grub", Where: where + ": " + cfg, Status: StatusInfo, Message: "no root= on the kernel command lines"})
	case len(byName) > 0:
		r.add(Finding{Check: "grub", Where: where + ": " + cfg, Status: StatusWarning,
			Message: "the kernel's root= names a device: " + strings.Join(byName, ", ") + "; it changes when the disk moves",
			Fix:     "use root=UUID=... (set GRUB_DISABLE_LINUX_UUID=false in /etc/default/grub and run update-grub) before exporting"})
	default:
		r.add(Finding{Check: "grub", Where: where + ": " + cfg, Status: StatusOK, Message: "root= by " + strings.Join(all, ", ")})
	}
}

// checkCloudInit looks for cloud-init, which lets the target set the
// hostname, keys and network at first boot.
func (r *Report) checkCloudInit(root *mounted) {
	for _, p := range []string{"usr/bin/cloud-init", "usr/local/bin/cloud-init", "etc/cloud/cloud.cfg"} {
		if exists(root.fsys, p) {
			r.add(Finding{Check: "cloud-init", Where: partName(root.part), Status: StatusOK, Message: "cloud-init is installed (/" + p + ")"})
			return
		}
	}
	r.add(Finding{Check: "cloud-init", Where: partName(root.part), Status: StatusWarning,
		Message: "cloud-init is not installed: the target cannot set the hostname, SSH keys or network at first boot",
		Fix:     "install cloud-init in the guest (apt install cloud-init, dnf install cloud-init) before exporting"})
}

// maxConfigFile bounds what is read of a configuration file.
const maxConfigFile = 4 << 20

func exists(fsys fs.FS, name string) bool {
	_, err := fs.Stat(fsys, name)
	return err == nil
}

func glob(fsys fs.FS, pattern string) []string {
	m, _ := fs.Glob(fsys, pattern)
	return m
}

// readLimited reads at most maxConfigFile bytes of a file.
func readLimited(fsys fs.FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxConfigFile))
}
