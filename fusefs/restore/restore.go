// Package restore mounts the filesystem inside a disk image file (a FUSE
// disk.raw or snapshot file) through a loop device, for file-level
// restore, and undoes it. What it did is recorded in a state file per
// mount point, so Umount works from another process (cairn mount / cairn
// umount).
//
// Snapshots are crash-consistent: their journals are dirty, and what the
// filesystem wrote last may be only in the journal. The complete view
// needs a journal replay, which writes: restore a snapshot through its
// FUSE scratch file (Options.Scratch), whose writes go to a throwaway
// overlay, and the kernel replays the journal there while the mount stays
// read-only. On a plain read-only file the mount skips the replay (ext3/4
// noload, xfs norecovery) and shows the filesystem as of its last journal
// checkpoint.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/fusefs/loop"
)

// DefaultStateDir holds one state file per restore mount.
const DefaultStateDir = "/run/cairn/mounts"

// ErrUnknownFS means no supported filesystem was found on the image.
var ErrUnknownFS = errors.New("no filesystem cairn can mount")

// ErrNotMounted means there is no restore mount at the directory.
var ErrNotMounted = errors.New("no cairn mount")

// Options configure Mount.
type Options struct {
	// ReadOnly mounts the filesystem read-only (snapshots).
	ReadOnly bool
	// Scratch says the file takes writes and throws them away (a FUSE
	// scratch file): the loop device is read-write so the kernel can
	// replay the journal, and the mount is read-only all the same. Without
	// it a ReadOnly mount uses a read-only loop device and skips the
	// journal.
	Scratch bool
	// Partition picks a partition by number (1 for loopNp1). Zero picks
	// the whole device if it holds a filesystem, else the largest
	// partition that holds a supported one.
	Partition int
	// StateDir is where mounts are recorded; empty means DefaultStateDir.
	StateDir string
}

// Info describes one restore mount.
type Info struct {
	Dir      string `json:"dir"`
	File     string `json:"file"`
	Loop     string `json:"loop"`                // the mounted /dev/loopN
	Offset   int64  `json:"offset,omitempty"`    // of the mounted filesystem in File
	Volume   int    `json:"partition,omitempty"` // its partition number; 0: the whole file
	FSType   string `json:"fstype"`
	Options  string `json:"options"`
	ReadOnly bool   `json:"read_only"`
	Scratch  bool   `json:"scratch,omitempty"`
	// Partitions are all partitions found, with their filesystems.
	Partitions []Volume `json:"partitions,omitempty"`
	// CreatedDir: Mount created Dir, so Umount removes it.
	CreatedDir bool `json:"created_dir,omitempty"`
}

