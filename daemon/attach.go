package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/kernel"
	"golang.org/x/sys/unix"
)

// Kernel attach: an export served to the host's own kernel as /dev/nbdN.
// cairnd makes a socketpair per connection, serves its end in the
// transmission phase of the export (nbd.Server.ServeTransmission) and
// hands the other to the kernel's nbd driver over netlink
// (nbd/kernel), with the export's size and flags. The attachment is a
// holder of its export (kind kernelDevice), so the disk or snapshot is
// not deleted or rolled back under it without force.
//
// Lifecycle of an attachment:
//
//   - Attach writes its record (records.go) durably, then connects the
//     device. A connect that fails deletes the record again.
//   - While cairnd runs, each socket is served by a link goroutine; when
//     its connection ends while the attachment is meant to live (the
//     kernel gave the socket up after a request timeout, say), the link
//     hands the kernel a new socket (NBD_CMD_RECONFIGURE). If the device
//     turns out to have been disconnected behind cairnd's back, the
//     attachment is forgotten.
//   - On shutdown the links stop and the sockets close, but the device
//     stays: its I/O waits up to the reconnect timeout. The next start
//     (restoreAttachments, before READY) reconnects every recorded device
//     with new sockets, or connects it afresh when its configuration is
//     gone (the host rebooted).
//   - Detach refuses a device that is mounted or held open (unless
//     forced), flushes the device's page cache, disconnects it, and
//     deletes the record.
//
// Locks: Daemon.attachMu serialises attach, detach and restore (it is
// taken before Daemon.mu, never under it); the attachments map and every
// attachment's mutable fields are guarded by Daemon.mu. Netlink calls and
// the device's flush are made without Daemon.mu: the device's I/O is
// served by links that take it.

// Defaults and bounds of an attach request.
const (
	defaultAttachConnections = 2
	maxAttachConnections     = 16
	defaultReconnectTimeout  = 2 * time.Minute
	maxReconnectTimeout      = 24 * time.Hour
	// attachRequestTimeout is the kernel's per-request timeout: a request
	// that takes longer makes it give that socket up and send the request
	// again on another (or a replacement).
	attachRequestTimeout = 30 * time.Second
	// attachBlockSize is the device's logical block size.
	attachBlockSize = 512
	// relinkDelay is the first wait before replacing a socket, relinkMax
	// the longest (the waits double in between).
	relinkDelay = 100 * time.Millisecond
	relinkMax   = 5 * time.Second
	// linksTimeout bounds the wait for a detached device's sockets to end.
	linksTimeout = 10 * time.Second
)

// Field names of an attach request.
const (
	fieldExport           = "export"
	fieldDevice           = "device"
	fieldConnections      = "connections"
	fieldReconnectTimeout = "reconnect_timeout"
)

// attachment is one /dev/nbdN cairnd serves (or served, and failed to
// reconnect).
type attachment struct {
	rec  attachRecord
	name exportName
	cfg  kernel.Config // what the device was connected with
	disk *Disk         // nil when failed before the export opened

	// exp and release are the export the links serve and its holder's
	// release; nil when failed.
	exp     *nbd.Export
	release func()

	// ready is closed once the device's connect (or the reconnect at
	// start-up) has returned: a link whose connection ends before then
	// leaves the decision to the connecting call. stop is closed when the
	// links must end for good (detach, a failed connect, shutdown).
	ready    chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	links    sync.WaitGroup

	// Guarded by Daemon.mu.
	live     int        // sockets served now (counted as they are made)
	stopping bool       // stop is closed
	failed   bool       // could not be (re)connected: err says why
	err      error      // why it is failed or reconnecting
	conns    []net.Conn // the server ends of its sockets, by slot, to close them on detach
}

func (a *attachment) device() string { return kernel.DevicePath(a.rec.Index) }

// halt closes stop (once). Caller holds Daemon.mu.
func (a *attachment) halt() {
	a.stopping = true
	a.stopOnce.Do(func() { close(a.stop) })
}

