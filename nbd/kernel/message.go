package kernel

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// The messages of the nbd family: pure encoding and decoding, no I/O
// (netlink.go sends them). What each command carries follows
// drivers/block/nbd.c (nbd_genl_connect, nbd_genl_reconfigure,
// nbd_genl_disconnect, nbd_genl_status).

// Config is how a device is set up (NBD_CMD_CONNECT) or brought back to
// life (NBD_CMD_RECONFIGURE: Index, Backend and the timeouts only; the
// size and flags stay what CONNECT set).
type Config struct {
	// Index is the device: /dev/nbd<Index>. The kernel creates it if it
	// does not exist yet.
	Index int
	// Size is the device's size in bytes: the export's.
	Size int64
	// BlockSize is the logical block size, a power of two from 512 to the
	// page size; 0 leaves the kernel's default.
	BlockSize int64
	// Flags are the export's transmission flags (nbd.Export.Flags):
	// READ_ONLY makes the device read-only, SEND_FLUSH, SEND_FUA and
	// SEND_TRIM let the kernel send those, CAN_MULTI_CONN allows more than
	// one socket.
	Flags uint16
	// Timeout is how long one request may take before the kernel gives
	// its socket up for dead and sends the request again on another (or
	// on a replacement, see DeadConnTimeout); 0 leaves the kernel's
	// default. Rounded up to whole seconds.
	Timeout time.Duration
	// DeadConnTimeout is how long I/O waits, when every socket is dead, for
	// RECONFIGURE to bring new ones before it fails; this is what lets the
	// device, and a filesystem on it, survive a server restart. Rounded up
	// to whole seconds.
	DeadConnTimeout time.Duration
	// Backend identifies who serves the device (/sys/block/nbdN/backend).
	// The kernel refuses a RECONFIGURE that does not name the same one, so
	// no one reconfigures a device that is not theirs.
	Backend string
}

// validate checks what the kernel would refuse with a bare EINVAL.
func (c Config) validate(connect bool) error {
	switch {
	case c.Index < 0 || c.Index > math.MaxInt32:
		return fmt.Errorf("device index %d out of range", c.Index)
	case connect && c.Size <= 0:
		return fmt.Errorf("size %d: must be positive", c.Size)
	case connect && c.BlockSize != 0 && (c.BlockSize < 512 || c.BlockSize > 4096 || c.BlockSize&(c.BlockSize-1) != 0):
		return fmt.Errorf("block size %d: must be a power of two from 512 to 4096", c.BlockSize)
	case c.Timeout < 0 || c.DeadConnTimeout < 0:
		return errors.New("negative timeout")
	}
	return nil
}

// seconds is d in whole seconds, rounded up.
func seconds(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }

// connectMessage is NBD_CMD_CONNECT: the device, its size and flags, the
// timeouts, no client flags, the backend and the sockets (descriptors in
// the calling process; the kernel takes its own reference to each).
func connectMessage(c Config, socks []int) (genetlink.Message, error) {
	if err := c.validate(true); err != nil {
		return genetlink.Message{}, err
	}
	if len(socks) == 0 {
		return genetlink.Message{}, errors.New("no socket")
	}
	if len(socks) > 1 && uint64(c.Flags)&flagCanMultiConn == 0 {
		return genetlink.Message{}, fmt.Errorf("%d sockets for an export without NBD_FLAG_CAN_MULTI_CONN", len(socks))
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(c.Index))
	ae.Uint64(attrSizeBytes, uint64(c.Size))
	if c.BlockSize != 0 {
		ae.Uint64(attrBlockSizeBytes, uint64(c.BlockSize))
	}
	ae.Uint64(attrServerFlags, uint64(c.Flags))
	encodeCommon(ae, c, socks)
	return message(cmdConnect, ae)
}

