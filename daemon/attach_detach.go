package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/block"
	"golang.org/x/sys/unix"
)

// Detach, and what shutdown does to attachments (their devices stay, and
// wait for the next start).

// Detach disconnects device (/dev/nbdN or nbdN) and forgets its
// attachment. Unless force, a device that is mounted or held open is
// refused (block.ErrInUse); the device's page cache is flushed before the
// disconnect either way.
func (d *Daemon) Detach(ctx context.Context, device string, force bool) error {
	index, err := parseDeviceField(device)
	if err != nil {
		return err
	}
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	d.mu.Lock()
	a := d.attachments[index]
	d.mu.Unlock()
	if a == nil {
		return noAttachment(index)
	}
	return d.detach(ctx, a, force)
}

// forceDetach detaches a for a forced delete or rollback of its export.
func (d *Daemon) forceDetach(ctx context.Context, a *attachment) {
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	d.mu.Lock()
	current := d.attachments[a.rec.Index] == a
	d.mu.Unlock()
	if !current {
		return
	}
	if err := d.detach(ctx, a, true); err != nil {
		d.log.Warn("detaching for a forced change of its export", "device", a.device(), "err", err)
	}
}

// detach is Detach of an attachment in d.attachments. Caller holds
// d.attachMu.
func (d *Daemon) detach(ctx context.Context, a *attachment, force bool) error {
	d.mu.Lock()
	failed := a.exp == nil
	d.mu.Unlock()
	if !failed {
		if err := d.flushDevice(a, force); err != nil {
			return err
		}
		d.mu.Lock()
		a.halt()
		d.mu.Unlock()
		if err := d.kernel.Disconnect(a.rec.Index); err != nil {
			d.log.Warn("disconnecting a detached device", "device", a.device(), "err", err)
		}
		d.waitLinks(ctx, a)
	} else if d.deviceIsOurs(a) {
		// Failed to reconnect, but still configured as cairnd left it.
		if err := d.kernel.Disconnect(a.rec.Index); err != nil {
			d.log.Warn("disconnecting a device that had failed", "device", a.device(), "err", err)
		}
	}
	if a.release != nil {
		a.release()
	}
	if err := d.deleteAttachRecord(a.rec.Index); err != nil {
		return fmt.Errorf("detach %s: %w", a.device(), err)
	}
	d.mu.Lock()
	delete(d.attachments, a.rec.Index)
	d.mu.Unlock()
	d.log.Info("detached", "device", a.device(), "export", a.name.String(), "forced", force)
	return nil
}

// flushDevice writes the device's dirty page cache out before it is
// disconnected. Unless force it first makes sure nobody has the device
// mounted or open exclusively: an exclusive open fails with EBUSY then.
func (d *Daemon) flushDevice(a *attachment, force bool) error {
	flags := unix.O_RDONLY | unix.O_CLOEXEC
	if !force {
		flags |= unix.O_EXCL
	}
	fd, err := unix.Open(d.kernel.Path(a.rec.Index), flags, 0)
	if errors.Is(err, unix.EBUSY) && !force {
		return fieldError(block.ErrInUse, fieldForce, "%s is mounted or held open: unmount it (or close it) first, or detach with force=true (its users then get I/O errors)", a.device())
	}
	if err != nil {
		d.log.Warn("opening a device to flush it before detaching", "device", a.device(), "err", err)
		return nil
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		d.log.Warn("flushing a device before detaching", "device", a.device(), "err", err)
	}
	return nil
}

// waitLinks waits for a's links to end after its device was
// disconnected (the kernel sent NBD_CMD_DISC on each), closing their
// sockets if they linger.
func (d *Daemon) waitLinks(ctx context.Context, a *attachment) {
	done := make(chan struct{})
	go func() { a.links.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	case <-time.After(linksTimeout):
	}
	d.mu.Lock()
	for _, c := range a.conns {
		c.Close()
	}
	d.mu.Unlock()
	<-done
}

// deviceIsOurs reports whether a's device is configured with a's backend.
func (d *Daemon) deviceIsOurs(a *attachment) bool {
	s, ok, err := d.kernel.Status(a.rec.Index)
	if err != nil || !ok || !s.Connected {
		return false
	}
	backend, err := d.kernel.Backend(a.rec.Index)
	return err == nil && backend == a.rec.Backend
}

// stopAttachments makes every link end at shutdown without replacing its
// socket (the NBD server's shutdown closes them); the devices and their
// records stay for the next start. Caller holds d.mu.
func (d *Daemon) stopAttachments() {
	for _, a := range d.attachments {
		a.halt()
	}
}

// closeAttachments waits for the links stopped by stopAttachments and
// releases the exports, before the disks close.
func (d *Daemon) closeAttachments() {
	d.mu.Lock()
	all := d.sortedAttachments()
	d.mu.Unlock()
	for _, a := range all {
		a.links.Wait()
		if a.release != nil {
			a.release()
		}
	}
}