// toAPI describes the attachment. Caller holds Daemon.mu.
func (a *attachment) toAPI() api.Attachment {
	out := api.Attachment{
		Device:           a.device(),
		Export:           a.name.String(),
		Disk:             a.rec.Disk,
		Snapshot:         a.rec.Snapshot,
		ReadOnly:         a.rec.Snapshot != "",
		Size:             a.cfg.Size,
		Connections:      a.rec.Connections,
		Connected:        a.live,
		ReconnectTimeout: a.rec.ReconnectTimeout,
		State:            api.AttachConnected,
		Created:          api.At(a.rec.Created),
	}
	switch {
	case a.failed:
		out.State = api.AttachFailed
	case a.live < a.rec.Connections:
		out.State = api.AttachReconnecting
	}
	if a.err != nil && out.State != api.AttachConnected {
		out.Error = a.err.Error()
	}
	return out
}

// Attachments lists the kernel attachments, by device.
func (d *Daemon) Attachments() []api.Attachment {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]api.Attachment, 0, len(d.attachments))
	for _, a := range d.sortedAttachments() {
		out = append(out, a.toAPI())
	}
	return out
}

// GetAttachment describes the attachment of device (/dev/nbdN or nbdN).
func (d *Daemon) GetAttachment(device string) (api.Attachment, error) {
	index, err := parseDeviceField(device)
	if err != nil {
		return api.Attachment{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.attachments[index]
	if a == nil {
		return api.Attachment{}, noAttachment(index)
	}
	return a.toAPI(), nil
}

// sortedAttachments returns the attachments by device index. Caller holds
// d.mu.
func (d *Daemon) sortedAttachments() []*attachment {
	out := make([]*attachment, 0, len(d.attachments))
	for _, a := range d.attachments {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Index < out[j].rec.Index })
	return out
}

// attachmentsOf lists the live attachments of k's exports that match.
// Caller holds d.mu.
func (d *Daemon) attachmentsOf(k *Disk, match func(snap string) bool) []*attachment {
	var out []*attachment
	for _, a := range d.sortedAttachments() {
		if a.disk == k && a.exp != nil && !a.stopping && match(a.rec.Snapshot) {
			out = append(out, a)
		}
	}
	return out
}

func noAttachment(index int) error {
	return fieldError(block.ErrNotFound, fieldDevice, "device %s is not attached by cairnd (cairn disk attachments lists what is)", kernel.DevicePath(index))
}

func parseDeviceField(device string) (int, error) {
	index, err := kernel.ParseDevice(device)
	if err != nil {
		return 0, invalidField(fieldDevice, "device: %v", err)
	}
	return index, nil
}

// checkAttachRequest applies the rules of an attach request and fills in
// the defaults; index is -1 when no device was asked for.
func checkAttachRequest(req *api.AttachRequest) (name exportName, index int, err error) {
	name, ok := parseExport(req.Export)
	if !ok {
		return name, 0, invalidField(fieldExport, "export %q: want DISK (attached read-write) or DISK@SNAPSHOT (read-only); a disk name is %s", req.Export, NameRule)
	}
	index = -1
	if req.Device != "" {
		if index, err = parseDeviceField(req.Device); err != nil {
			return name, 0, err
		}
	}
	switch {
	case req.Connections == 0:
		req.Connections = defaultAttachConnections
	case req.Connections < 1 || req.Connections > maxAttachConnections:
		return name, 0, invalidField(fieldConnections, "connections %d: from 1 to %d", req.Connections, maxAttachConnections)
	}
	switch {
	case req.ReconnectTimeout == 0:
		req.ReconnectTimeout = int(defaultReconnectTimeout / time.Second)
	case req.ReconnectTimeout < 1 || req.ReconnectTimeout > int(maxReconnectTimeout/time.Second):
		return name, 0, invalidField(fieldReconnectTimeout, "reconnect_timeout %d: from 1 to %d seconds", req.ReconnectTimeout, int(maxReconnectTimeout/time.Second))
	}
	return name, index, nil
}

// Attach attaches an export to the kernel as /dev/nbdN: the live disk
// read-write, a snapshot read-only. It loads the nbd module if the
// kernel lacks it, and answers once the device is connected and its
// record durable.
func (d *Daemon) Attach(ctx context.Context, req api.AttachRequest) (api.Attachment, error) {
	name, index, err := checkAttachRequest(&req)
	if err != nil {
		return api.Attachment{}, err
	}
	if err := d.exportExists(name); err != nil {
		return api.Attachment{}, err // named before the kernel is asked anything
	}
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	if err := d.kernelReady(); err != nil {
		return api.Attachment{}, err
	}
	if index, err = d.chooseDevice(index); err != nil {
		return api.Attachment{}, err
	}
	a, err := d.openAttachment(name, attachRecord{
		Version:          attachRecordVersion,
		Index:            index,
		Disk:             name.disk,
		Snapshot:         name.snap,
		Connections:      req.Connections,
		Backend:          backendID(name),
		ReconnectTimeout: req.ReconnectTimeout,
		Created:          time.Now().UTC(),
	})
	if err != nil {
		return api.Attachment{}, err
	}
	if err := d.putAttachRecord(a.rec); err != nil {
		d.dropAttachment(a)
		return api.Attachment{}, err
	}
	if err := d.connectAttachment(a, true); err != nil {
		d.dropAttachment(a)
		if err := d.deleteAttachRecord(a.rec.Index); err != nil {
			d.log.Error("removing the record of an attachment that failed", "device", a.device(), "err", err)
		}
		return api.Attachment{}, err
	}
	d.log.Info("attached", "export", a.name.String(), "device", a.device(), "connections", a.rec.Connections,
		"read_only", a.cfg.ReadOnly(), "reconnect_timeout_s", a.rec.ReconnectTimeout)
	d.mu.Lock()
	defer d.mu.Unlock()
	return a.toAPI(), nil
}

// exportExists refuses an export that does not open now (the disk or
// snapshot does not exist, is not readable, or is being deleted).
func (d *Daemon) exportExists(name exportName) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for x := range d.exports(name.disk) {
		if x.name == name {
			return nil
		}
	}
	return fieldError(block.ErrNotFound, fieldExport, "export %s: no such disk or readable snapshot (cairn export list names them)", name)
}

