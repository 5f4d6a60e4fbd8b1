package fusefs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/fusefs"
	"github.com/cairn-storage/cairn/fusefs/internal/fstest"
	"github.com/cairn-storage/cairn/fusefs/loop"
	"github.com/cairn-storage/cairn/fusefs/restore"
)

func scratchPath(tree *fusefs.Tree, disk, snap string) string {
	return filepath.Join(tree.Dir(), disk, "scratch", snap+".raw")
}

// TestLoopExt4Restore: ext4 made through a loop device on the live
// disk.raw, a crash-consistent copy of it served as a snapshot, the files
// changed and deleted on the live disk, and the old files found by
// restore.Mount through the snapshot's scratch file (journal replayed in
// the throwaway overlay). e2fsck -fn finds the replayed snapshot clean.
func TestLoopExt4Restore(t *testing.T) {
	requireRoot(t)
	fstest.RequireLoop(t, "mkfs.ext4", "e2fsck", "blkid")
	src := newTestSource()
	tmp := t.TempDir()
	live := newTestFile(t, tmp, 128<<20)
	src.addDisk("vm", live)
	tree := mountTree(t, src, fusefs.Options{})

	dev, err := loop.Attach(livePath(tree, "vm"), loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Detach() })
	fstest.Run(t, "mkfs.ext4", "-q", dev.Path)
	if len(live.trimmed()) == 0 {
		t.Error("mkfs.ext4's discard did not reach Trim through the loop device")
	}
	mnt := filepath.Join(tmp, "live")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount(dev.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	old := fstest.WriteFiles(t, mnt, 1, 0, 10, 4096, 1<<20, 5<<20+3)
	fstest.Run(t, "sync", "-f", mnt)

	// The "snapshot": a copy of the live image taken while mounted, its
	// journal dirty, as a crash-consistent snapshot's is.
	snapFile := filepath.Join(tmp, "s1.raw")
	fstest.Run(t, "cp", "--sparse=always", live.f.Name(), snapFile)
	snap, err := openTestFile(snapFile)
	if err != nil {
		t.Fatal(err)
	}
	src.addSnapshot("vm", "s1", snap)
	tree.Invalidate("vm")
	snapSum := fstest.FileSum(t, snapFile)

	// Change the live filesystem: the snapshot must not follow.
	fstest.WriteFiles(t, mnt, 2, 100, 200) // overwrites files/f and files/ff
	if err := os.Remove(filepath.Join(mnt, "files", "fff")); err != nil {
		t.Fatal(err)
	}
	fstest.Run(t, "sync", "-f", mnt)

	dir := filepath.Join(tmp, "restore")
	opts := restore.Options{ReadOnly: true, Scratch: true, StateDir: filepath.Join(tmp, "state")}
	info, err := restore.Mount(context.Background(), scratchPath(tree, "vm", "s1"), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if info.FSType != "ext4" || info.Options != "" {
		t.Errorf("restore mounted %s with %q; want ext4 with journal replay", info.FSType, info.Options)
	}
	fstest.CheckFiles(t, dir, old)
	if _, err := restore.Umount(context.Background(), dir, opts.StateDir); err != nil {
		t.Fatal(err)
	}

	// e2fsck after journal replay, on a throwaway overlay of the snapshot.
	scratch, err := loop.Attach(scratchPath(tree, "vm", "s1"), loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer scratch.Detach()
	fstest.Run(t, "e2fsck", "-E", "journal_only", "-y", scratch.Path)
	fstest.Run(t, "e2fsck", "-fn", scratch.Path)
	if fstest.FileSum(t, snapFile) != snapSum {
		t.Error("restoring through the scratch file changed the snapshot")
	}
}

// TestScratchPrivate: each open of a scratch file has its own overlay:
// writes are seen by that handle only, never by the snapshot, and are gone
// after close.
func TestScratchPrivate(t *testing.T) {
	tree, src, _ := oneDisk(t, fusefs.Options{})
	snap := newTestFile(t, t.TempDir(), diskSize)
	orig := randomBytes(3*4096, 40)
	if _, err := snap.f.WriteAt(orig, 8192); err != nil {
		t.Fatal(err)
	}
	src.addSnapshot("d", "s", snap)
	path := scratchPath(tree, "d", "s")
	a, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Unaligned, across block boundaries: the overlay must merge.
	patch := randomBytes(5000, 41)
	if _, err := a.WriteAt(patch, 8192+100); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), orig...)
	copy(want[100:], patch)
	for _, c := range []struct {
		name string
		f    *os.File
		want []byte
	}{
		{"writer", a, want},
		{"other handle", b, orig},
	} {
		got := make([]byte, len(orig))
		if _, err := c.f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("%s: %v, sees the expected data %v", c.name, err, bytes.Equal(got, c.want))
		}
	}
	if !bytes.Equal(snap.backing(t, 8192, int64(len(orig))), orig) {
		t.Error("a scratch write reached the snapshot")
	}
	a.Close()
	if got, err := readAt(path, 8192, len(orig)); err != nil || !bytes.Equal(got, orig) {
		t.Errorf("reopened scratch file: %v, shows the snapshot %v", err, bytes.Equal(got, orig))
	}
}
