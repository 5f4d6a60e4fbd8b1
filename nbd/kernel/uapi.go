package kernel

// The kernel's nbd generic-netlink interface, as include/uapi/linux/
// nbd-netlink.h (Linux 4.12 and later; NBD_ATTR_BACKEND_IDENTIFIER since
// 5.16) and include/uapi/linux/nbd.h name it. uapi_test.go checks every
// number against the installed headers.

// The family (NBD_GENL_FAMILY_NAME, NBD_GENL_VERSION).
const (
	familyName    = "nbd"
	familyVersion = 1
)

// Commands (enum NBD_CMD_*). NBD_CMD_LINK_DEAD is only ever sent by the
// kernel, to the multicast group, and is not used here.
const (
	cmdConnect     uint8 = 1 // NBD_CMD_CONNECT
	cmdDisconnect  uint8 = 2 // NBD_CMD_DISCONNECT
	cmdReconfigure uint8 = 3 // NBD_CMD_RECONFIGURE
	cmdStatus      uint8 = 5 // NBD_CMD_STATUS
)

// Attributes of the commands (enum NBD_ATTR_*), with the types the
// kernel's nbd_attr_policy gives them.
const (
	attrIndex             uint16 = 1  // NBD_ATTR_INDEX, u32
	attrSizeBytes         uint16 = 2  // NBD_ATTR_SIZE_BYTES, u64
	attrBlockSizeBytes    uint16 = 3  // NBD_ATTR_BLOCK_SIZE_BYTES, u64
	attrTimeout           uint16 = 4  // NBD_ATTR_TIMEOUT, u64 seconds
	attrServerFlags       uint16 = 5  // NBD_ATTR_SERVER_FLAGS, u64: the export's transmission flags
	attrClientFlags       uint16 = 6  // NBD_ATTR_CLIENT_FLAGS, u64: NBD_CFLAG_*
	attrSockets           uint16 = 7  // NBD_ATTR_SOCKETS, nested NBD_SOCK_ITEMs
	attrDeadConnTimeout   uint16 = 8  // NBD_ATTR_DEAD_CONN_TIMEOUT, u64 seconds
	attrDeviceList        uint16 = 9  // NBD_ATTR_DEVICE_LIST, nested NBD_DEVICE_ITEMs (STATUS reply)
	attrBackendIdentifier uint16 = 10 // NBD_ATTR_BACKEND_IDENTIFIER, string
)

// Nested in NBD_ATTR_SOCKETS: one NBD_SOCK_ITEM per socket, holding its
// file descriptor in the calling process (NBD_SOCK_FD, u32).
const (
	sockItem uint16 = 1 // NBD_SOCK_ITEM
	sockFD   uint16 = 1 // NBD_SOCK_FD
)

// Nested in NBD_ATTR_DEVICE_LIST: one NBD_DEVICE_ITEM per device.
const (
	deviceItem      uint16 = 1 // NBD_DEVICE_ITEM
	deviceIndex     uint16 = 1 // NBD_DEVICE_INDEX, u32
	deviceConnected uint16 = 2 // NBD_DEVICE_CONNECTED, u8: the device has a configuration
)

// The transmission flags the driver acts on (NBD_FLAG_*, linux/nbd.h: the
// NBD protocol's bits), in NBD_ATTR_SERVER_FLAGS.
const (
	flagReadOnly     uint64 = 1 << 1 // NBD_FLAG_READ_ONLY: the device is read-only
	flagSendFlush    uint64 = 1 << 2 // NBD_FLAG_SEND_FLUSH: a write cache, flushed with NBD_CMD_FLUSH
	flagSendFUA      uint64 = 1 << 3 // NBD_FLAG_SEND_FUA
	flagSendTrim     uint64 = 1 << 5 // NBD_FLAG_SEND_TRIM: discard
	flagCanMultiConn uint64 = 1 << 8 // NBD_FLAG_CAN_MULTI_CONN: required for more than one socket
)

// Client flags (NBD_CFLAG_*, linux/nbd.h). Cairn sets neither: the device
// must outlive a dead server (DESTROY_ON_DISCONNECT would remove it) and
// its last opener (DISCONNECT_ON_CLOSE would disconnect it when a mount
// goes away).
const (
	cflagDestroyOnDisconnect uint64 = 1 << 0 // NBD_CFLAG_DESTROY_ON_DISCONNECT
	cflagDisconnectOnClose   uint64 = 1 << 1 // NBD_CFLAG_DISCONNECT_ON_CLOSE
)

// clientFlags is what Cairn sends as NBD_ATTR_CLIENT_FLAGS: none.
const clientFlags uint64 = 0
