package nbd_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// Reads served with sendfile from a block.Backed backend.

// longerFile claims to be larger than its file: what lies past the file's
// end reads as zeros (a sparse live image shorter than its disk).
type longerFile struct {
	*blocktest.File
	size int64
}

func (f longerFile) Size() int64 { return f.size }

// badBacking says its data is in a file it cannot read (a directory).
type badBacking struct {
	*blocktest.Memory
	dir *os.File
}

func (b badBacking) Backing(off, _ int64) (uintptr, int64, bool) { return b.dir.Fd(), off, true }

func TestSendfileReads(t *testing.T) {
	dir := t.TempDir()
	f, err := blocktest.CreateFile(filepath.Join(dir, "short.img"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte("sendfile"), 40<<10) // 320 KiB at 64 KiB
	if err := f.WriteAt(context.Background(), data, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if f, err = blocktest.OpenFile(filepath.Join(dir, "short.img"), false); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want[64<<10:], data)
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sock, _ := nbdtest.Serve(t, nbdtest.NewExports(
		&nbd.Export{Name: "short", Device: longerFile{f, 1 << 20}},
		&nbd.Export{Name: "bad", Device: badBacking{blocktest.NewMemory(1 << 20), d}},
	), nbd.Options{})

	tests := []struct {
		name       string
		structured bool
		flags      uint16
		off        uint64
		length     uint32
		chunks     []uint16
	}{
		{"data then past the file's end", true, 0, 64 << 10, 512 << 10, []uint16{cChunkOffsetData, cChunkNone}},
		{"hole data zeros", true, 0, 0, 1 << 20, []uint16{cChunkOffsetHole, cChunkOffsetData, cChunkNone}},
		{"DF: one data chunk", true, cFlagDF, 0, 1 << 20, []uint16{cChunkOffsetData, cChunkNone}},
		{"simple reply", false, 0, 0, 1 << 20, nil},
		{"wholly past the file", true, cFlagDF, 512 << 10, 256 << 10, []uint16{cChunkOffsetData, cChunkNone}},
	}
	for _, tt := range tests {
		c := open(t, sock, "short", tt.structured)
		r := c.do(cCmdRead, tt.flags, tt.off, tt.length, nil)
		if r.errno != 0 || !bytes.Equal(r.data, want[tt.off:tt.off+uint64(tt.length)]) {
			t.Errorf("%s: %v, content equal %v", tt.name, r, bytes.Equal(r.data, want[tt.off:tt.off+uint64(tt.length)]))
		}
		// hole-then-data is what the file system reports for the sparse
		// start; past the file's end Extents says nothing: data (zeros).
		if tt.structured && tt.name != "hole data zeros" && !slices.Equal(r.chunks, tt.chunks) {
			t.Errorf("%s: chunks %v, want %v", tt.name, r.chunks, tt.chunks)
		}
		if r := c.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("%s: next read: %v", tt.name, r)
		}
	}

	t.Run("read error, structured", func(t *testing.T) {
		c := open(t, sock, "bad", true)
		if r := c.do(cCmdWrite, 0, 0, 128<<10, make([]byte, 128<<10)); r.errno != 0 {
			t.Fatal(r)
		}
		r := c.do(cCmdRead, 0, 0, 128<<10, nil)
		if r.errno != cEIO || !slices.Equal(r.chunks, []uint16{cChunkOffsetData, cChunkError}) {
			t.Fatalf("%v, want a padded data chunk then EIO", r)
		}
		if r := c.do(cCmdRead, 0, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("next read: %v", r)
		}
	})
	t.Run("read error, simple reply closes", func(t *testing.T) {
		c := open(t, sock, "bad", false)
		c.send(cCmdRead, 0, 1, 0, 128<<10, nil)
		c.flush()
		if !c.drainedToClose() {
			t.Fatal("a simple reply promised data it could not send, and the connection stayed open")
		}
	})
}
