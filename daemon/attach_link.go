package daemon

import (
	"fmt"
	"net"
	"time"

	"github.com/cairn-storage/cairn/nbd/kernel"
)

// The links of an attachment: one goroutine per socket of its device,
// serving the socket's server end in the transmission phase of the
// export, and replacing the socket (NBD_CMD_RECONFIGURE) when its
// connection ends while the attachment lives on.

// remote is how the NBD server lists a's connections.
func (a *attachment) remote() string { return "kernel:" + a.device() }

// serveLink serves a's socket number slot, counted in a.live by whoever
// made it, and replaces it whenever its connection ends while a lives on.
func (d *Daemon) serveLink(a *attachment, slot int, nc net.Conn) {
	defer a.links.Done()
	for nc != nil {
		err := d.nbd.ServeTransmission(nc, a.exp, a.remote())
		d.mu.Lock()
		a.live--
		d.mu.Unlock()
		<-a.ready
		if d.linkStopped(a) {
			return
		}
		d.log.Warn("a socket of a kernel attachment ended; giving the kernel a new one", "device", a.device(), "export", a.name.String(), "err", err)
		nc = d.relink(a, slot)
	}
}

// linkStopped reports whether a's links are to end.
func (d *Daemon) linkStopped(a *attachment) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return a.stopping || d.closing
}

// relink hands the kernel a new socket for a dead one of a's device
// (NBD_CMD_RECONFIGURE) and returns its server end, now a's socket slot,
// or nil when a stops. It retries, backing off, while the device lives;
// a device that was disconnected behind cairnd's back (or now serves
// another backend) is forgotten.
func (d *Daemon) relink(a *attachment, slot int) net.Conn {
	wait := relinkDelay
	for {
		select {
		case <-a.stop:
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, relinkMax)
		server, kernelEnd, err := kernel.SocketPair()
		if err == nil {
			err = d.kernel.Reconfigure(a.cfg, []int{int(kernelEnd.Fd())})
			kernelEnd.Close()
			if err == nil {
				d.mu.Lock()
				a.conns[slot] = server
				a.live++
				a.err = nil
				d.mu.Unlock()
				// When the kernel had no dead socket to replace, it
				// dropped this one: its end closes and the link comes
				// back here.
				return server
			}
			server.Close()
		}
		if gone := d.deviceGone(a); gone != nil {
			d.forgetAttachment(a, gone)
			return nil
		}
		d.mu.Lock()
		a.err = err
		d.mu.Unlock()
		d.log.Warn("reconnecting a kernel attachment", "device", a.device(), "err", err, "retry_in", wait)
	}
}

// deviceGone says why a's device is no longer cairnd's: disconnected
// behind its back, or connected to another backend; nil when it still is
// (or cannot be told).
func (d *Daemon) deviceGone(a *attachment) error {
	s, ok, err := d.kernel.Status(a.rec.Index)
	if err != nil {
		return nil
	}
	if !ok || !s.Connected {
		return fmt.Errorf("%s was disconnected outside cairnd", a.device())
	}
	if backend, err := d.kernel.Backend(a.rec.Index); err == nil && backend != "" && backend != a.rec.Backend {
		return fmt.Errorf("%s now serves another backend (%s)", a.device(), backend)
	}
	return nil
}

// forgetAttachment drops an attachment whose device is no longer
// cairnd's, and its record. Called from one of its links, so it does not
// wait for them.
func (d *Daemon) forgetAttachment(a *attachment, why error) {
	d.log.Warn("forgetting a kernel attachment", "device", a.device(), "export", a.name.String(), "reason", why)
	d.mu.Lock()
	if d.attachments[a.rec.Index] == a {
		delete(d.attachments, a.rec.Index)
	}
	a.halt()
	for _, c := range a.conns {
		c.Close()
	}
	d.mu.Unlock()
	go func() {
		a.links.Wait()
		if a.release != nil {
			a.release()
		}
		if err := d.deleteAttachRecord(a.rec.Index); err != nil {
			d.log.Error("removing the record of a forgotten attachment", "device", a.device(), "err", err)
		}
	}()
}
