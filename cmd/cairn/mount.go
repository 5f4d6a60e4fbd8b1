package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/fusefs"
	"github.com/cairn-storage/cairn/fusefs/restore"
)

// mountFlags are the flags of cairn mount and cairn umount.
type mountFlags struct {
	fuseDir  string // cairnd's FUSE view; found in the mount table when empty
	stateDir string // where restore mounts are recorded
	opts     restore.Options
	force    bool // mount a live disk read-write although it has clients
}

func (a *app) mountCmd() *cobra.Command {
	var mf mountFlags
	cmd := &cobra.Command{
		Use:   "mount DISK[@SNAPSHOT] DIR",
		Short: "Mount the filesystem of a snapshot (read-only) or a disk on DIR, for file-level restore",
		Long: "Attaches the snapshot's file in cairnd's FUSE view to a loop device, finds the filesystem\n" +
			"(whole disk, or the largest supported partition: MBR or GPT) and mounts it on DIR, created if\n" +
			"missing. A snapshot mounts read-only, complete: its journal is replayed into a throwaway\n" +
			"overlay, never into the snapshot. A live disk mounts read-write (read-only with --read-only);\n" +
			"only while no VM uses it. Undo with 'cairn umount DIR'. Needs root.",
		Example: "  cairn mount vm1-root@nightly-1122 /mnt/restore\n" +
			"  cairn mount vm1-root@nightly-1122 /mnt/restore --partition 2\n" +
			"  cairn umount /mnt/restore",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeMountTarget,
		RunE: a.run(func(ctx context.Context, args []string) error {
			info, err := a.mount(ctx, args[0], args[1], mf)
			if err != nil {
				return err
			}
			return a.print(info, func() error {
				_, err := fmt.Fprintf(a.stdout, "mounted %s %s on %s, %s\n", args[0], describeVolume(info), info.Dir, access(info))
				return err
			})
		}),
	}
	f := cmd.Flags()
	f.IntVar(&mf.opts.Partition, "partition", 0, "partition number to mount (default: the whole disk, else the largest partition with a supported filesystem)")
	f.BoolVar(&mf.opts.ReadOnly, "read-only", false, "mount a live disk read-only (snapshots always are)")
	f.BoolVar(&mf.force, "force", false, "mount a live disk read-write although NBD or FUSE clients have it open")
	mf.addCommon(cmd)
	return cmd
}

func (a *app) umountCmd() *cobra.Command {
	var mf mountFlags
	cmd := &cobra.Command{
		Use:   "umount DIR",
		Short: "Undo 'cairn mount': unmount DIR, detach its loop device, remove DIR if mount created it",
		Args:  cobra.ExactArgs(1),
		RunE: show(a, func(ctx context.Context, args []string) (restore.Info, error) {
			return restore.Umount(ctx, args[0], mf.stateDir)
		},
			func(info restore.Info) error {
				_, err := fmt.Fprintf(a.stdout, "unmounted %s and detached %s\n", info.Dir, info.Loop)
				return err
			}),
	}
	mf.addCommon(cmd)
	return cmd
}

func (mf *mountFlags) addCommon(cmd *cobra.Command) {
	cmd.Flags().StringVar(&mf.fuseDir, "fuse-dir", "", "cairnd's FUSE view (default: found in the mount table)")
	cmd.Flags().StringVar(&mf.stateDir, "state-dir", restore.DefaultStateDir, "where restore mounts are recorded")
}

// completeMountTarget completes DISK[@SNAPSHOT] from cairnd (a word with
// '@' from the disk's snapshots), then DIR with directories.
func (a *app) completeMountTarget(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	switch {
	case len(args) == 1:
		return nil, cobra.ShellCompDirectiveFilterDirs
	case len(args) > 1:
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	disk, _, isSnap := strings.Cut(toComplete, "@")
	if !isSnap {
		return a.completeDisks(cmd, args, toComplete)
	}
	names, directive := a.completeSnapshots(cmd, []string{disk}, "")
	for i, n := range names {
		names[i] = disk + "@" + n
	}
	return names, directive
}

// mount checks DISK[@SNAPSHOT] with cairnd and mounts its file.
func (a *app) mount(ctx context.Context, target, dir string, mf mountFlags) (restore.Info, error) {
	if os.Geteuid() != 0 {
		return restore.Info{}, errors.New("cairn mount needs root: it attaches a loop device and mounts a filesystem")
	}
	diskName, snap, isSnap := strings.Cut(target, "@")
	disk, err := a.client.Disk(ctx, diskName)
	if err != nil {
		return restore.Info{}, err
	}
	if isSnap {
		if _, err := a.client.Snapshot(ctx, diskName, snap); err != nil {
			return restore.Info{}, err
		}
	} else if !mf.opts.ReadOnly && len(disk.Clients) > 0 && !mf.force {
		return restore.Info{}, fmt.Errorf("disk %s has %d NBD client(s) (a VM?): mounting it read-write beside them corrupts it; use --read-only, or a snapshot (%s@SNAPSHOT), or --force", diskName, len(disk.Clients), diskName)
	}
	tree, err := findTree(mf.fuseDir, diskName)
	if err != nil {
		return restore.Info{}, err
	}
	opts := mf.opts
	opts.StateDir = mf.stateDir
	file := filepath.Join(tree, diskName, "disk.raw")
	if isSnap {
		// The scratch file takes the journal replay; the mount is read-only.
		file = filepath.Join(tree, diskName, "scratch", snap+".raw")
		opts.ReadOnly, opts.Scratch = true, true
	}
	if _, err := os.Stat(file); err != nil {
		return restore.Info{}, fmt.Errorf("%s is not in cairnd's FUSE view at %s (%v): is the snapshot failed or being deleted?", target, tree, err)
	}
	return restore.Mount(ctx, file, dir, opts)
}

// findTree returns cairnd's FUSE view: dir if given, else the one tree in
// the mount table that shows disk.
func findTree(dir, disk string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	trees, err := fusefs.MountPoints()
	if err != nil {
		return "", err
	}
	var found []string
	for _, t := range trees {
		if _, err := os.Stat(filepath.Join(t, disk)); err == nil { // a dead tree fails with ENOTCONN
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no FUSE view of cairnd shows disk %s (is cairnd running with --fuse? see docs/fuse.md); give its directory with --fuse-dir", disk)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("disk %s is in several FUSE views (%s): choose one with --fuse-dir", disk, strings.Join(found, ", "))
}

func describeVolume(info restore.Info) string {
	if info.Volume == 0 {
		return "(" + info.FSType + ")"
	}
	return fmt.Sprintf("partition %d (%s)", info.Volume, info.FSType)
}

func access(info restore.Info) string {
	if info.ReadOnly {
		return "read-only"
	}
	return "read-write"
}
