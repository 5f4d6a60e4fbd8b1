package inspect

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// The virtio check: a guest moved to KVM finds its root disk only if its
// initramfs holds virtio_blk (or virtio_scsi) or its kernel has them
// built in. The initramfs is read here, without unpacking it to disk: a
// sequence of cpio archives (newc), each plain or compressed (an early
// microcode archive, then the main one, usually compressed).

// virtioModules are the drivers a KVM guest's root disk needs (one of).
var virtioModules = []string{"virtio_blk", "virtio_scsi"}

// maxInitramfs bounds the bytes read from an initramfs once
// decompressed (a decompression bomb stops here).
const maxInitramfs = 2 << 30

// checkVirtio looks for virtio drivers for the newest kernel in /boot.
func (r *Report) checkVirtio(ctx context.Context, bootFS fs.FS, prefix, where string) {
	kernels := glob(bootFS, path.Join(prefix, "vmlinuz-*"))
	if len(kernels) == 0 {
		r.add(Finding{Check: "virtio", Where: where, Status: StatusInfo, Message: "no kernel (vmlinuz-*) in /boot: check by hand that the guest's kernel has virtio_blk"})
		return
	}
	sort.Strings(kernels)
	version := strings.TrimPrefix(path.Base(kernels[len(kernels)-1]), "vmlinuz-")
	if cfg, err := readLimited(bootFS, path.Join(prefix, "config-"+version)); err == nil && bytes.Contains(cfg, []byte("\nCONFIG_VIRTIO_BLK=y")) {
		r.add(Finding{Check: "virtio", Where: where, Status: StatusOK, Message: "virtio_blk is built into kernel " + version})
		return
	}
	var initrd string
	for _, name := range []string{"initrd.img-" + version, "initramfs-" + version + ".img", "initrd-" + version} {
		if exists(bootFS, path.Join(prefix, name)) {
			initrd = path.Join(prefix, name)
			break
		}
	}
	fix := "add virtio_blk, virtio_scsi, virtio_pci and virtio_net to the initramfs (Debian: /etc/initramfs-tools/modules, then update-initramfs -u; RHEL: dracut --add-drivers, then dracut -f) before exporting"
	if initrd == "" {
		r.add(Finding{Check: "virtio", Where: where, Status: StatusWarning, Message: "kernel " + version + " has no initramfs in /boot and virtio_blk is not built in", Fix: fix})
		return
	}
	found, err := initramfsModules(ctx, bootFS, initrd)
	if err != nil {
		r.add(Finding{Check: "virtio", Where: where + ": /" + initrd, Status: StatusWarning, Message: "cannot read the initramfs: " + err.Error(), Fix: "check by hand: lsinitramfs " + path.Base(initrd) + " | grep virtio"})
		return
	}
	var have []string
	for _, m := range virtioModules {
		if found[m] {
			have = append(have, m)
		}
	}
	if len(have) == 0 {
		r.add(Finding{Check: "virtio", Where: where + ": /" + initrd, Status: StatusWarning,
			Message: "the initramfs of kernel " + version + " has no virtio_blk or virtio_scsi: on KVM the guest will not find its root disk", Fix: fix})
		return
	}
	r.add(Finding{Check: "virtio", Where: where + ": /" + initrd, Status: StatusOK, Message: "the initramfs of kernel " + version + " has " + strings.Join(have, ", ")})
}

// initramfsModules returns the kernel modules (by name, without .ko and
// compression suffixes) an initramfs holds.
func initramfsModules(ctx context.Context, fsys fs.FS, name string) (map[string]bool, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	found := map[string]bool{}
	err = scanInitramfs(ctx, f, func(file string) {
		base := path.Base(file)
		if i := strings.Index(base, ".ko"); i > 0 {
			found[base[:i]] = true
		}
	})
	return found, err
}

// scanInitramfs calls fn with the name of every file in the initramfs r.
func scanInitramfs(ctx context.Context, r io.Reader, fn func(name string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		if err := skipZeros(br); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		magic, err := br.Peek(6)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if string(magic) == "070701" || string(magic) == "070702" {
			if err := scanCpio(br, fn); err != nil {
				return err
			}
			continue
		}
		// A compressed archive runs to the end of the file.
		dec, wait, err := decompress(ctx, br, magic)
		if err != nil {
			return err
		}
		err = scanInitramfs(ctx, io.LimitReader(dec, maxInitramfs), fn)
		if werr := wait(); err == nil {
			err = werr
		}
		return err
	}
}

func skipZeros(br *bufio.Reader) error {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return err
		}
		if b != 0 {
			return br.UnreadByte()
		}
	}
}

// decompress opens a compressed stream by its magic: gzip, bzip2 and
// zstd here, xz and lz4 through their commands.
func decompress(ctx context.Context, r io.Reader, magic []byte) (io.Reader, func() error, error) {
	none := func() error { return nil }
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		z, err := gzip.NewReader(r)
		return z, none, err
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return z, func() error { z.Close(); return nil }, nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		return bzip2.NewReader(r), none, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return pipe(ctx, r, "xz", "-dc")
	case bytes.HasPrefix(magic, []byte{0x02, 0x21, 0x4c, 0x18}), bytes.HasPrefix(magic, []byte{0x04, 0x22, 0x4d, 0x18}):
		return pipe(ctx, r, "lz4", "-dc")
	}
	return nil, nil, fmt.Errorf("initramfs: unknown compression (magic % x)", magic)
}

// pipe decompresses r through a command.
func pipe(ctx context.Context, r io.Reader, name string, args ...string) (io.Reader, func() error, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = r
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("initramfs: %s is needed to read it: %w", name, err)
	}
	return out, func() error {
		io.Copy(io.Discard, out)
		cmd.Wait()
		return nil
	}, nil
}

// scanCpio reads one newc cpio archive up to its trailer.
func scanCpio(br *bufio.Reader, fn func(name string)) error {
	hdr := make([]byte, 110)
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return fmt.Errorf("initramfs: cpio header: %w", err)
		}
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("initramfs: not a cpio header (%q)", hdr[:6])
		}
		field := func(i int) (int64, error) {
			return strconv.ParseInt(string(hdr[6+8*i:14+8*i]), 16, 64)
		}
		size, err1 := field(6)
		nameSize, err2 := field(11)
		if err := errors.Join(err1, err2); err != nil || nameSize <= 0 || nameSize > 4096 {
			return fmt.Errorf("initramfs: damaged cpio header")
		}
		name := make([]byte, pad4(110+nameSize)-110)
		if _, err := io.ReadFull(br, name); err != nil {
			return fmt.Errorf("initramfs: cpio name: %w", err)
		}
		n := string(name[:nameSize-1])
		if n == "TRAILER!!!" {
			return nil
		}
		fn(n)
		if _, err := br.Discard(int(pad4(size))); err != nil {
			return fmt.Errorf("initramfs: cpio data of %s: %w", n, err)
		}
	}
}

func pad4(n int64) int64 { return (n + 3) &^ 3 }
