package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/s2"
)

// pages builds a block from 4 KiB pages.
func pages(ps ...[]byte) []byte { return bytes.Join(ps, nil) }

// TestMayCompress checks the sample that spares S2 its attempt on
// incompressible blocks: it must say no for random data, and yes for
// blocks S2 does shrink by an eighth however their compressible part is
// placed in their pages.
func TestMayCompress(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	rnd := func(n int) []byte { return randomBlock(rng, n) }
	repeat := func(unit []byte, n int) []byte { return bytes.Repeat(unit, n/len(unit)) }
	var (
		padded, prefixed, middled, mixed [][]byte
	)
	for p := range 16 {
		padded = append(padded, append(rnd(3<<10), filled(0, 1<<10)...)) // a file's last cluster
		prefixed = append(prefixed, append(filled(0, 1<<10), rnd(3<<10)...))
		m := rnd(4 << 10)
		copy(m[1024:], textBlock(p, 2048)) // compressible only inside the page
		middled = append(middled, m)
		if p%3 == 0 {
			mixed = append(mixed, textBlock(p, 4<<10))
		} else {
			mixed = append(mixed, rnd(4<<10))
		}
	}
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"random", rnd(64 << 10), false},
		{"random 1 MiB", rnd(1 << 20), false},
		{"text", textBlock(1, 64<<10), true},
		{"random then zeros", append(rnd(32<<10), filled(0, 32<<10)...), true},
		{"pages zero-padded at their end", pages(padded...), true},
		{"pages zero-filled at their start", pages(prefixed...), true},
		{"pages with text in their middle", pages(middled...), true},
		{"a third of the pages text", pages(mixed...), true},
		{"one random page 16 times", repeat(rnd(4<<10), 64<<10), true},
		{"one random half twice", repeat(rnd(32<<10), 64<<10), true},
		{"small random block (not sampled)", rnd(4 << 10), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			full := len(s2.Encode(nil, tc.data))
			saves := full <= len(tc.data)-len(tc.data)/8
			if tc.want != saves && len(tc.data) >= sampleMinBlock {
				t.Fatalf("test premise: S2 stores %d of %d bytes; the case expects it to save an eighth: %v", full, len(tc.data), tc.want)
			}
			scratch := make([]byte, 1+s2.MaxEncodedLen(len(tc.data)))
			if got := mayCompress(tc.data, scratch); got != tc.want {
				t.Errorf("mayCompress = %v, want %v (S2 stores %d of %d bytes)", got, tc.want, full, len(tc.data))
			}
		})
	}
}

// TestPutEntriesConcurrentReusesBuffers writes distinct 64 KiB blocks of
// both codecs from several goroutines: encodeChunk's buffers are recycled
// between PutEntries calls, and a buffer reused before Badger has written
// the value would leave chunks whose content does not match their hash.
func TestPutEntriesConcurrentReusesBuffers(t *testing.T) {
	s := openTest(t, "")
	const writers, rounds, blocks, size = 4, 6, 16, 64 << 10
	block := func(w, r, b int) []byte {
		n := (w*rounds+r)*blocks + b
		if b%2 == 0 {
			return uniqueBlock("random", n, size)
		}
		return uniqueBlock("text", n, size)
	}
	concurrently(t, writers, func(w int) error {
		for r := range rounds {
			entries := make([]Entry, blocks)
			for b := range entries {
				entries[b] = Entry{uint64(r*blocks + b), block(w, r, b)}
			}
			if err := s.PutEntries(context.Background(), uint64(w+1), 1, entries); err != nil {
				return err
			}
		}
		return nil
	})
	wantClean(t, s)
	for w := range writers {
		for r := range rounds {
			for b := range blocks {
				wantRead(t, s, uint64(w+1), uint64(r*blocks+b), 1, block(w, r, b))
			}
		}
	}
	if n := storedChunks(t, s); n != writers*rounds*blocks {
		t.Errorf("%d chunks stored, want %d", n, writers*rounds*blocks)
	}
}
