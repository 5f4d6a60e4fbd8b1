package inspect

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Raw is a raw view of an image: a file whose bytes are the disk's,
// read-only. An image file that is not raw (qcow2, vmdk...) and an NBD
// export are shown as a file by nbdfuse (libnbd), with qemu-nbd serving
// the image file under limits.
type Raw struct {
	Path  string
	close func() error
}

// Close removes the view.
func (r *Raw) Close() error {
	if r.close == nil {
		return nil
	}
	return r.close()
}

// RawFile is the view of a raw image file: the file itself.
func RawFile(file string) *Raw { return &Raw{Path: file} }

// RawImage shows an image file of qemu format (qcow2, vmdk, vpc, vhdx) as
// raw, read-only; qemu-nbd reads it with at most 1 GiB of address space.
func RawImage(ctx context.Context, file, format string) (*Raw, error) {
	return nbdfuse(ctx, "[", "prlimit", "--as="+strconv.Itoa(1<<30), "--", "qemu-nbd", "-r", "-f", format, "--", file, "]")
}

// RawNBD shows an NBD export (nbd+unix://...) as a file.
func RawNBD(ctx context.Context, uri string) (*Raw, error) { return nbdfuse(ctx, uri) }

// nbdfuse mounts what source names as the file image in a new directory
// and waits until it is served.
func nbdfuse(ctx context.Context, source ...string) (*Raw, error) {
	if _, err := exec.LookPath("nbdfuse"); err != nil {
		return nil, fmt.Errorf("nbdfuse (libnbd) is needed to read the image as a disk: %w", err)
	}
	dir, err := os.MkdirTemp("", "cairn-raw-")
	if err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, "pid")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command("nbdfuse", append([]string{"-r", "-P", pidFile, filepath.Join(mnt, "image")}, source...)...)
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("run nbdfuse: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		exec.Command("fusermount3", "-u", mnt).Run()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		return os.RemoveAll(dir)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if st, err := os.Stat(pidFile); err == nil && st.Size() > 0 {
			return &Raw{Path: filepath.Join(mnt, "image"), close: stop}, nil
		}
		select {
		case err := <-exited:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("nbdfuse: %v: %s", err, stderr.String())
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
