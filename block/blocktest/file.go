package blocktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"github.com/cairn-storage/cairn/block"
	"golang.org/x/sys/unix"
)

// File is an block.Device over a regular file: pread/pwrite, fdatasync,
// fallocate for trim and zeroing, SEEK_DATA/SEEK_HOLE for extents,
// posix_fadvise for NBD_CMD_CACHE. Its size is fixed when opened.
type File struct {
	f    *os.File
	fd   int
	size int64
}

var (
	_ block.Device    = (*File)(nil)
	_ block.Cacher    = (*File)(nil)
	_ block.TryReader = (*File)(nil)
	_ block.Backed    = (*File)(nil)
)

// CreateFile creates (or truncates) a sparse file of size bytes at path.
func CreateFile(path string, size int64) (*File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size %s to %d bytes: %w", path, size, err)
	}
	return &File{f: f, fd: int(f.Fd()), size: size}, nil
}

// OpenFile opens an existing file; readOnly opens it O_RDONLY.
func OpenFile(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f, fd: int(f.Fd()), size: fi.Size()}, nil
}

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }

// Size is the file's size when opened.
func (b *File) Size() int64 { return b.size }

// ReadAt reads with pread; bytes past the end of the file read as zeros.
func (b *File) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := b.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return err
}

// TryReadAt reads with preadv2(RWF_NOWAIT): it succeeds only when every
// byte is in the page cache.
func (b *File) TryReadAt(p []byte, off int64) bool {
	if len(p) == 0 {
		return false
	}
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	n, _, errno := unix.Syscall6(unix.SYS_PREADV2, uintptr(b.fd), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), uintptr(off>>32), unix.RWF_NOWAIT)
	return errno == 0 && int(n) == len(p)
}

// Backing is the file itself: the server may sendfile from it.
func (b *File) Backing(off, _ int64) (uintptr, int64, bool) { return uintptr(b.fd), off, true }

// WriteAt writes with pwrite, then fdatasync when fua.
func (b *File) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	if _, err := b.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return unix.Fdatasync(b.fd)
	}
	return nil
}

// Flush is fdatasync.
func (b *File) Flush(context.Context) error { return unix.Fdatasync(b.fd) }

// Trim punches a hole.
func (b *File) Trim(ctx context.Context, off, length int64, fua bool) error {
	var flags block.ZeroFlags
	if fua {
		flags = block.ZeroFUA
	}
	return b.Zero(ctx, off, length, flags)
}

// Zero punches a hole, or with ZeroNoHole allocates zeros
// (FALLOC_FL_ZERO_RANGE). When fallocate fails it writes zeros, unless
// ZeroFast asks it to fail with block.ErrNotFast instead.
func (b *File) Zero(_ context.Context, off, length int64, flags block.ZeroFlags) error {
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if flags&block.ZeroNoHole != 0 {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := unix.Fallocate(b.fd, mode, off, length); err != nil {
		if flags&block.ZeroFast != 0 {
			return block.ErrNotFast
		}
		zeros := make([]byte, min(length, 1<<20))
		for length > 0 {
			n := min(length, int64(len(zeros)))
			if _, err := b.f.WriteAt(zeros[:n], off); err != nil {
				return err
			}
			off, length = off+n, length-n
		}
	}
	if flags&block.ZeroFUA != 0 {
		return unix.Fdatasync(b.fd)
	}
	return nil
}

// Cache asks the kernel to read the range ahead.
func (b *File) Cache(_ context.Context, off, length int64) error {
	return unix.Fadvise(b.fd, off, length, unix.FADV_WILLNEED)
}

// Extents walks SEEK_DATA/SEEK_HOLE: holes read as zeros.
func (b *File) Extents(_ context.Context, off, length int64) ([]block.Extent, error) {
	end := min(off+length, b.size)
	var out []block.Extent
	for off < end {
		data, err := unix.Seek(b.fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end
		} else if err != nil {
			return append(out, block.Extent{Length: end - off}), nil
		}
		if data > off {
			n := min(data, end) - off
			out = append(out, block.Extent{Length: n, Flags: block.StateHole | block.StateZero})
			off += n
			continue
		}
		hole, err := unix.Seek(b.fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		n := min(hole, end) - off
		out = append(out, block.Extent{Length: n})
		off += n
	}
	return out, nil
}
