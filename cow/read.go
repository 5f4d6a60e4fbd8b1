package cow

import (
	"context"
	"errors"
	"io"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/block"
)

// ReadAt reads the live disk: the live image, and redirected writes.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.touch()
	if v.opts.CopyOnRead && v.isClone() && !v.readOnly && len(p) > 0 {
		if err := v.copyOnRead(off, int64(len(p))); err != nil {
			return err
		}
	}
	if v.rd.countOrZero() > 0 {
		// Held across the image read: a retire merging a page between
		// the two reads must not leave the older content in p.
		v.rd.mu.RLock()
		defer v.rd.mu.RUnlock()
		if err := v.readImage(p, off); err != nil {
			return err
		}
		return v.readOverlay(p, off)
	}
	return v.readImage(p, off)
}

func (v *Volume) readImage(p []byte, off int64) error {
	n, err := v.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == io.EOF {
		// A regular file shorter than the disk (never written at the end)
		// reads as zeros.
		clear(p[n:])
		err = nil
	}
	if err == nil && v.isClone() {
		err = v.overlayOrigin(p, off)
	}
	return err
}

// Extents reports data and holes from the filesystem (SEEK_DATA/SEEK_HOLE),
// with redirected pages as data. A block device reports all data.
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]block.Extent, error) {
	if v.isDevice {
		return []block.Extent{{Length: length}}, nil
	}
	if v.isClone() {
		return v.cloneExtents(ctx, off, length)
	}
	ext, err := fileExtents(int(v.f.Fd()), off, length, v.Size())
	if err != nil {
		return nil, err
	}
	return v.overlayExtents(ext, off, length), nil
}

// fileExtents walks SEEK_DATA/SEEK_HOLE over [off, off+length).
func fileExtents(fd int, off, length, size int64) ([]block.Extent, error) {
	end := min(off+length, size)
	var out []block.Extent
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // only a hole from here to EOF
		} else if err != nil {
			return []block.Extent{{Length: end - off}}, nil // filesystem without SEEK_DATA: all data
		}
		if data > off {
			n := min(data, end) - off
			out = append(out, block.Extent{Length: n, Flags: block.StateHole | block.StateZero})
			off += n
			continue
		}
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		n := min(hole, end) - off
		out = append(out, block.Extent{Length: n})
		off += n
		if len(out) >= 1024 {
			break
		}
	}
	return out, nil
}

// overlayExtents marks as data the redirected pages in the extents ext
// of [off, off+length).
func (v *Volume) overlayExtents(ext []block.Extent, off, length int64) []block.Extent {
	if v.rd.countOrZero() == 0 {
		return ext
	}
	v.rd.mu.RLock()
	var data []int64 // page offsets in range
	end := off + length
	it := v.rd.any.Iterator()
	it.AdvanceIfNeeded(uint64(off / pageSize))
	for it.HasNext() {
		o := int64(it.Next()) * pageSize
		if o >= end {
			break
		}
		data = append(data, o)
	}
	v.rd.mu.RUnlock()
	if len(data) == 0 {
		return ext
	}
	// Rebuild the extents with the data ranges forced.
	var out []block.Extent
	push := func(l int64, flags uint32) {
		if l <= 0 {
			return
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += l
			return
		}
		out = append(out, block.Extent{Length: l, Flags: flags})
	}
	pos, di := off, 0
	for _, e := range ext {
		eend := pos + e.Length
		for pos < eend {
			for di < len(data) && data[di]+pageSize <= pos {
				di++
			}
			if e.Flags == 0 {
				push(eend-pos, 0)
				pos = eend
				break
			}
			if di < len(data) && data[di] <= pos {
				n := min(eend, data[di]+pageSize) - pos
				push(n, 0)
				pos += n
				continue
			}
			next := eend
			if di < len(data) {
				next = min(next, data[di])
			}
			push(next-pos, e.Flags)
			pos = next
		}
	}
	return out
}

// Backing returns the live image's descriptor for reads of [off,
// off+length): the live disk's content is exactly the image's, so a
// frontend may splice from it without a copy (block.Backed). The
// descriptor stays valid until Close.
func (v *Volume) Backing(off, length int64) (fd uintptr, fdOff int64, ok bool) {
	if v.overlaps(off, length) || v.isClone() && !v.allLocal(off, length) {
		return 0, 0, false // redirected writes are not in the image
	}
	return v.f.Fd(), off, true
}

// TryReadAt reads the live image only if every byte is in the page cache
// (preadv2 with RWF_NOWAIT), so the NBD server can answer cached small
// reads without handing them to a worker (block.TryReader).
func (v *Volume) TryReadAt(p []byte, off int64) bool {
	if len(p) == 0 || v.overlaps(off, int64(len(p))) || v.isClone() && !v.allLocal(off, int64(len(p))) {
		return false
	}
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	v.touch()
	n, _, errno := unix.Syscall6(unix.SYS_PREADV2, v.f.Fd(), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), uintptr(off>>32), unix.RWF_NOWAIT)
	return errno == 0 && int(n) == len(p)
}

// allLocal reports whether a clone holds every block of [off, off+length)
// whole, so the live image alone has their content.
func (v *Volume) allLocal(off, length int64) bool {
	first, last := v.blockRange(off, length)
	for b := first; b <= last; b++ {
		if !v.local.isFull(b) {
			return false
		}
	}
	return true
}