// reconfigureMessage is NBD_CMD_RECONFIGURE: new sockets for the dead
// ones of device c.Index (each replaces one dead socket; the kernel
// ignores those beyond the dead ones), with the same backend and the
// timeouts.
func reconfigureMessage(c Config, socks []int) (genetlink.Message, error) {
	if err := c.validate(false); err != nil {
		return genetlink.Message{}, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(c.Index))
	encodeCommon(ae, c, socks)
	return message(cmdReconfigure, ae)
}

// encodeCommon adds what CONNECT and RECONFIGURE both carry.
func encodeCommon(ae *netlink.AttributeEncoder, c Config, socks []int) {
	if c.Timeout > 0 {
		ae.Uint64(attrTimeout, seconds(c.Timeout))
	}
	if c.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(c.DeadConnTimeout))
	}
	ae.Uint64(attrClientFlags, clientFlags)
	if c.Backend != "" {
		ae.String(attrBackendIdentifier, c.Backend)
	}
	if len(socks) > 0 {
		ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
			for _, fd := range socks {
				nae.Nested(sockItem, func(item *netlink.AttributeEncoder) error {
					item.Uint32(sockFD, uint32(fd))
					return nil
				})
			}
			return nil
		})
	}
}

// disconnectMessage is NBD_CMD_DISCONNECT of device index: the kernel
// sends NBD_CMD_DISC on every socket, shuts them down and fails what is
// still queued.
func disconnectMessage(index int) (genetlink.Message, error) {
	if index < 0 || index > math.MaxInt32 {
		return genetlink.Message{}, fmt.Errorf("device index %d out of range", index)
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	return message(cmdDisconnect, ae)
}

// statusMessage is NBD_CMD_STATUS of device index, or of every device
// when index is negative.
func statusMessage(index int) (genetlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(attrIndex, uint32(index))
	}
	return message(cmdStatus, ae)
}

func message(cmd uint8, ae *netlink.AttributeEncoder) (genetlink.Message, error) {
	b, err := ae.Encode()
	if err != nil {
		return genetlink.Message{}, err
	}
	return genetlink.Message{Header: genetlink.Header{Command: cmd, Version: familyVersion}, Data: b}, nil
}

// ReadOnly reports whether the device is read-only (NBD_FLAG_READ_ONLY).
func (c Config) ReadOnly() bool { return uint64(c.Flags)&flagReadOnly != 0 }

// Status is one device as NBD_CMD_STATUS reports it.
type Status struct {
	Index int
	// Connected: the device has a configuration (it was connected and
	// not disconnected since), whether or not its sockets are alive.
	Connected bool
}

// parseStatus decodes the reply to NBD_CMD_STATUS: NBD_ATTR_DEVICE_LIST
// holding an NBD_DEVICE_ITEM per device.
func parseStatus(msgs []genetlink.Message) ([]Status, error) {
	var out []Status
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			if ad.Type() != attrDeviceList {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != deviceItem {
						continue
					}
					s := Status{Index: -1}
					list.Nested(func(item *netlink.AttributeDecoder) error {
						for item.Next() {
							switch item.Type() {
							case deviceIndex:
								s.Index = int(item.Uint32())
							case deviceConnected:
								s.Connected = item.Uint8() != 0
							}
						}
						return item.Err()
					})
					if s.Index < 0 {
						return errors.New("NBD_DEVICE_ITEM without NBD_DEVICE_INDEX")
					}
					out = append(out, s)
				}
				return list.Err()
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode NBD_CMD_STATUS reply: %w", err)
		}
	}
	return out, nil
}

// parseIndex decodes the reply to NBD_CMD_CONNECT: the device's
// NBD_ATTR_INDEX.
func parseIndex(msgs []genetlink.Message) (int, error) {
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return 0, err
		}
		for ad.Next() {
			if ad.Type() == attrIndex {
				return int(ad.Uint32()), ad.Err()
			}
		}
		if err := ad.Err(); err != nil {
			return 0, err
		}
	}
	return 0, errors.New("NBD_CMD_CONNECT reply without NBD_ATTR_INDEX")
}
