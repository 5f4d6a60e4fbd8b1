package restore

import (
	"bytes"
	"encoding/binary"
	"slices"
	"testing"
)

// image is a sparse in-memory disk image for partition-table tests.
type image map[int64][]byte // sector number -> 512 bytes

func (im image) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	for i := int64(0); i < int64(len(p)); i += sector {
		if s, ok := im[(off+i)/sector]; ok {
			copy(p[i:], s)
		}
	}
	return len(p), nil
}

func (im image) sector(n int64) []byte {
	if im[n] == nil {
		im[n] = make([]byte, sector)
	}
	return im[n]
}

func putEntry(s []byte, i int, typ byte, start, count uint32) {
	e := s[mbrEntries+mbrEntrySize*i:]
	e[4] = typ
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], count)
	s[510], s[511] = 0x55, 0xAA
}

func TestReadPartitions(t *testing.T) {
	const size = 1 << 30 // 2097152 sectors
	mbr := image{}
	putEntry(mbr.sector(0), 0, 0x83, 2048, 4096)
	putEntry(mbr.sector(0), 1, 0x05, 10000, 100000) // extended
	putEntry(mbr.sector(0), 2, 0x83, 3000000, 10)   // past the end: dropped
	putEntry(mbr.sector(10000), 0, 0x83, 63, 1000)  // logical 5
	putEntry(mbr.sector(10000), 1, 0x05, 5000, 2000)
	putEntry(mbr.sector(15000), 0, 0x07, 63, 500) // logical 6, last

	loopy := image{}
	putEntry(loopy.sector(0), 0, 0x0F, 100, 1000)
	putEntry(loopy.sector(100), 0, 0x83, 1, 10)
	putEntry(loopy.sector(100), 1, 0x05, 0, 0) // links to itself: ends

	gpt := image{}
	putEntry(gpt.sector(0), 0, mbrProtective, 1, size/sector-1)
	hdr := gpt.sector(1)
	copy(hdr, gptSignature)
	binary.LittleEndian.PutUint64(hdr[72:], 2)
	binary.LittleEndian.PutUint32(hdr[80:], 128)
	binary.LittleEndian.PutUint32(hdr[84:], 128)
	for i, r := range [][2]uint64{{2048, 4095}, {0, 0}, {4096, 1 << 40}, {8192, 16383}} {
		e := gpt.sector(2 + int64(i)/4)[128*(i%4):]
		if r[0] != 0 {
			e[0] = 1 // a type GUID
		}
		binary.LittleEndian.PutUint64(e[32:], r[0])
		binary.LittleEndian.PutUint64(e[40:], r[1])
	}

	const gptOne = "00000001-0000-0000-0000-000000000000" // the type GUID above

	fat := image{}
	copy(fat.sector(0), bytes.Repeat([]byte{0xEB}, 512)) // jump code where boot flags would be
	fat.sector(0)[510], fat.sector(0)[511] = 0x55, 0xAA

	for _, c := range []struct {
		name string
		im   image
		want []partition
	}{
		{"blank", image{}, nil},
		{"mbr with logical partitions", mbr, []partition{
			{1, 2048 * sector, 4096 * sector, "0x83"},
			{5, 10063 * sector, 1000 * sector, "0x83"},
			{6, 15063 * sector, 500 * sector, "0x07"},
		}},
		{"ebr chain pointing at itself", loopy, []partition{{5, 101 * sector, 10 * sector, "0x83"}}},
		{"gpt", gpt, []partition{{1, 2048 * sector, 2048 * sector, gptOne}, {4, 8192 * sector, 8192 * sector, gptOne}}},
		{"fat boot sector", fat, nil},
	} {
		got, err := readPartitions(c.im, size)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}
