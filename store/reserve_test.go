package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
)

// TestZeroBytesFree: a store whose filesystem a guest's image has filled
// to the last byte keeps working on its reserve. Records (a snapshot's
// failure) and merges (deletes) go through even when Badger must start a
// new memtable and value log for them, which takes blocks from the
// reserve; it closes (flushing its memtable) and opens again (a new
// memtable and value log) with 0 bytes free; chunk writes are refused
// with block.ErrNoSpace; and once space comes back the reserve is whole
// again. Without the reserve, Badger's first new file on the full
// filesystem fails (and a new memtable that cannot be made stops Badger
// for good).
func TestZeroBytesFree(t *testing.T) {
	dir := smallFS(t, "64m")
	opts := Options{Dir: dir, ReserveBytes: 24 << 20, tune: tinyBadger}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	var written [][]byte
	for i := range 40 {
		data := randomBlock(rng, 64<<10)
		put(t, s, 1, 1, Entry{uint64(i), data})
		written = append(written, data)
	}
	filler := fillFS(t, dir)
	sp := wantSpace(t, s, 0, 24<<20)

	// Chunk writes: refused, naming the directory.
	err = s.PutEntries(ctx, 1, 2, []Entry{{0, randomBlock(rng, 64<<10)}})
	if !errors.Is(err, block.ErrNoSpace) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("PutEntries with 0 bytes free: %v, want block.ErrNoSpace naming %s", err, dir)
	}
	if err := s.RoomForData(); !errors.Is(err, block.ErrNoSpace) {
		t.Fatalf("RoomForData with 0 bytes free: %v", err)
	}

	// Records big enough for the value log (1 KiB and more) and small
	// ones, until Badger has made a new memtable and a new value log:
	// they come from the reserve.
	memBefore, vlogBefore := badgerFiles(t, dir)
	big, small := strings.Repeat("x", 1500), strings.Repeat("y", 700)
	for i := 0; ; i++ {
		value := small
		if i%2 == 0 {
			value = big
		}
		if err := s.PutRecord(fmt.Sprintf("snap/1/%d", i), map[string]string{"state": "failed", "reason": value}); err != nil {
			t.Fatalf("failure record %d with 0 bytes free: %v", i, err)
		}
		mem, vlog := badgerFiles(t, dir)
		if mem != memBefore && vlog != vlogBefore {
			t.Logf("%d records written; memtables %v -> %v, value logs %v -> %v", i+1, memBefore, mem, vlogBefore, vlog)
			break
		}
		if i == 20000 {
			t.Fatal("20000 records and Badger made no new memtable and value log")
		}
	}
	if sp, _ = s.Space(); sp.ReserveHeld >= sp.Reserve {
		t.Fatalf("the reserve holds %d of %d bytes after Badger made new files on a full filesystem", sp.ReserveHeld, sp.Reserve)
	}
	// A delete: merge the snapshot away (every entry dropped).
	if _, _, err := s.Merge(ctx, 1, 0, 1, 0, func(uint64) bool { return true }); err != nil {
		t.Fatalf("Merge with 0 bytes free: %v", err)
	}
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync with 0 bytes free: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close with 0 bytes free: %v", err)
	}
	fillFS(t, dir) // what Close gave back
	if s, err = Open(opts); err != nil {
		t.Fatalf("Open with 0 bytes free: %v", err)
	}
	for i := 0; i < 5; i++ {
		if err := s.PutRecord(fmt.Sprintf("after/%d", i), map[string]int{"n": i}); err != nil {
			t.Fatalf("record after reopening with 0 bytes free: %v", err)
		}
	}
	if err := s.GetRecord("snap/1/0", &map[string]string{}); err != nil {
		t.Fatalf("record written on the reserve, after reopening: %v", err)
	}
	if _, found, err := s.Lookup(ctx, 1, 0, 1); err != nil || found {
		t.Fatalf("entry of the merged snapshot after reopening: found %v, %v", found, err)
	}
	wantClean(t, s)

	// Space comes back: the reserve is whole again, then chunks fit.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		sp = wantSpace(t, s, 1, 24<<20)
		if sp.ReserveHeld == sp.Reserve {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reserve holds %d of %d bytes 10s after space came back", sp.ReserveHeld, sp.Reserve)
		}
		time.Sleep(50 * time.Millisecond)
	}
	put(t, s, 1, 3, Entry{0, written[0]})
	wantRead(t, s, 1, 0, 3, written[0])
}

