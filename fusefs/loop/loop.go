// Package loop attaches files to loop devices (/dev/loopN), so a disk image
// served as a file (a FUSE disk.raw or snapshot) can be read as a block
// device with partitions, and detaches them again.
package loop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoLoop means the kernel offers no loop devices.
var ErrNoLoop = errors.New("loop devices are not available")

// Options configure Attach.
type Options struct {
	// ReadOnly attaches the device read-only (snapshots).
	ReadOnly bool
	// PartScan makes the kernel read the partition table and create
	// /dev/loopNpM for each partition.
	PartScan bool
	// AutoClear detaches the device when its last user closes it: after
	// the unmount of a filesystem mounted from it, or, if nothing opened
	// it, when the returned Device is closed.
	AutoClear bool
	// Offset and SizeLimit expose only part of the file (one partition);
	// a zero SizeLimit means to the end of the file.
	Offset, SizeLimit int64
}

// Device is an attached loop device, open until Close.
type Device struct {
	// Path is /dev/loopN.
	Path string
	// Number is N.
	Number int
	f      *os.File
}

const (
	controlPath = "/dev/loop-control"
	// attachTries bounds the retries when another process takes the free
	// device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE.
	attachTries = 16
)

// Attach attaches file to a free loop device.
func Attach(file string, opts Options) (*Device, error) {
	ctl, err := os.OpenFile(controlPath, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing; load the loop module (modprobe loop) or build the kernel with CONFIG_BLK_DEV_LOOP", ErrNoLoop, controlPath)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %v", ErrNoLoop, controlPath, err)
	}
	defer ctl.Close()
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	backing, err := os.OpenFile(file, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s for a loop device: %w", file, err)
	}
	defer backing.Close() // the loop device holds its own reference
	var lastErr error
	for range attachTries {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("%w: find a free loop device: %v", ErrNoLoop, err)
		}
		d, err := configure(n, backing, file, opts)
		if errors.Is(err, unix.EBUSY) {
			lastErr = err // taken by someone else meanwhile: ask again
			continue
		}
		return d, err
	}
	return nil, fmt.Errorf("attach %s to a loop device: every free device was taken meanwhile: %w", file, lastErr)
}

// configure binds backing to /dev/loopN.
func configure(n int, backing *os.File, name string, opts Options) (*Device, error) {
	path := "/dev/loop" + strconv.Itoa(n)
	dev, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	info := unix.LoopInfo64{Offset: uint64(opts.Offset), Sizelimit: uint64(opts.SizeLimit)}
	if opts.ReadOnly {
		info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.PartScan {
		info.Flags |= unix.LO_FLAGS_PARTSCAN
	}
	if opts.AutoClear {
		info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	copy(info.File_name[:len(info.File_name)-1], name)
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info}
	err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		// Kernels before 5.8 have no LOOP_CONFIGURE.
		err = setFD(dev, backing, &info)
	}
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("attach %s to %s: %w", name, path, err)
	}
	return &Device{Path: path, Number: n, f: dev}, nil
}

// setFD is the two-step attach of old kernels.
func setFD(dev, backing *os.File, info *unix.LoopInfo64) error {
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), info); err != nil {
		unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// Close closes the device; with AutoClear and no other user it detaches.
func (d *Device) Close() error { return d.f.Close() }

// Detach detaches the device and closes it. When nothing else has the
// device open, the file is released before Detach returns; otherwise the
// kernel detaches it when the last user closes it.
func (d *Device) Detach() error {
	err := unix.IoctlSetInt(int(d.f.Fd()), unix.LOOP_CLR_FD, 0)
	if cerr := d.f.Close(); err == nil || errors.Is(err, unix.ENXIO) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", d.Path, err)
	}
	return nil
}

// Detach detaches the device at path (/dev/loopN). A device already
// detached is not an error.
func Detach(path string) error {
	dev, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	defer dev.Close()
	err = unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0)
	if errors.Is(err, unix.ENXIO) {
		return nil // not attached
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	return nil
}

// BackingFile is the file attached to the device at path, as the kernel
// recorded it (empty when nothing is attached).
func BackingFile(path string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(path), "loop", "backing_file"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