// backendID is a new attachment's backend identifier: the export, and a
// random part so no two attachments ever share one.
func backendID(name exportName) string {
	var b [8]byte
	rand.Read(b[:])
	return "cairn:" + name.String() + ":" + hex.EncodeToString(b[:])
}

// kernelReady loads the nbd module when the kernel lacks it. Caller holds
// d.attachMu.
func (d *Daemon) kernelReady() error {
	d.mu.Lock()
	err := d.checkChange()
	d.mu.Unlock()
	if err != nil {
		return err
	}
	loaded, err := d.kernel.LoadModule()
	if err != nil {
		return errorf(block.ErrFailed, "kernel attach: %v", err)
	}
	if loaded {
		d.log.Info("loaded the nbd kernel module")
	}
	return nil
}

// chooseDevice returns the device to attach: index, if it is free, or
// (index -1) the lowest one that is neither connected nor cairnd's.
// Caller holds d.attachMu.
func (d *Daemon) chooseDevice(index int) (int, error) {
	d.mu.Lock()
	mine := make(map[int]bool, len(d.attachments))
	for i := range d.attachments {
		mine[i] = true
	}
	other := d.attachments[index]
	d.mu.Unlock()
	if other != nil {
		return 0, fieldError(block.ErrInUse, fieldDevice, "device %s is already attached to %s (cairn disk detach %s)", other.device(), other.name, other.device())
	}
	if index >= 0 {
		s, ok, err := d.kernel.Status(index)
		if err != nil {
			return 0, fmt.Errorf("kernel attach: %w", err)
		}
		if ok && s.Connected {
			return 0, fieldError(block.ErrInUse, fieldDevice, "device %s is connected to another NBD server: choose another device, or leave the device out to take a free one", kernel.DevicePath(index))
		}
		return index, nil
	}
	devices, err := d.kernel.Devices()
	if err != nil {
		return 0, fmt.Errorf("kernel attach: %w", err)
	}
	sort.Slice(devices, func(i, j int) bool { return devices[i].Index < devices[j].Index })
	next := 0
	for _, s := range devices {
		if !s.Connected && !mine[s.Index] {
			return s.Index, nil
		}
		next = max(next, s.Index+1)
	}
	for mine[next] {
		next++
	}
	return next, nil // the kernel creates it
}