// Volume is one partition and the filesystem on it ("" when none).
type Volume struct {
	Number int    `json:"number"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	Type   string `json:"type,omitempty"` // the partition's type (ReadLayout)
	FSType string `json:"fstype"`
}

// Mount attaches file to a loop device (read-only with opts.ReadOnly),
// finds the filesystem and mounts it on dir (created if missing). It
// refuses when the kernel has no loop devices or no supported filesystem is
// found, and undoes everything it did when it fails.
func Mount(ctx context.Context, file, dir string, opts Options) (info Info, err error) {
	if dir, err = filepath.Abs(dir); err != nil {
		return Info{}, err
	}
	if file, err = filepath.Abs(file); err != nil {
		return Info{}, err
	}
	state := stateDir(opts.StateDir)
	mounted, err := isMountPoint(dir)
	if err != nil {
		return Info{}, err
	}
	if _, err := readState(state, dir); err == nil {
		if mounted {
			return Info{}, fmt.Errorf("%s already has a cairn mount; run 'cairn umount %s' first", dir, dir)
		}
		removeState(state, dir) // left by a mount that is gone (reboot, manual umount)
	}
	if mounted {
		return Info{}, fmt.Errorf("%s is already a mount point; choose an empty directory", dir)
	}
	info = Info{Dir: dir, File: file, ReadOnly: opts.ReadOnly, Scratch: opts.Scratch}
	vol, err := pickVolume(ctx, file, opts.Partition, &info)
	if err != nil {
		return Info{}, fmt.Errorf("%s: %w", file, err)
	}
	dev, err := loop.Attach(file, loop.Options{
		ReadOnly:  opts.ReadOnly && !opts.Scratch,
		AutoClear: true,
		Offset:    vol.Offset,
		SizeLimit: vol.Size,
	})
	if err != nil {
		return Info{}, err
	}
	// With AutoClear the device detaches when dev closes unless the
	// filesystem mount holds it: closing it is all the undo a failure needs.
	defer dev.Close()
	info.Loop, info.Offset, info.Volume, info.FSType = dev.Path, vol.Offset, vol.Number, vol.FSType
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Info{}, err
		}
		info.CreatedDir = true
	}
	if err := mountVolume(&info); err != nil {
		if info.CreatedDir {
			os.Remove(dir)
		}
		return Info{}, err
	}
	if err := writeState(state, info); err != nil {
		unix.Unmount(dir, 0)
		if info.CreatedDir {
			os.Remove(dir)
		}
		return Info{}, err
	}
	return info, nil
}

// mountVolume mounts info.Device on info.Dir with the options its
// filesystem needs; nosuid and nodev always, since the image's owner is
// not trusted with the host's devices or set-uid bits.
func mountVolume(info *Info) error {
	fstype, data, err := mountOptions(info.FSType, info.ReadOnly && !info.Scratch)
	if err != nil {
		return err
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if info.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(info.Loop, info.Dir, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s, %s) on %s: %w (the kernel log, dmesg, says why)", info.Loop, info.FSType, data, info.Dir, err)
	}
	info.Options = data
	return nil
}

// mountOptions returns the filesystem type and options for a restore
// mount. With skipJournal, journaling filesystems do not replay their log,
// which would write to a device that cannot take writes.
func mountOptions(fstype string, skipJournal bool) (string, string, error) {
	switch fstype {
	case "ext2":
		return "ext2", "", nil
	case "ext3", "ext4":
		if skipJournal {
			return fstype, "noload", nil
		}
		return fstype, "", nil
	case "xfs":
		// nouuid: the snapshot has the UUID of the live filesystem,
		// which may be mounted on this host too.
		if skipJournal {
			return "xfs", "norecovery,nouuid", nil
		}
		return "xfs", "nouuid", nil
	case "btrfs":
		if skipJournal {
			return "btrfs", "rescue=nologreplay", nil
		}
		return "btrfs", "", nil
	case "vfat":
		return "vfat", "", nil
	}
	return "", "", fmt.Errorf("%w: %q (supported: ext2, ext3, ext4, xfs, btrfs, vfat)", ErrUnknownFS, fstype)
}

func supported(fstype string) bool {
	_, _, err := mountOptions(fstype, true)
	return err == nil
}

// pickVolume finds the filesystem to mount: the whole file when it holds
// one, else the chosen partition or the largest that holds a supported
// filesystem. It records every partition in info.
func pickVolume(ctx context.Context, file string, want int, info *Info) (Volume, error) {
	f, err := os.Open(file)
	if err != nil {
		return Volume{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Volume{}, err
	}
	whole, err := probe(ctx, file, 0, size)
	if err != nil {
		return Volume{}, err
	}
	if want == 0 && whole != "" {
		if !supported(whole) {
			return Volume{}, unknownFS(whole, "the image", nil)
		}
		return Volume{Size: size, FSType: whole}, nil
	}
	parts, err := readPartitions(f, size)
	if err != nil {
		return Volume{}, err
	}
	if want == 0 && len(parts) == 0 {
		return Volume{}, unknownFS("", "the image", nil)
	}
	for _, p := range parts {
		t, err := probe(ctx, file, p.Offset, p.Size)
		if err != nil {
			return Volume{}, err
		}
		info.Partitions = append(info.Partitions, Volume{Number: p.Number, Offset: p.Offset, Size: p.Size, FSType: t})
	}
	var best *Volume
	for i, v := range info.Partitions {
		if want != 0 && v.Number == want || want == 0 && supported(v.FSType) && (best == nil || v.Size > best.Size) {
			best = &info.Partitions[i]
		}
	}
	if best == nil && want != 0 {
		return Volume{}, fmt.Errorf("the image has no partition %d (found %s)", want, describe(info.Partitions))
	}
	if best == nil || !supported(best.FSType) {
		return Volume{}, unknownFS("", "any partition", info.Partitions)
	}
	return *best, nil
}

func unknownFS(found, where string, parts []Volume) error {
	if parts != nil {
		return fmt.Errorf("%w on %s (found %s)", ErrUnknownFS, where, describe(parts))
	}
	if found == "" {
		found = "nothing recognisable"
	}
	return fmt.Errorf("%w on %s (found %s)", ErrUnknownFS, where, found)
}

func describe(parts []Volume) string {
	if len(parts) == 0 {
		return "no partitions"
	}
	var s []string
	for _, p := range parts {
		t := p.FSType
		if t == "" {
			t = "unknown"
		}
		s = append(s, fmt.Sprintf("partition %d: %s", p.Number, t))
	}
	return strings.Join(s, ", ")
}

// Umount unmounts the restore mount on dir, detaches its loop device,
// removes the directory if Mount created it, and forgets the mount. When
// the directory is busy it changes nothing and says so.
func Umount(ctx context.Context, dir, stateDirectory string) (Info, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return Info{}, err
	}
	state := stateDir(stateDirectory)
	info, err := readState(state, dir)
	if err != nil {
		return Info{}, err
	}
	if mounted, err := isMountPoint(dir); err != nil {
		return info, err
	} else if mounted {
		if err := unix.Unmount(dir, 0); errors.Is(err, unix.EBUSY) {
			return info, fmt.Errorf("unmount %s: busy: a process has files open there (see 'fuser -m %s'); close them and retry", dir, dir)
		} else if err != nil {
			return info, fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	// AutoClear detaches the device once unmounted; detach explicitly in
	// case someone else opened it meanwhile and it still points at our file.
	if backing, _ := loop.BackingFile(info.Loop); backing != "" && sameFile(backing, info.File) {
		if err := loop.Detach(info.Loop); err != nil {
			return info, err
		}
	}
	if info.CreatedDir {
		os.Remove(dir) // only if empty, which an unmounted mount point is
	}
	return info, removeState(state, dir)
}

func sameFile(a, b string) bool {
	return filepath.Clean(a) == filepath.Clean(b)
}

// isMountPoint reports whether dir is a mount point (its device differs
// from its parent's or it is listed as one).
func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); errors.Is(err, unix.ENOENT) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("stat %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, fmt.Errorf("stat %s: %w", filepath.Dir(dir), err)
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}