// TestReserveUsedUp: once free space and the reserve together could not
// hold Badger's next memtable, metadata writes are refused with
// block.ErrNoSpace (saying the reserve is used up) instead of letting
// Badger fail to make one.
func TestReserveUsedUp(t *testing.T) {
	dir := smallFS(t, "24m")
	s, err := Open(Options{Dir: dir, ReserveBytes: 8 << 20, tune: tinyBadger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fillFS(t, dir)
	// Take the reserve down below the floor, as Badger's files would.
	s.slop.mu.Lock()
	err = s.slop.shrinkLocked(s.slop.held - int64(s.space.floor) + 1)
	s.slop.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	fillFS(t, dir)
	err = s.PutRecord("snap/1/1", map[string]string{"state": "failed"})
	if !errors.Is(err, block.ErrNoSpace) || !strings.Contains(err.Error(), "reserve is used up") {
		t.Fatalf("record with the reserve used up: %v, want block.ErrNoSpace saying so", err)
	}
}

// TestReserveSurvivesRestart: the reserve file is found again (not
// counted as the store's data) and one that gave space away while the
// store was closed is allocated back at open when there is room.
func TestReserveSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, ReserveBytes: 8 << 20, tune: tinyBadger}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	wantSpace(t, s, 1, 8<<20)
	st, err := s.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.DiskBytes >= 8<<20 {
		t.Errorf("the store's disk bytes (%d) count the reserve", st.DiskBytes)
	}
	s.Close()
	if err := os.Truncate(filepath.Join(dir, reserveFile), 1<<20); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if sp := wantSpace(t, s, 1, 8<<20); sp.ReserveHeld != sp.Reserve {
		t.Errorf("after reopening, the reserve holds %d of %d bytes", sp.ReserveHeld, sp.Reserve)
	}
}

// wantSpace checks Space: free at least minFree bytes (0: exactly none),
// the reserve's full size.
func wantSpace(t *testing.T, s *Store, minFree, reserve uint64) Space {
	t.Helper()
	sp, err := s.Space()
	if err != nil {
		t.Fatal(err)
	}
	if minFree == 0 && sp.Free != 0 || sp.Free < minFree || sp.Reserve != reserve || sp.ReserveHeld > sp.Reserve {
		t.Fatalf("Space() = %+v; want free >= %d (0: exactly), reserve %d", sp, minFree, reserve)
	}
	return sp
}

// badgerFiles names Badger's newest memtable and value-log files.
func badgerFiles(t *testing.T, dir string) (mem, vlog string) {
	t.Helper()
	newest := func(pattern string) string {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil || len(m) == 0 {
			t.Fatalf("no %s in %s (%v)", pattern, dir, err)
		}
		return filepath.Base(m[len(m)-1])
	}
	return newest("*.mem"), newest("*.vlog")
}

// TestFullWithoutReserve: with the reserve used up and not a byte free,
// Close's flush of the memtable into a new table (the SIGTERM
// crash, SIGBUS in table.buildData.Copy) fails instead of faulting, and
// Close returns with an error instead of waiting for Badger's endless
// retries; once space comes back the store opens with everything
// committed before.
func TestFullWithoutReserve(t *testing.T) {
	dir := smallFS(t, "32m")
	opts := Options{Dir: dir, ReserveBytes: 8 << 20, tune: tinyBadger, closeTimeout: 2 * time.Second}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if err := s.PutRecord(fmt.Sprintf("r/%d", i), strings.Repeat("v", 500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.slop.mu.Lock()
	err = s.slop.shrinkLocked(s.slop.held)
	s.slop.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	filler := fillFS(t, dir)
	// Close flushes the memtable into a new table: no room. Badger
	// retries that flush forever; Close gives up after closeTimeout.
	if err := s.Close(); err == nil || !strings.Contains(err.Error(), "replayed at the next start") {
		t.Fatalf("Close with nothing free and no reserve: %v, want an error saying the log replays", err)
	}
	// Space comes back: the flush Badger kept retrying finishes (in a
	// stopped cairnd the process would have exited), and the store opens
	// with everything committed.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s, err = Open(opts); err != nil && time.Now().Before(deadline); s, err = Open(opts) {
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Open once space came back: %v", err)
	}
	defer s.Close()
	var v string
	if err := s.GetRecord("r/199", &v); err != nil || len(v) != 500 {
		t.Fatalf("record synced before the full Close: %q, %v", v, err)
	}
}