// openAttachment opens the export of an attachment about to be connected
// (a new one, or a recorded one at start-up) and makes its kernel
// configuration.
func (d *Daemon) openAttachment(name exportName, rec attachRecord) (*attachment, error) {
	exp, release, err := d.openExport(name, kernelDevice)
	if err != nil {
		return nil, fieldError(errKind(err), fieldExport, "kernel attach of %s: %v", name, err)
	}
	flags, err := exp.Flags()
	if err != nil {
		release()
		return nil, fmt.Errorf("kernel attach of %s: %w", name, err)
	}
	d.mu.Lock()
	k := d.disks[name.disk]
	if rec.DiskID == 0 {
		rec.DiskID = k.rec.ID
	}
	d.mu.Unlock()
	a := &attachment{
		rec:  rec,
		name: name,
		disk: k,
		cfg: kernel.Config{
			Index:           rec.Index,
			Size:            exp.Device.Size(),
			BlockSize:       attachBlockSize,
			Flags:           flags,
			Timeout:         attachRequestTimeout,
			DeadConnTimeout: time.Duration(rec.ReconnectTimeout) * time.Second,
			Backend:         rec.Backend,
		},
		exp:     exp,
		release: release,
		ready:   make(chan struct{}),
		stop:    make(chan struct{}),
	}
	return a, nil
}

// errKind is the sentinel err matches, for a message rewritten around it
// (block.ErrFailed when none).
func errKind(err error) error {
	for _, kind := range []error{block.ErrNotFound, block.ErrShutdown, block.ErrInUse, block.ErrInvalid} {
		if errors.Is(err, kind) {
			return kind
		}
	}
	return block.ErrFailed
}

// connectAttachment starts a's links and connects the device: a fresh
// configuration (NBD_CMD_CONNECT) when fresh, else new sockets for a
// configuration that outlived the previous cairnd (NBD_CMD_RECONFIGURE).
// On success a is in d.attachments; on failure its links are stopped and
// the caller drops it.
func (d *Daemon) connectAttachment(a *attachment, fresh bool) error {
	defer close(a.ready)
	conns := make([]net.Conn, 0, a.rec.Connections)
	fds := make([]int, 0, a.rec.Connections)
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close() // the kernel holds its own references
		}
	}()
	for range a.rec.Connections {
		server, kernelEnd, err := kernel.SocketPair()
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return fmt.Errorf("kernel attach of %s: %w", a.name, err)
		}
		conns = append(conns, server)
		files = append(files, kernelEnd)
		fds = append(fds, int(kernelEnd.Fd()))
	}
	d.mu.Lock()
	a.conns, a.live = conns, len(conns)
	d.mu.Unlock()
	for slot, c := range conns {
		a.links.Add(1)
		go d.serveLink(a, slot, c)
	}
	var err error
	if fresh {
		err = d.kernel.Connect(a.cfg, fds)
	} else {
		err = d.kernel.Reconfigure(a.cfg, fds)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		a.halt()
		for _, c := range a.conns {
			c.Close()
		}
		switch {
		case errors.Is(err, unix.EBUSY):
			return fieldError(block.ErrInUse, fieldDevice, "kernel attach of %s: %s is in use: %v", a.name, a.device(), err)
		case errors.Is(err, unix.EPERM):
			return errorf(block.ErrFailed, "kernel attach of %s: %v: cairnd needs CAP_SYS_ADMIN to configure nbd devices (run it as root, as the systemd unit does)", a.name, err)
		}
		return errorf(block.ErrFailed, "kernel attach of %s as %s: %v", a.name, a.device(), err)
	}
	d.attachments[a.rec.Index] = a
	return nil
}

// dropAttachment ends an attachment that is not (or no longer) in
// d.attachments: its links stop and its export is released. It keeps the
// record.
func (d *Daemon) dropAttachment(a *attachment) {
	d.mu.Lock()
	a.halt()
	for _, c := range a.conns {
		c.Close()
	}
	d.mu.Unlock()
	a.links.Wait()
	if a.release != nil {
		a.release()
	}
}

// putAttachRecord writes rec durably.
func (d *Daemon) putAttachRecord(rec attachRecord) error {
	err := d.store.PutRecord(attachKey(rec.Index), rec)
	if err == nil {
		err = d.store.Sync()
	}
	if err != nil {
		return fmt.Errorf("record the attachment of %s: %w", kernel.DevicePath(rec.Index), err)
	}
	return nil
}

// deleteAttachRecord deletes the record of device index durably.
func (d *Daemon) deleteAttachRecord(index int) error {
	err := d.store.DeleteRecord(attachKey(index))
	if err == nil {
		err = d.store.Sync()
	}
	return err
}
