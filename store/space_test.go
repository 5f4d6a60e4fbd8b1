package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/block"
	"github.com/dgraph-io/badger/v4"
)

// tinyBadger shrinks Badger's files so that a 16 MiB filesystem holds a
// working store.
func tinyBadger(o *badger.Options) {
	o.MemTableSize = 1 << 20
	o.ValueLogFileSize = 1 << 20
	o.BaseTableSize = 256 << 10
	o.BaseLevelSize = 1 << 20
	o.BlockCacheSize = 1 << 20
}

// TestFullFilesystem fills a store on a 16 MiB tmpfs: PutEntries must fail
// with block.ErrNoSpace naming the directory while the filesystem still
// has the reserve's size free, and everything written before must still
// read, merge, sync and reopen.
func TestFullFilesystem(t *testing.T) {
	dir := smallFS(t, "16m")
	opts := Options{Dir: dir, ReserveBytes: 3 << 20, tune: tinyBadger}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(8, 8))
	var written [][]byte
	for i := 0; ; i++ {
		if i > 200 {
			t.Fatal("wrote 200 random 64 KiB blocks into 8 MiB without block.ErrNoSpace")
		}
		data := randomBlock(rng, 64<<10)
		err = s.PutEntries(ctx, 1, 1, []Entry{{uint64(i), data}})
		if err != nil {
			break
		}
		written = append(written, data)
	}
	if !errors.Is(err, block.ErrNoSpace) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("PutEntries on a full filesystem: %v; want block.ErrNoSpace naming %s", err, dir)
	}
	if len(written) < 10 {
		t.Fatalf("only %d blocks fit before block.ErrNoSpace", len(written))
	}
	t.Logf("%d blocks written before: %v", len(written), err)
	for i, data := range written {
		wantRead(t, s, 1, uint64(i), 1, data)
	}
	// Metadata still goes through: the daemon marks the snapshot failed.
	if err := s.PutRecord("snap/1/1", map[string]string{"state": "failed"}); err != nil {
		t.Errorf("PutRecord on a full store: %v", err)
	}
	// Deleting a snapshot still works and frees space.
	if err := s.PutEntries(ctx, 1, 2, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Merge(ctx, 1, 0, 1, 0, func(b uint64) bool { return b%2 == 0 }); err != nil {
		t.Errorf("Merge on a full store: %v", err)
	}
	if err := s.Sync(); err != nil {
		t.Errorf("Sync: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	s, err = Open(opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	for i, data := range written {
		if i%2 == 1 {
			wantRead(t, s, 1, uint64(i), 1, data)
		}
	}
	wantClean(t, s)
}

// TestOpenAfterCrashLeftEmptyValueLog: a crash between Badger creating
// its next value-log file and sizing it leaves a file of zero bytes;
// the store must still open (Badger alone refuses on every start) and
// keep what it had.
func TestOpenAfterCrashLeftEmptyValueLog(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, testBlock)
	data[0] = 7
	if err := s.PutEntries(context.Background(), 1, 1, []Entry{{Block: 0, Data: data}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	vlogs, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if len(vlogs) == 0 {
		t.Fatal("no value log to follow")
	}
	slices.Sort(vlogs)
	var fid int
	fmt.Sscanf(filepath.Base(vlogs[len(vlogs)-1]), "%06d.vlog", &fid)
	empty := filepath.Join(dir, fmt.Sprintf("%06d.vlog", fid+1))
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("open after a crash left an empty value log: %v", err)
	}
	defer s.Close()
	buf := make([]byte, testBlock)
	if found, err := s.ReadBlock(context.Background(), 1, 0, 1, buf); err != nil || !found || buf[0] != 7 {
		t.Fatalf("block after reopen: found %v, %v, first byte %d", found, err, buf[0])
	}
}
