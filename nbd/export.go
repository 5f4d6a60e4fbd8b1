package nbd

import (
	"fmt"
	"math/bits"
)

// limits are what the server checks every request against: fixed when the
// client enters the transmission phase.
type limits struct {
	size      int64 // export size sent to the client
	minBlock  uint32
	prefBlock uint32
	maxBlock  uint32 // largest READ or WRITE payload
	readOnly  bool
	tflags    uint16
}

// exportLimits returns the limits a client of e will be held to. Block
// sizes follow "Size constraints": minimum a power of two up to 64 KiB,
// preferred a power of two at least max(minimum, 512), maximum at least
// the preferred size; unset values take the defaults (1, 4096, 32 MiB).
func exportLimits(e *Export, structured bool) (limits, error) {
	l := limits{
		size:      e.Device.Size(),
		minBlock:  e.MinBlock,
		prefBlock: e.PrefBlock,
		maxBlock:  e.MaxBlock,
		readOnly:  e.ReadOnly,
	}
	if l.minBlock == 0 {
		l.minBlock = defaultMinBlock
	}
	if l.prefBlock == 0 {
		l.prefBlock = max(defaultPrefBlock, l.minBlock)
	}
	if l.maxBlock == 0 || l.maxBlock > maxPayload {
		l.maxBlock = maxPayload
	}
	switch {
	case l.size < 0:
		return l, fmt.Errorf("export %q: negative size %d", e.Name, l.size)
	case bits.OnesCount32(l.minBlock) != 1 || l.minBlock > 64<<10:
		return l, fmt.Errorf("export %q: minimum block size %d is not a power of two up to 64 KiB", e.Name, l.minBlock)
	case bits.OnesCount32(l.prefBlock) != 1 || l.prefBlock < max(l.minBlock, 512):
		return l, fmt.Errorf("export %q: preferred block size %d is not a power of two at least max(minimum block, 512)", e.Name, l.prefBlock)
	case l.maxBlock < l.prefBlock || l.maxBlock%l.minBlock != 0:
		return l, fmt.Errorf("export %q: maximum block size %d is below the preferred size or not a multiple of the minimum", e.Name, l.maxBlock)
	}
	l.tflags = transmissionFlags(e, structured)
	return l, nil
}

// transmissionFlags are the flags of NBD_INFO_EXPORT and the
// NBD_OPT_EXPORT_NAME reply ("Transmission flags"): HAS_FLAGS always,
// READ_ONLY for read-only exports (which then advertise none of the write
// commands), SEND_DF only with structured replies, CAN_MULTI_CONN only
// when the export says every connection shares one cache.
func transmissionFlags(e *Export, structured bool) uint16 {
	f := tflagHasFlags | tflagSendCache
	if e.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeros | tflagSendFastZero
	}
	if structured {
		f |= tflagSendDF
	}
	if e.MultiConn {
		f |= tflagCanMultiConn
	}
	return f
}
