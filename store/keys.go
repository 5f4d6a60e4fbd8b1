package store

// The on-disk key space: every Badger key the store writes is built and
// parsed here and nowhere else. Integers are big-endian so that Badger's
// byte order is numeric order. One byte of prefix names the family.
//
//	c<hash32>                    chunk: [codec byte][payload]
//	r<hash32>                    chunk reference: refcount u64, stored size u64, raw size u64
//	e<disk u64><block u64><seq u64>  chain entry by block: [kind byte][hash32]
//	s<disk u64><seq u64><block u64>  chain entry by sequence: empty value
//	m<key string>                record: JSON
//	i<name string>               id sequence: last id handed out, u64
//	z<name string>               store bookkeeping: format version u64 (format.go); reclaim estimate u64; flush marker
//
// Changing any of these is an on-disk format change: bump FormatVersion.

import (
	"encoding/binary"
	"fmt"

	"github.com/cairn-storage/cairn/block"
)

const (
	prefixChunk    = 'c'
	prefixRef      = 'r'
	prefixEntry    = 'e'
	prefixBySeq    = 's'
	prefixRecord   = 'm'
	prefixID       = 'i'
	prefixBookkeep = 'z'
)

// Chunk value codecs: the first byte of a c<hash> value.
const (
	codecRaw byte = 0 // payload is the block as is
	codecS2  byte = 1 // payload is an S2 block (github.com/klauspost/compress/s2)
)

// Entry kinds: the first byte of an e<...> value.
const (
	kindZero byte = 0 // the block reads as zeros; no hash follows (a zero hash is stored for a fixed size)
	kindData byte = 1 // the block is the chunk named by the hash
)

const (
	hashLen        = 32
	chunkKeyLen    = 1 + hashLen
	entryKeyLen    = 1 + 8 + 8 + 8
	entryValLen    = 1 + hashLen
	refValLen      = 8 + 8 + 8
	keyReclaimed   = "reclaim" // z<reclaim>: stored bytes of chunks deleted and not yet collected
	keyFlushMarker = "flush"   // z<flush>: written and dropped to make Badger flush its memtable
)

// chunkKey is c<hash>.
func chunkKey(h [32]byte) []byte {
	k := make([]byte, chunkKeyLen)
	k[0] = prefixChunk
	copy(k[1:], h[:])
	return k
}

// refKey is r<hash>.
func refKey(h [32]byte) []byte {
	k := make([]byte, chunkKeyLen)
	k[0] = prefixRef
	copy(k[1:], h[:])
	return k
}

// hashFromKey returns the hash of a c<hash> or r<hash> key.
func hashFromKey(k []byte) (h [32]byte, ok bool) {
	if len(k) != chunkKeyLen {
		return h, false
	}
	copy(h[:], k[1:])
	return h, true
}

// entryKey is e<disk><block><seq>.
func entryKey(disk, block, seq uint64) []byte {
	return threeU64Key(prefixEntry, disk, block, seq)
}

// entryDiskPrefix is e<disk>: every entry of a disk.
func entryDiskPrefix(disk uint64) []byte {
	return u64Prefix(prefixEntry, disk)
}

// entryBlockPrefix is e<disk><block>: every entry of one block.
func entryBlockPrefix(disk, block uint64) []byte {
	return entryKey(disk, block, 0)[:17]
}

// parseEntryKey splits e<disk><block><seq>.
func parseEntryKey(k []byte) (disk, block, seq uint64, ok bool) {
	return parseThreeU64Key(prefixEntry, k)
}

// bySeqKey is s<disk><seq><block>, the index that finds a snapshot's own
// entries without walking the disk's other blocks.
func bySeqKey(disk, seq, block uint64) []byte {
	return threeU64Key(prefixBySeq, disk, seq, block)
}

// bySeqDiskPrefix is s<disk>.
func bySeqDiskPrefix(disk uint64) []byte {
	return u64Prefix(prefixBySeq, disk)
}

// parseBySeqKey splits s<disk><seq><block>.
func parseBySeqKey(k []byte) (disk, seq, block uint64, ok bool) {
	return parseThreeU64Key(prefixBySeq, k)
}

// diskOfKey returns the disk of an e<...> or s<...> key.
func diskOfKey(k []byte) (uint64, bool) {
	if len(k) != entryKeyLen || (k[0] != prefixEntry && k[0] != prefixBySeq) {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), true
}

// entryValue is [kind][hash]; a zero entry carries a zero hash.
func entryValue(zero bool, h [32]byte) []byte {
	v := make([]byte, entryValLen)
	if zero {
		v[0] = kindZero
		return v
	}
	v[0] = kindData
	copy(v[1:], h[:])
	return v
}

// parseEntryValue splits [kind][hash].
func parseEntryValue(v []byte) (zero bool, h [32]byte, err error) {
	if len(v) != entryValLen || (v[0] != kindZero && v[0] != kindData) {
		return false, h, fmt.Errorf("%w: entry value of %d bytes, kind %v", block.ErrCorrupt, len(v), firstByte(v))
	}
	copy(h[:], v[1:])
	return v[0] == kindZero, h, nil
}

// chunkRef is the value of r<hash>.
type chunkRef struct {
	refs   uint64 // data entries naming the chunk
	stored uint64 // length of the c<hash> value (codec byte + payload)
	raw    uint64 // uncompressed block size
}

func (r chunkRef) encode() []byte {
	v := make([]byte, refValLen)
	binary.BigEndian.PutUint64(v[0:], r.refs)
	binary.BigEndian.PutUint64(v[8:], r.stored)
	binary.BigEndian.PutUint64(v[16:], r.raw)
	return v
}

func parseChunkRef(v []byte) (chunkRef, error) {
	if len(v) != refValLen {
		return chunkRef{}, fmt.Errorf("%w: reference value of %d bytes, want %d", block.ErrCorrupt, len(v), refValLen)
	}
	return chunkRef{
		refs:   binary.BigEndian.Uint64(v[0:]),
		stored: binary.BigEndian.Uint64(v[8:]),
		raw:    binary.BigEndian.Uint64(v[16:]),
	}, nil
}

// recordKey is m<key>.
func recordKey(key string) []byte { return append([]byte{prefixRecord}, key...) }

// idKey is i<name>.
func idKey(name string) []byte { return append([]byte{prefixID}, name...) }

// bookkeepKey is z<name>.
func bookkeepKey(name string) []byte { return append([]byte{prefixBookkeep}, name...) }

// threeU64Key is <family><a><b><c>, the shape of entry and index keys.
func threeU64Key(family byte, a, b, c uint64) []byte {
	k := make([]byte, entryKeyLen)
	k[0] = family
	binary.BigEndian.PutUint64(k[1:], a)
	binary.BigEndian.PutUint64(k[9:], b)
	binary.BigEndian.PutUint64(k[17:], c)
	return k
}

func parseThreeU64Key(family byte, k []byte) (a, b, c uint64, ok bool) {
	if len(k) != entryKeyLen || k[0] != family {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[9:]), binary.BigEndian.Uint64(k[17:]), true
}

func u64Prefix(family byte, n uint64) []byte {
	k := make([]byte, 9)
	k[0] = family
	binary.BigEndian.PutUint64(k[1:], n)
	return k
}

func encodeU64(n uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, n)
}

func decodeU64(v []byte) (uint64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: counter of %d bytes, want 8", block.ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func firstByte(v []byte) any {
	if len(v) == 0 {
		return "none"
	}
	return v[0]
}
