package kernel

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// callTimeout bounds one netlink request and its answer.
const callTimeout = 30 * time.Second

// ErrNoDriver is returned when the kernel has no nbd generic-netlink
// family: the nbd module is not loaded (LoadModule loads it).
var ErrNoDriver = errors.New("the kernel's nbd driver is not loaded (no generic netlink family \"nbd\")")

// Connect sets device c.Index up (NBD_CMD_CONNECT) over socks, the
// kernel's ends of connections whose other ends are already served in the
// transmission phase (nbd.Server.ServeTransmission): the kernel holds its
// own reference to each, so the caller closes its copies afterwards.
// Connect fails with EBUSY when the device already has a configuration,
// EPERM without CAP_SYS_ADMIN, and EINVAL when the kernel refuses the
// configuration (more than one socket without CAN_MULTI_CONN, say).
func (d *Driver) Connect(c Config, socks []int) error {
	m, err := connectMessage(c, socks)
	if err != nil {
		return fmt.Errorf("connect %s: %w", DevicePath(c.Index), err)
	}
	// The kernel answers with the device's index; errors come back as
	// netlink errors. No ACK is asked for: with one, it would follow the
	// answer and be left unread.
	msgs, err := d.execute(m, netlink.Request)
	if err != nil {
		return fmt.Errorf("connect %s: %w", DevicePath(c.Index), err)
	}
	index, err := parseIndex(msgs)
	if err == nil && index != c.Index {
		err = fmt.Errorf("the kernel connected device %d instead", index)
	}
	if err != nil {
		return fmt.Errorf("connect %s: %w", DevicePath(c.Index), err)
	}
	return nil
}

// Reconfigure gives device c.Index new sockets for its dead ones
// (NBD_CMD_RECONFIGURE), and its timeouts again. Each socket replaces one
// dead socket; when none is dead the kernel drops the socket and still
// succeeds, so the caller learns it from its own end closing. It fails
// with EINVAL when the device has no configuration or another backend.
func (d *Driver) Reconfigure(c Config, socks []int) error {
	m, err := reconfigureMessage(c, socks)
	if err == nil {
		_, err = d.execute(m, netlink.Request|netlink.Acknowledge)
	}
	if err != nil {
		return fmt.Errorf("reconfigure %s: %w", DevicePath(c.Index), err)
	}
	return nil
}

// Disconnect disconnects device index (NBD_CMD_DISCONNECT): the kernel
// sends NBD_CMD_DISC on every socket, closes them, fails the I/O still
// queued and drops the configuration; the device node stays.
func (d *Driver) Disconnect(index int) error {
	m, err := disconnectMessage(index)
	if err == nil {
		_, err = d.execute(m, netlink.Request|netlink.Acknowledge)
	}
	if err != nil {
		return fmt.Errorf("disconnect %s: %w", DevicePath(index), err)
	}
	return nil
}

// Status reports device index (NBD_CMD_STATUS); ok is false when there is
// no such device.
func (d *Driver) Status(index int) (s Status, ok bool, err error) {
	if index < 0 {
		return Status{}, false, fmt.Errorf("device index %d out of range", index)
	}
	all, err := d.status(index)
	if err != nil {
		return Status{}, false, fmt.Errorf("status of %s: %w", DevicePath(index), err)
	}
	for _, s := range all {
		if s.Index == index {
			return s, true, nil
		}
	}
	return Status{Index: index}, false, nil
}

// Devices reports every nbd device the kernel has.
func (d *Driver) Devices() ([]Status, error) {
	all, err := d.status(-1)
	if err != nil {
		return nil, fmt.Errorf("status of the nbd devices: %w", err)
	}
	return all, nil
}

func (d *Driver) status(index int) ([]Status, error) {
	m, err := statusMessage(index)
	if err != nil {
		return nil, err
	}
	msgs, err := d.execute(m, netlink.Request)
	if err != nil {
		return nil, err
	}
	return parseStatus(msgs)
}

// execute sends m to the nbd family on a netlink socket of its own and
// returns the answer. Each call has its own socket, so an unread ACK or a
// late answer never meets another call.
func (d *Driver) execute(m genetlink.Message, flags netlink.HeaderFlags) ([]genetlink.Message, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open a generic netlink socket: %w", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(callTimeout)); err != nil {
		return nil, err
	}
	// The kernel's own words for a refusal, when it has some.
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	family, err := c.GetFamily(familyName)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoDriver
	}
	if err != nil {
		return nil, fmt.Errorf("look up the generic netlink family %q: %w", familyName, err)
	}
	return c.Execute(m, family.ID, flags)
}
