package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/s2"
	"github.com/zeebo/blake3"
)

// zeroBlock is compared against, never written.
var zeroBlock [64 << 10]byte

// isZero reports whether b holds only zero bytes (bytes.Equal is a
// vectorised memcmp).
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// hashBlock names a chunk: BLAKE3 of its uncompressed content.
func hashBlock(b []byte) [32]byte { return blake3.Sum256(b) }

// encodeBufs recycles encodeChunk's output buffers (*[]byte). A fresh one
// per chunk (1+s2.MaxEncodedLen: ~75 KB for a 64 KiB block) cost more CPU
// than S2 itself: the allocation is zeroed, cold in the cache, and keeps
// the garbage collector busy.
var encodeBufs sync.Pool

// encodeChunk builds a c<hash> value: S2-compressed when that saves at
// least an eighth, raw otherwise. The value lives in buf, a buffer of
// encodeBufs: give it back with releaseChunkBuf once nothing refers to the
// value any more. Badger keeps a reference to a value passed to txn.Set
// until that transaction has committed or been discarded.
func encodeChunk(raw []byte) (enc []byte, buf *[]byte) {
	size := 1 + s2.MaxEncodedLen(len(raw))
	buf, _ = encodeBufs.Get().(*[]byte)
	if buf == nil || cap(*buf) < size {
		b := make([]byte, size)
		buf = &b
	}
	out := (*buf)[:size]
	if mayCompress(raw, out) {
		if enc := s2.Encode(out[1:], raw); len(enc) <= len(raw)-len(raw)/8 {
			out[0] = codecS2
			return out[:1+len(enc)], buf
		}
	}
	out[0] = codecRaw
	return out[:1+copy(out[1:], raw)], buf
}

// releaseChunkBuf returns a buffer of encodeChunk to encodeBufs (nil is
// ignored).
func releaseChunkBuf(buf *[]byte) {
	if buf != nil {
		encodeBufs.Put(buf)
	}
}

// Sampling before S2 (mayCompress): blocks of at least sampleMinBlock
// bytes are looked at in pages of samplePage bytes (the guest filesystem's
// usual cluster), taking samplePiece bytes from the start and the end of
// every page and from one more place that moves from page to page (a
// stride of 7 slots, prime to the 30 slots, so pages differ).
const (
	sampleMinBlock = 16 << 10
	samplePage     = 4 << 10
	samplePiece    = 128
)

// mayCompress says whether S2 is worth trying on raw: false only when a
// sample of it (3/32 of the block) does not shrink by even 1/64 under S2,
// which is what random, encrypted or already compressed data looks like;
// such a block is then stored raw without the full S2 pass (a random
// 64 KiB block costs encodeChunk about half: BenchmarkEncodeChunk). Every
// page contributes to the sample, so it sees a block that is only partly
// compressible: zero or text pages, pages zero-padded at their end, a page
// repeated (identical pages give identical pieces). The bar is low because
// the sample compresses worse than its block (short pieces, and S2 skips
// ahead faster the longer it finds no match). On 600 MiB of /usr laid out
// as in a filesystem image, plus 2,000 random blocks, it skipped S2 on
// 2,868 of 11,600 blocks (868 of them real) and stored raw 8 of the 8,577
// blocks S2 shrinks by an eighth: 0.09 MiB more out of 417 MiB stored.
// scratch is encodeChunk's output buffer, 1+s2.MaxEncodedLen(len(raw))
// bytes: the sample is gathered at its end and compressed into its start.
func mayCompress(raw, scratch []byte) bool {
	if len(raw) < sampleMinBlock {
		return true // the sample would cost about as much as S2 itself
	}
	pages := len(raw) / samplePage
	third := pages * samplePiece
	n := 3 * third
	free := len(scratch) - n
	sample := scratch[free:]
	// The pieces from the pages' starts come first: most compressible
	// blocks are recognised by them alone, for a third of the cost.
	const slots = samplePage/samplePiece - 2 // pieces between the first and the last
	for p := range pages {
		page := raw[p*samplePage : (p+1)*samplePage]
		mid := (1 + (p*7)%slots) * samplePiece
		k := p * samplePiece
		copy(sample[k:], page[:samplePiece])
		copy(sample[third+k:], page[samplePage-samplePiece:])
		copy(sample[2*third+k:], page[mid:mid+samplePiece])
	}
	// Capped: s2.Encode uses dst up to its capacity.
	dst := scratch[:free:free]
	if enc := s2.Encode(dst, sample[:third]); len(enc) <= third-third/8 {
		return true
	}
	enc := s2.Encode(dst, sample)
	return len(enc) < n-n/64
}

