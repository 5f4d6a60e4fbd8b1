package nbd

// Wire constants of the NBD protocol. Section names refer to
// doc/proto.md of NetworkBlockDevice/nbd (../shared/reference/nbd-proto.md);
// the qemu: namespace is from qemu's docs/interop/nbd.rst.

// Magic numbers ("Newstyle negotiation", "Fixed newstyle negotiation",
// "Request message", "Simple reply message", "Structured reply chunk
// message").
const (
	magicNBD           uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt           uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply      uint64 = 0x0003e889045565a9
	magicRequest       uint32 = 0x25609513
	magicSimpleReply   uint32 = 0x67446698
	magicStructReply   uint32 = 0x668e33ef
	exportNameZeroesLn        = 124 // "Newstyle negotiation": reserved zeroes after NBD_OPT_EXPORT_NAME
)

// Handshake flags, sent by the server ("Handshake flags").
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1
)

// Client flags ("Client flags").
const (
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1
	clientFlagsKnown          = flagCFixedNewstyle | flagCNoZeroes
)

// Transmission flags ("Transmission flags").
const (
	tflagHasFlags       uint16 = 1 << 0
	tflagReadOnly       uint16 = 1 << 1
	tflagSendFlush      uint16 = 1 << 2
	tflagSendFUA        uint16 = 1 << 3
	tflagRotational     uint16 = 1 << 4
	tflagSendTrim       uint16 = 1 << 5
	tflagSendWriteZeros uint16 = 1 << 6
	tflagSendDF         uint16 = 1 << 7
	tflagCanMultiConn   uint16 = 1 << 8
	tflagSendCache      uint16 = 1 << 10
	tflagSendFastZero   uint16 = 1 << 11
)

// Option types ("Option types").
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
)

// Option reply types ("Option reply types"). Errors have bit 31 set.
const (
	repAck           uint32 = 1
	repServer        uint32 = 2
	repInfo          uint32 = 3
	repMetaContext   uint32 = 4
	repErrUnsup      uint32 = 1<<31 + 1
	repErrPolicy     uint32 = 1<<31 + 2
	repErrInvalid    uint32 = 1<<31 + 3
	repErrPlatform   uint32 = 1<<31 + 4
	repErrTLSReqd    uint32 = 1<<31 + 5
	repErrUnknown    uint32 = 1<<31 + 6
	repErrShutdown   uint32 = 1<<31 + 7
	repErrBlockSzReq uint32 = 1<<31 + 8
	repErrTooBig     uint32 = 1<<31 + 9
)

// Information types of NBD_REP_INFO ("NBD_REP_INFO").
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Command types ("Request types").
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags ("Command flags").
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and types ("Structured reply flags",
// "Structured reply types").
const (
	replyFlagDone uint16 = 1 << 0

	replyTypeNone        uint16 = 0
	replyTypeOffsetData  uint16 = 1
	replyTypeOffsetHole  uint16 = 2
	replyTypeBlockStatus uint16 = 5
	replyTypeError       uint16 = 1<<15 + 1
	replyTypeErrorOffset uint16 = 1<<15 + 2
)

// Error values ("Error values").
const (
	errPerm     uint32 = 1
	errIO       uint32 = 5
	errNoMem    uint32 = 12
	errInval    uint32 = 22
	errNoSpc    uint32 = 28
	errOverflow uint32 = 75
	errNotSup   uint32 = 95
	errShutdown uint32 = 108
)

// Sizes of fixed wire structures.
const (
	optHeaderLen     = 16 // IHAVEOPT, option, length
	optReplyHdrLen   = 20 // magic, option, type, length
	requestLen       = 28 // magic, flags, type, cookie, offset, length
	simpleReplyLen   = 16 // magic, error, cookie
	structReplyLen   = 20 // magic, flags, type, cookie, length
	maxStringLen     = 4096
	defaultMinBlock  = 1
	defaultPrefBlock = 4096
	// maxPayload is the largest READ or WRITE payload: the 2^25 bytes that
	// "Size constraints" says no server should treat as an attack.
	maxPayload = 32 << 20
	// maxExtentsPerChunk is the "SHOULD NOT send more than 2^20 extents"
	// of NBD_REPLY_TYPE_BLOCK_STATUS.
	maxExtentsPerChunk = 1 << 20
	// Metadata namespaces and the one context base: defines ("Metadata
	// querying", "The base: metadata namespace").
	ctxBaseAllocation = "base:allocation"
)
