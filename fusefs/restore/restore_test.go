package restore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/fusefs/internal/fstest"
	"github.com/cairn-storage/cairn/fusefs/loop"
	"github.com/cairn-storage/cairn/fusefs/restore"
)

// partStart is where the test images' one partition starts.
const partStart = 1 << 20

// writeMBR writes a DOS partition table with one Linux partition from
// partStart to the end of the image.
func writeMBR(t *testing.T, image string, size int64) {
	t.Helper()
	mbr := make([]byte, 512)
	putMBREntry(mbr, 0, 0x83, partStart/512, (size-partStart)/512)
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
}

// putMBREntry fills entry i of the MBR or EBR in sector and signs it.
func putMBREntry(sector []byte, i int, typ byte, start, count int64) {
	e := sector[446+16*i:]
	e[4] = typ
	binary.LittleEndian.PutUint32(e[8:], uint32(start))
	binary.LittleEndian.PutUint32(e[12:], uint32(count))
	sector[510], sector[511] = 0x55, 0xAA
}

// fixture is a filesystem image with files, copied while mounted: its
// journal is dirty, like a crash-consistent snapshot's.
type fixture struct {
	snapshot string
	files    map[string][32]byte
}

// makeImage builds a size-byte image, with a partition table when
// partitioned, formats it with mkfs, writes files, and copies it while
// still mounted.
func makeImage(t *testing.T, mkfs string, size int64, partitioned bool) fixture {
	t.Helper()
	dir := t.TempDir()
	image := filepath.Join(dir, "live.raw")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, size); err != nil {
		t.Fatal(err)
	}
	var lopts loop.Options
	if partitioned {
		writeMBR(t, image, size)
		lopts.Offset = partStart
	}
	if mkfs == "" {
		return fixture{snapshot: image}
	}
	dev, err := loop.Attach(image, lopts)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Detach()
	target := dev.Path
	fstest.Run(t, mkfs, "-q", target)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	fstest.Run(t, "mount", target, mnt)
	defer fstest.Run(t, "umount", mnt)
	fx := fixture{snapshot: filepath.Join(dir, "snapshot.raw")}
	fx.files = fstest.WriteFiles(t, mnt, 1, 0, 1, 4096, 100000, 3<<20)
	fstest.Run(t, "sync", "-f", mnt)
	fstest.Run(t, "cp", "--sparse=always", image, fx.snapshot)
	return fx
}

func TestMountUmount(t *testing.T) {
	fstest.RequireLoop(t, "mkfs.ext4", "blkid")
	for _, c := range []struct {
		name        string
		mkfs        string
		size        int64
		partitioned bool
		scratch     bool // restore from a writable throwaway copy: replay the journal
		fstype      string
		options     string
		complete    bool // every file written before the copy is there
	}{
		{"ext4", "mkfs.ext4", 64 << 20, false, false, "ext4", "noload", true},
		{"ext4 scratch", "mkfs.ext4", 64 << 20, false, true, "ext4", "", true},
		{"ext4 in a partition", "mkfs.ext4", 64 << 20, true, false, "ext4", "noload", true},
		// Without replay, xfs shows what its log had checkpointed: not
		// necessarily the files.
		{"xfs", "mkfs.xfs", 320 << 20, false, false, "xfs", "norecovery,nouuid", false},
		{"xfs scratch", "mkfs.xfs", 320 << 20, false, true, "xfs", "nouuid", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			fstest.RequireLoop(t, c.mkfs)
			fx := makeImage(t, c.mkfs, c.size, c.partitioned)
			image := fx.snapshot
			if c.scratch {
				image = filepath.Join(t.TempDir(), "scratch.raw")
				fstest.Run(t, "cp", "--sparse=always", fx.snapshot, image)
			}
			before := fstest.FileSum(t, image)
			state := t.TempDir()
			dir := filepath.Join(t.TempDir(), "restore")
			opts := restore.Options{ReadOnly: true, Scratch: c.scratch, StateDir: state}
			info, err := restore.Mount(context.Background(), image, dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			wantVolume, wantOffset := 0, int64(0)
			if c.partitioned {
				wantVolume, wantOffset = 1, partStart
			}
			if info.FSType != c.fstype || info.Options != c.options || info.Volume != wantVolume || info.Offset != wantOffset || !info.CreatedDir {
				t.Errorf("info %+v; want %s, %q, partition %d", info, c.fstype, c.options, wantVolume)
			}
			if c.complete {
				fstest.CheckFiles(t, dir, fx.files)
			}
			if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
				t.Errorf("write to a read-only restore: %v, want EROFS", err)
			}
			if _, err := restore.Mount(context.Background(), image, dir, opts); err == nil {
				t.Error("a second mount on the same directory succeeded")
			}
			if list, err := restore.List(state); err != nil || len(list) != 1 || list[0].Dir != dir {
				t.Errorf("List = %v, %v", list, err)
			}

			busy, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := restore.Umount(context.Background(), dir, state); err == nil || !strings.Contains(err.Error(), "busy") {
				t.Errorf("umount while a directory is open: %v, want busy", err)
			}
			busy.Close()
			if _, err := restore.Umount(context.Background(), dir, state); err != nil {
				t.Fatal(err)
			}
			if backing, _ := loop.BackingFile(info.Loop); backing != "" {
				t.Errorf("%s still attached to %s", info.Loop, backing)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the directory Mount created is still there: %v", err)
			}
			if _, err := restore.Umount(context.Background(), dir, state); !errors.Is(err, restore.ErrNotMounted) {
				t.Errorf("second umount: %v, want ErrNotMounted", err)
			}
			if !c.scratch && fstest.FileSum(t, image) != before {
				t.Error("a read-only restore changed the image")
			}
		})
	}
}

func TestMountRefuses(t *testing.T) {
	fstest.RequireLoop(t, "blkid")
	blank := makeImage(t, "", 8<<20, false)
	partitionedBlank := makeImage(t, "", 8<<20, true)
	for _, c := range []struct {
		name  string
		image string
		opts  restore.Options
		want  error
	}{
		{"no filesystem", blank.snapshot, restore.Options{ReadOnly: true}, restore.ErrUnknownFS},
		{"empty partition", partitionedBlank.snapshot, restore.Options{ReadOnly: true}, restore.ErrUnknownFS},
		{"missing partition", partitionedBlank.snapshot, restore.Options{ReadOnly: true, Partition: 3}, nil},
	} {
		dir := t.TempDir()
		c.opts.StateDir = t.TempDir()
		_, err := restore.Mount(context.Background(), c.image, dir, c.opts)
		if err == nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if list, _ := restore.List(c.opts.StateDir); len(list) != 0 {
			t.Errorf("%s: a failed mount was recorded", c.name)
		}
	}
	// Everything Mount attached was detached again (AutoClear).
	out, _ := exec.Command("losetup", "-j", blank.snapshot).Output()
	if len(out) != 0 {
		t.Errorf("loop devices left on the image: %s", out)
	}
}
