package fusefs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mounting the tree in the host's mount namespace. systemd's ProtectSystem=,
// PrivateTmp= and the like run cairnd in a mount namespace of its own, and
// a mount made there is invisible to the host (propagation runs from the
// host into the service, never back). So when cairnd's namespace is not
// PID 1's, the tree is mounted in PID 1's instead:
//
//  1. cairnd opens /dev/fuse itself;
//  2. nsenter(1) joins PID 1's mount namespace and runs mount(8), which
//     mounts the FUSE file system on the directory with fd= naming that
//     descriptor (passed to it as fd 3);
//  3. go-fuse serves the descriptor as a pre-mounted "/dev/fd/N" (its
//     support for mounts made by a privileged helper).
//
// Why a helper process rather than setns(2) in cairnd: the kernel refuses
// to move a multithreaded process into another mount namespace (EINVAL),
// and a Go program is always multithreaded; nsenter is a single-threaded C
// program. The unit lets cairnd do exactly this and no more: setns is in
// its system-call filter and RestrictNamespaces=mnt allows joining mount
// namespaces only (CAP_SYS_CHROOT, which setns needs for a mount
// namespace, is in its capability set). Stale mounts and unmounting use
// the host's mount table (/proc/1/mountinfo) and paths seen through
// /proc/1/root, and nsenter umount.

// namespace is a mount namespace to look at and act in: cairnd's own, or
// PID 1's.
type namespace struct {
	proc string // "/proc/self" or "/proc/1": its mountinfo and root
	host bool   // PID 1's, entered by nsenter
}

var (
	ownNamespace  = namespace{proc: "/proc/self"}
	hostNamespace = namespace{proc: "/proc/1", host: true}
)

// view is path as this process reaches it in the namespace.
func (ns namespace) view(path string) string {
	if ns.host {
		return "/proc/1/root" + path
	}
	return path
}

// detach lazily unmounts the top mount on dir.
func (ns namespace) detach(dir string) error {
	if !ns.host {
		return unix.Unmount(dir, unix.MNT_DETACH)
	}
	return nsenter("umount", "-l", dir)
}

// unmount unmounts dir, failing when it is busy.
func (ns namespace) unmount(dir string) error {
	if !ns.host {
		return unix.Unmount(dir, 0)
	}
	return nsenter("umount", dir)
}

// PrivateNamespace reports whether this process's mount namespace differs
// from PID 1's, so that a tree must be mounted there to be seen (false
// when that cannot be told).
func PrivateNamespace() bool {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return false
	}
	init, err := os.Readlink("/proc/1/ns/mnt")
	return err == nil && self != init
}

// nsenter runs a command in PID 1's mount namespace.
func nsenter(args ...string) error {
	return nsenterFiles(nil, args...)
}

func nsenterFiles(files []*os.File, args ...string) error {
	path, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("nsenter (util-linux) is needed to mount in the host's namespace: %w", err)
	}
	cmd := exec.Command(path, append([]string{"--mount=/proc/1/ns/mnt", "--"}, args...)...)
	cmd.ExtraFiles = files
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nsenter %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountInHost mounts an empty FUSE file system on dir in PID 1's mount
// namespace and returns the /dev/fuse descriptor that serves it, as
// go-fuse's magic mount point "/dev/fd/N". mount(8) may look at the new
// mount before it returns, which blocks until the file system answers:
// so it runs in the background, mountInHost returns once the mount is in
// the host's table, and the caller starts serving, then calls done,
// which waits for mount(8) and reports how it ended.
func mountInHost(dir string, allowOther bool) (mountPoint string, done func() error, err error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	dev := os.NewFile(uintptr(fd), "/dev/fuse")
	defer dev.Close()
	var st unix.Stat_t
	if err := unix.Stat(hostNamespace.view(dir), &st); err != nil {
		return "", nil, fmt.Errorf("fuse mount point %s in the host's namespace: %w", dir, err)
	}
	// Without allow_other the kernel lets only processes with exactly
	// these ids in. A root cairnd that systemd runs with Group=cairn is
	// root:cairn; the host's root, who uses the view, is root:root.
	gid := os.Getegid()
	if os.Geteuid() == 0 {
		gid = 0
	}
	opts := fmt.Sprintf("fd=3,rootmode=%o,user_id=%d,group_id=%d,max_read=%d,nosuid,nodev",
		st.Mode&unix.S_IFMT, os.Geteuid(), gid, MaxIO)
	if allowOther {
		opts += ",allow_other"
	}
	nsenterPath, err := exec.LookPath("nsenter")
	if err != nil {
		return "", nil, fmt.Errorf("nsenter (util-linux) is needed to mount in the host's namespace: %w", err)
	}
	// -i: no /sbin/mount.fuse helper; the kernel takes the options as they are.
	cmd := exec.Command(nsenterPath, "--mount=/proc/1/ns/mnt", "--", "mount", "-i", "-t", FSType, "-o", opts, "cairn", dir)
	cmd.ExtraFiles = []*os.File{dev}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("nsenter mount: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	wait := func() error {
		if err := <-exited; err != nil {
			return fmt.Errorf("nsenter mount %s: %w: %s", dir, err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if m, found, _ := mountAt(hostNamespace, dir); found && isFUSE(m.fstype) {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			if err = wait(); err == nil {
				err = errors.New("mount(8) returned but the host's mount table has no FUSE mount there")
			}
			return "", nil, err
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return "", nil, fmt.Errorf("nsenter mount %s: no mount after 10 s: %s", dir, out.String())
		}
	}
	// go-fuse takes a plain descriptor: one the *os.File's finalizer
	// would close (ending the mount) must not be it.
	served, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		hostNamespace.detach(dir)
		wait()
		return "", nil, fmt.Errorf("dup /dev/fuse: %w", err)
	}
	return fmt.Sprintf("/dev/fd/%d", served), wait, nil
}

// unmountHost unmounts a tree mounted by mountInHost and waits for its
// server to stop; busy, it detaches it lazily and says so.
func (t *Tree) unmountHost() error {
	err := hostNamespace.unmount(t.dir)
	if err != nil {
		if derr := hostNamespace.detach(t.dir); derr != nil {
			return fmt.Errorf("unmount FUSE tree %s: %v; lazy detach: %w", t.dir, err, derr)
		}
	}
	done := make(chan struct{})
	go func() { t.server.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	t.unmounted.Store(true)
	if err != nil {
		return fmt.Errorf("unmount FUSE tree %s: busy (%v): detached lazily; files still open on it fail once this process exits", t.dir, err)
	}
	return nil
}