// decodeChunk fills buf from a c<hash> value and checks it against the
// hash.
func decodeChunk(h [32]byte, v, buf []byte) error {
	if len(v) == 0 {
		return fmt.Errorf("%w: chunk %x: empty value", block.ErrCorrupt, h)
	}
	switch payload := v[1:]; v[0] {
	case codecRaw:
		if len(payload) != len(buf) {
			return fmt.Errorf("%w: chunk %x holds %d bytes, block is %d", block.ErrCorrupt, h, len(payload), len(buf))
		}
		copy(buf, payload)
	case codecS2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return fmt.Errorf("%w: chunk %x: %v", block.ErrCorrupt, h, err)
		}
		if n != len(buf) {
			return fmt.Errorf("%w: chunk %x holds %d bytes, block is %d", block.ErrCorrupt, h, n, len(buf))
		}
		if _, err := s2.Decode(buf, payload); err != nil {
			return fmt.Errorf("%w: chunk %x: %v", block.ErrCorrupt, h, err)
		}
	default:
		return fmt.Errorf("%w: chunk %x: unknown codec %d", block.ErrCorrupt, h, v[0])
	}
	if got := hashBlock(buf); got != h {
		return fmt.Errorf("%w: chunk %x: content hashes to %x", block.ErrCorrupt, h, got)
	}
	return nil
}

// rawLen is the uncompressed size a c<hash> value decodes to.
func rawLen(v []byte) (int, error) {
	if len(v) == 0 {
		return 0, errors.New("empty value")
	}
	switch v[0] {
	case codecRaw:
		return len(v) - 1, nil
	case codecS2:
		return s2.DecodedLen(v[1:])
	}
	return 0, fmt.Errorf("unknown codec %d", v[0])
}

// readChunk fills buf with chunk h inside txn.
func readChunk(txn *badger.Txn, h [32]byte, buf []byte) error {
	item, err := txn.Get(chunkKey(h))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("%w: chunk %x is missing", block.ErrCorrupt, h)
	}
	if err != nil {
		return err
	}
	return item.Value(func(v []byte) error { return decodeChunk(h, v, buf) })
}

func (s *Store) readChunk(ctx context.Context, h [32]byte, buf []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.view(func(txn *badger.Txn) error { return readChunk(txn, h, buf) })
	return s.wrapErr("read chunk", err)
}

// getRef reads r<hash>; found is false when the chunk has no reference
// record.
func getRef(txn *badger.Txn, h [32]byte) (ref chunkRef, found bool, err error) {
	item, err := txn.Get(refKey(h))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ref, false, nil
	}
	if err != nil {
		return ref, false, err
	}
	err = item.Value(func(v []byte) error {
		ref, err = parseChunkRef(v)
		return err
	})
	return ref, err == nil, err
}

// refDeltas are the reference changes one transaction makes, by chunk.
type refDeltas map[[32]byte]int64

// applied says what applyRefDeltas did to the chunks.
type applied struct {
	freedRaw    uint64 // uncompressed bytes of chunks deleted
	freedStored uint64 // stored bytes of chunks deleted
}

// applyRefDeltas writes the reference changes in txn: a chunk gaining its
// first reference is stored (payload gives its encoded value and raw
// size), one losing its last is deleted. Reads every r<hash> it changes,
// so two transactions touching one chunk conflict and one retries: counts
// stay exact under concurrency.
func applyRefDeltas(txn *badger.Txn, deltas refDeltas, payload func(h [32]byte) (enc []byte, raw uint64)) (applied, error) {
	var a applied
	for h, d := range deltas {
		if d == 0 {
			continue
		}
		ref, found, err := getRef(txn, h)
		if err != nil {
			return a, err
		}
		n := int64(ref.refs) + d
		switch {
		case n < 0 || (!found && d < 0):
			return a, fmt.Errorf("%w: chunk %x: releasing %d references, it has %d (run verify)", block.ErrCorrupt, h, -d, ref.refs)
		case !found && payload == nil:
			return a, fmt.Errorf("store: chunk %x gains a reference but has none stored", h)
		case !found:
			enc, raw := payload(h)
			if enc == nil {
				return a, fmt.Errorf("store: chunk %x gains a reference but its content is not at hand", h)
			}
			if err := txn.Set(chunkKey(h), enc); err != nil {
				return a, err
			}
			ref = chunkRef{refs: uint64(n), stored: uint64(len(enc)), raw: raw}
		case n == 0:
			if err := txn.Delete(chunkKey(h)); err != nil {
				return a, err
			}
			if err := txn.Delete(refKey(h)); err != nil {
				return a, err
			}
			a.freedRaw += ref.raw
			a.freedStored += ref.stored
			continue
		default:
			ref.refs = uint64(n)
		}
		if err := txn.Set(refKey(h), ref.encode()); err != nil {
			return a, err
		}
	}
	return a, nil
}

// rewriteChunk writes chunk h's value again from payload, keeping its
// references (a suspect store's repair, fault.go).
func rewriteChunk(txn *badger.Txn, h [32]byte, payload func(h [32]byte) (enc []byte, raw uint64)) error {
	ref, found, err := getRef(txn, h)
	if err != nil || !found {
		return err
	}
	enc, raw := payload(h)
	if enc == nil {
		return nil
	}
	if err := txn.Set(chunkKey(h), enc); err != nil {
		return err
	}
	ref.stored, ref.raw = uint64(len(enc)), raw
	return txn.Set(refKey(h), ref.encode())
}

// parallel calls fn(0..n-1) on up to GOMAXPROCS goroutines and waits.
func parallel(n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}
