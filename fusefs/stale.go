package fusefs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// staleStatTimeout bounds how long CleanStale waits for a FUSE mount to
// answer stat before it treats the mount as dead.
const staleStatTimeout = 2 * time.Second

// CleanStale detaches dead FUSE mounts stacked on dir: ones whose server
// is gone (statfs fails with ENOTCONN, "Transport endpoint is not
// connected") or does not answer within two seconds. It asks statfs, not
// stat: the kernel answers stat from its attribute cache for a while after
// the server died. It returns how many it detached.
// It refuses, with an error, when dir is a mount point of something else
// or of a FUSE filesystem that still answers (another cairnd?). The daemon
// calls it at start; Mount calls it too.
func CleanStale(dir string) (int, error) { return cleanStale(ownNamespace, dir) }

func cleanStale(ns namespace, dir string) (int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0, fmt.Errorf("fuse mount point %s: %w", dir, err)
	}
	detached := 0
	for range 16 { // mounts can stack; each pass detaches the top one
		m, found, err := mountAt(ns, abs)
		if err != nil {
			return detached, err
		}
		statErr := statfsWithTimeout(ns.view(abs))
		if !found {
			if errors.Is(statErr, unix.ENOTCONN) {
				// Not in our mount table (another namespace's view?),
				// but dead here: detach it anyway.
				if err := ns.detach(abs); err != nil {
					return detached, fmt.Errorf("detach dead FUSE mount on %s: %w", abs, err)
				}
				detached++
				continue
			}
			return detached, nil
		}
		if !isFUSE(m.fstype) {
			return detached, fmt.Errorf("fuse mount point %s is already a mount point (%s from %s); unmount it or choose another FUSE directory", abs, m.fstype, m.source)
		}
		if statErr == nil && ns.host && m.fstype == FSType {
			// In the host's namespace a cairn tree's statfs cannot be
			// trusted: the kernel answers a process whose ids differ from
			// the mount's (cairnd runs as root:cairn, the tree is
			// root:root's) with made-up figures and never ENOTCONN. The
			// daemon holds its data directory's lock and the FUSE
			// directory is its own, so a tree found there was left by
			// the cairnd before it: detach it.
			statErr = errors.New("left by an earlier cairnd")
		}
		if statErr == nil {
			return detached, fmt.Errorf("fuse mount point %s already has a live FUSE mount (%s from %s): is another cairnd running? Stop it, or unmount with 'umount -l %s'", abs, m.fstype, m.source, abs)
		}
		if errors.Is(statErr, errNoAnswer) {
			abortConnection(m.device)
		}
		if err := ns.detach(abs); err != nil {
			return detached, fmt.Errorf("detach stale FUSE mount on %s (%v): %w", abs, statErr, err)
		}
		detached++
	}
	return detached, fmt.Errorf("fuse mount point %s: still mounted after detaching %d stale mounts", abs, detached)
}

func isFUSE(fstype string) bool {
	return fstype == "fuse" || fstype == "fuseblk" || strings.HasPrefix(fstype, "fuse.")
}

var errNoAnswer = errors.New("no answer")

// abortConnection aborts the FUSE connection of a mount whose server is
// stuck, so requests blocked on it (our own stat among them) fail at once.
func abortConnection(device string) {
	_, minor, ok := strings.Cut(device, ":")
	if !ok {
		return
	}
	_ = os.WriteFile("/sys/fs/fuse/connections/"+minor+"/abort", []byte("1"), 0)
}

// statfsWithTimeout asks dir's filesystem for its statistics, which a
// FUSE server must answer itself. A server that is alive but stuck makes
// statfs block, which counts as dead after staleStatTimeout (the caller
// aborts the connection, which ends the blocked call).
func statfsWithTimeout(dir string) error {
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(dir, &st)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(staleStatTimeout):
		return fmt.Errorf("statfs %s: %w in %v", dir, errNoAnswer, staleStatTimeout)
	}
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	device     string // "major:minor"; a FUSE mount's minor names its connection
	mountPoint string
	fstype     string
	source     string
}

// MountPoints lists where trees (of any cairnd) are mounted, from this
// process's mount table.
func MountPoints() ([]string, error) {
	mounts, err := readMountInfo()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.fstype == FSType {
			out = append(out, m.mountPoint)
		}
	}
	return out, nil
}

func readMountInfo() ([]mountInfo, error) { return ownNamespace.readMountInfo() }

func (ns namespace) readMountInfo() ([]mountInfo, error) {
	f, err := os.Open(ns.proc + "/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return parseMountInfo(f)
}

// mountAt returns the topmost mount on dir.
func mountAt(ns namespace, dir string) (mountInfo, bool, error) {
	mounts, err := ns.readMountInfo()
	if err != nil {
		return mountInfo{}, false, err
	}
	var top mountInfo
	found := false
	for _, m := range mounts {
		if m.mountPoint == dir {
			top, found = m, true // later lines are mounted on top
		}
	}
	return top, found, nil
}

// parseMountInfo parses proc(5) mountinfo: "id parent major:minor root
// mountpoint options [optional fields...] - fstype source superoptions".
func parseMountInfo(r io.Reader) ([]mountInfo, error) {
	var out []mountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(fields) < sep+3 {
			return nil, fmt.Errorf("parse mount table: malformed line %q", sc.Text())
		}
		out = append(out, mountInfo{
			device:     fields[2],
			mountPoint: unescapeOctal(fields[4]),
			fstype:     fields[sep+1],
			source:     unescapeOctal(fields[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline
// and backslash in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
