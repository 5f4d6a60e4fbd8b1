package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from per-size-class pools (powers of two from 4 KiB
// to maxPayload), so a connection in steady state allocates nothing per
// request. Pools hold *buffer, not []byte, so Put does not allocate.

const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 25 // 32 MiB = maxPayload
)

type buffer struct {
	b     []byte // len is the class size
	class uint8
}

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// getBuffer returns a buffer of at least n bytes (n <= maxPayload).
func getBuffer(n int) *buffer {
	class := 0
	if n > 1<<minBufShift {
		class = bits.Len(uint(n-1)) - minBufShift
	}
	if b, ok := bufPools[class].Get().(*buffer); ok {
		return b
	}
	return &buffer{b: make([]byte, 1<<(class+minBufShift)), class: uint8(class)}
}

func putBuffer(b *buffer) {
	if b != nil {
		bufPools[b.class].Put(b)
	}
}
