package restore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// partition is one entry of a partition table, in bytes.
type partition struct {
	Number       int
	Offset, Size int64
	// Type is the entry's type: "0x83" (MBR's type byte) or a GPT type
	// GUID ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").
	Type string
}

// Partition-table schemes, as ReadTable names them.
const (
	SchemeNone = "none"
	SchemeMBR  = "mbr"
	SchemeGPT  = "gpt"
)

// Partition-table layouts: the MBR ("DOS") table of the IBM PC with
// extended boot records for logical partitions, and the UEFI GPT (UEFI
// specification 2.10, section 5.3). The kernel's own parsers are not
// used: they may be compiled out (they are on the test machines), and
// reading the table here needs no udev and no partition devices.
const (
	sector         = 512
	mbrEntries     = 446
	mbrEntrySize   = 16
	mbrProtective  = 0xEE
	gptSignature   = "EFI PART"
	maxGPTEntries  = 1024
	maxLogicalMBRs = 128
)

func isExtended(typ byte) bool { return typ == 0x05 || typ == 0x0F || typ == 0x85 }

// readPartitions returns the partitions of the image in r (size bytes),
// or none when it has no partition table. The image is untrusted: every
// entry outside the image is dropped.
func readPartitions(r io.ReaderAt, size int64) ([]partition, error) {
	_, parts, err := readTable(r, size)
	return parts, err
}

// readTable is readPartitions with the table's scheme.
func readTable(r io.ReaderAt, size int64) (scheme string, parts []partition, err error) {
	mbr := make([]byte, sector)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return SchemeNone, nil, nil
		}
		return SchemeNone, nil, fmt.Errorf("read partition table: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return SchemeNone, nil, nil
	}
	for i := range 4 {
		if mbr[mbrEntries+i*mbrEntrySize+4] == mbrProtective {
			parts, err := readGPT(r, size)
			return SchemeGPT, parts, err
		}
	}
	var out []partition
	for i := range 4 {
		e := mbr[mbrEntries+i*mbrEntrySize:]
		if boot := e[0]; boot != 0 && boot != 0x80 {
			return SchemeNone, nil, nil // not a partition table (a FAT boot sector, say)
		}
		typ, start, count := e[4], int64(binary.LittleEndian.Uint32(e[8:])), int64(binary.LittleEndian.Uint32(e[12:]))
		if typ == 0 || count == 0 {
			continue
		}
		if isExtended(typ) {
			logical, err := readLogical(r, size, start)
			if err != nil {
				return SchemeMBR, nil, err
			}
			out = append(out, logical...)
			continue
		}
		out = appendInside(out, size, partition{i + 1, start * sector, count * sector, mbrType(typ)})
	}
	return SchemeMBR, out, nil
}

func mbrType(typ byte) string { return fmt.Sprintf("0x%02x", typ) }

// guid formats a GPT GUID (its first three fields little-endian).
func guid(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]),
		binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

// readLogical follows the chain of extended boot records from the
// extended partition at sector ext; logical partitions are numbered from 5.
func readLogical(r io.ReaderAt, size, ext int64) ([]partition, error) {
	var out []partition
	ebr := make([]byte, sector)
	next := int64(0) // relative to ext
	for n := 5; n < 5+maxLogicalMBRs; n++ {
		if _, err := r.ReadAt(ebr, (ext+next)*sector); err != nil {
			return out, nil // a chain running off the image ends it
		}
		if ebr[510] != 0x55 || ebr[511] != 0xAA {
			return out, nil
		}
		this, link := ebr[mbrEntries:], ebr[mbrEntries+mbrEntrySize:]
		start, count := int64(binary.LittleEndian.Uint32(this[8:])), int64(binary.LittleEndian.Uint32(this[12:]))
		if this[4] != 0 && count != 0 {
			out = appendInside(out, size, partition{n, (ext + next + start) * sector, count * sector, mbrType(this[4])})
		}
		following := int64(binary.LittleEndian.Uint32(link[8:]))
		if !isExtended(link[4]) || following == 0 || following == next {
			return out, nil
		}
		next = following
	}
	return out, nil
}

// readGPT reads a GUID partition table, trying 512- and 4096-byte sectors.
func readGPT(r io.ReaderAt, size int64) ([]partition, error) {
	for _, lba := range []int64{512, 4096} {
		hdr := make([]byte, 92)
		if _, err := r.ReadAt(hdr, lba); err != nil || string(hdr[:8]) != gptSignature {
			continue
		}
		first := int64(binary.LittleEndian.Uint64(hdr[72:]))
		count := int64(binary.LittleEndian.Uint32(hdr[80:]))
		entrySize := int64(binary.LittleEndian.Uint32(hdr[84:]))
		if count > maxGPTEntries || entrySize < 128 || entrySize > 4096 {
			return nil, fmt.Errorf("GPT header: %d entries of %d bytes is not a sane table", count, entrySize)
		}
		table := make([]byte, count*entrySize)
		if _, err := r.ReadAt(table, first*lba); err != nil {
			return nil, fmt.Errorf("read GPT entries: %w", err)
		}
		var out []partition
		zero := make([]byte, 16)
		for i := range count {
			e := table[i*entrySize:]
			if bytes.Equal(e[:16], zero) {
				continue // unused entry
			}
			start, end := int64(binary.LittleEndian.Uint64(e[32:])), int64(binary.LittleEndian.Uint64(e[40:]))
			if start <= 0 || end < start || end >= size/lba {
				continue // outside the image (or overflowing)
			}
			out = appendInside(out, size, partition{int(i) + 1, start * lba, (end - start + 1) * lba, guid(e[:16])})
		}
		return out, nil
	}
	return nil, errors.New("protective MBR but no GPT header: the partition table is damaged")
}

// appendInside appends p unless it lies (even partly) outside the image.
func appendInside(out []partition, size int64, p partition) []partition {
	if p.Offset <= 0 || p.Size <= 0 || p.Offset > size || p.Size > size-p.Offset {
		return out
	}
	return append(out, p)
}
