package nbd

import (
	"encoding/binary"
	"testing"
)

func TestParseHeader(t *testing.T) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, 0x0102)
	b = binary.BigEndian.AppendUint16(b, 7)
	b = binary.BigEndian.AppendUint64(b, 0x1122334455667788)
	b = binary.BigEndian.AppendUint64(b, 1<<40)
	b = binary.BigEndian.AppendUint32(b, 4096)
	want := header{magicRequest, 0x0102, 7, 0x1122334455667788, 1 << 40, 4096}
	if got := parseHeader(b); got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
}

func TestCheck(t *testing.T) {
	rw := limits{size: 1 << 20, minBlock: 512, prefBlock: 4096, maxBlock: 64 << 10}
	ro := rw
	ro.readOnly = true
	odd := limits{size: 1000, minBlock: 512, prefBlock: 4096, maxBlock: 64 << 10}
	tests := []struct {
		name       string
		l          limits
		h          header
		structured bool
		contexts   int
		want       uint32
	}{
		{"read ok", rw, header{typ: cmdRead, off: 512, length: 4096}, true, 0, 0},
		{"read DF structured", rw, header{typ: cmdRead, flags: cmdFlagDF, length: 512}, true, 0, 0},
		{"read DF simple", rw, header{typ: cmdRead, flags: cmdFlagDF, length: 512}, false, 0, errInval},
		{"read FUA is accepted", rw, header{typ: cmdRead, flags: cmdFlagFUA, length: 512}, false, 0, 0},
		{"read too long", rw, header{typ: cmdRead, length: 64<<10 + 512}, true, 0, errInval},
		{"read to the end", rw, header{typ: cmdRead, off: 1<<20 - 512, length: 512}, true, 0, 0},
		{"read past end", rw, header{typ: cmdRead, off: 1<<20 - 512, length: 1024}, true, 0, errInval},
		{"offset overflow", rw, header{typ: cmdRead, off: ^uint64(0) - 511, length: 1024}, true, 0, errInval},
		{"write past end", rw, header{typ: cmdWrite, off: 1 << 20, length: 512}, true, 0, errNoSpc},
		{"zero past end", rw, header{typ: cmdWriteZeroes, off: 1 << 20, length: 512}, true, 0, errNoSpc},
		{"trim past end", rw, header{typ: cmdTrim, off: 1 << 20, length: 512}, true, 0, errInval},
		{"trim longer than max payload", rw, header{typ: cmdTrim, length: 1 << 20}, true, 0, 0},
		{"misaligned offset", rw, header{typ: cmdRead, off: 100, length: 512}, true, 0, errInval},
		{"misaligned length", rw, header{typ: cmdWrite, length: 100}, true, 0, errInval},
		{"unaligned tail of an odd-sized export", odd, header{typ: cmdRead, off: 512, length: 488}, true, 0, 0},
		{"zero-length read", rw, header{typ: cmdRead}, true, 0, 0},
		{"write read-only", ro, header{typ: cmdWrite, length: 512}, true, 0, errPerm},
		{"write read-only past end", ro, header{typ: cmdWrite, off: 2 << 20, length: 512}, true, 0, errPerm},
		{"zero read-only", ro, header{typ: cmdWriteZeroes, length: 512}, true, 0, errPerm},
		{"NO_HOLE on zero", rw, header{typ: cmdWriteZeroes, flags: cmdFlagNoHole | cmdFlagFastZero, length: 512}, true, 0, 0},
		{"NO_HOLE on write", rw, header{typ: cmdWrite, flags: cmdFlagNoHole, length: 512}, true, 0, errInval},
		{"flush", rw, header{typ: cmdFlush}, false, 0, 0},
		{"flush read-only", ro, header{typ: cmdFlush}, false, 0, 0},
		{"cache", ro, header{typ: cmdCache, length: 1 << 20}, false, 0, 0},
		{"block status", rw, header{typ: cmdBlockStatus, flags: cmdFlagReqOne, length: 1 << 20}, true, 1, 0},
		{"block status no contexts", rw, header{typ: cmdBlockStatus, length: 512}, true, 0, errInval},
		{"block status zero length", rw, header{typ: cmdBlockStatus}, true, 1, errInval},
		{"unknown command", rw, header{typ: 42}, true, 0, errInval},
		{"unknown flag", rw, header{typ: cmdRead, flags: 1 << 7, length: 512}, true, 0, errInval},
	}
	for _, tt := range tests {
		got, msg := tt.l.check(tt.h, tt.structured, tt.contexts)
		if got != tt.want || (got != 0) != (msg != "") {
			t.Errorf("%s: %d %q, want %d", tt.name, got, msg, tt.want)
		}
	}
}
