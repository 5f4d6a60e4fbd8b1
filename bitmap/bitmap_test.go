package bitmap

import (
	"slices"
	"testing"
)

func TestRangesAndMembers(t *testing.T) {
	b := New(200)
	b.SetRange(3, 70)
	b.Set(199)
	if !b.AllSet(3, 70) || b.AllSet(2, 70) || b.AllSet(3, 71) || !b.AllSet(64, 64) {
		t.Fatal("AllSet wrong around the range 3..70")
	}
	if got := b.Count(); got != 69 {
		t.Fatalf("Count = %d, want 69", got)
	}
	var walked []uint64
	for m, ok := b.NextSet(0); ok; m, ok = b.NextSet(m + 1) {
		walked = append(walked, m)
	}
	if !slices.Equal(walked, b.Members()) {
		t.Fatalf("NextSet walk %v differs from Members %v", walked, b.Members())
	}
	if !b.TestAndClear(5) || b.TestAndClear(5) || b.Test(5) {
		t.Fatal("TestAndClear wrong")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	b := New(1 << 20)
	for _, i := range []uint64{0, 1, 63, 64, 65535, 65536, 1<<20 - 1} {
		b.Set(i)
	}
	raw, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(1<<20, raw)
	if err != nil || !slices.Equal(got.Members(), b.Members()) {
		t.Fatalf("round trip: %v, %v; want %v", got.Members(), err, b.Members())
	}
	short, err := Unmarshal(65536, raw)
	if err != nil || !slices.Equal(short.Members(), []uint64{0, 1, 63, 64, 65535}) {
		t.Fatalf("into a shorter bitmap: %v, %v", short.Members(), err)
	}
	if _, err := Unmarshal(10, []byte("not roaring")); err == nil {
		t.Fatal("garbage decoded")
	}
}
