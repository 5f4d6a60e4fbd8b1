package bitmap

import (
	"bytes"
	"testing"
)

// FuzzUnmarshal feeds arbitrary bytes to Unmarshal, which reads the block
// sets of snapshot records: it must return a bitmap or an error, never
// panic, and a set it decodes must encode and decode to the same members.
//
//	go test ./bitmap -run '^$' -fuzz FuzzUnmarshal -fuzztime 10m
func FuzzUnmarshal(f *testing.F) {
	for _, members := range [][]uint64{nil, {0}, {1, 2, 3, 64, 65}, {0, 4095, 1 << 20}} {
		b := New(1<<20 + 1)
		for _, m := range members {
			b.Set(m)
		}
		data, err := b.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint32(1<<20+1), data)
	}
	f.Add(uint32(10), []byte{0x3b, 0x30, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, n uint32, data []byte) {
		b, err := Unmarshal(uint64(n), data)
		if err != nil {
			return
		}
		for _, m := range b.Members() {
			if m >= uint64(n) {
				t.Fatalf("member %d of a set of %d blocks", m, n)
			}
		}
		again, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		b2, err := Unmarshal(uint64(n), again)
		if err != nil {
			t.Fatalf("re-decoding what was encoded: %v", err)
		}
		if a, c := b.Members(), b2.Members(); len(a) != len(c) {
			t.Fatalf("round trip changed %d members to %d", len(a), len(c))
		}
		if again2, _ := b2.MarshalBinary(); !bytes.Equal(again, again2) {
			t.Fatal("encoding is not stable")
		}
	})
}
