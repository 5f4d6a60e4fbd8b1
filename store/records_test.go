package store

import (
	"errors"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/block"
)

// openTest opens a store in a fresh directory and closes it at the end.
func openTest(t testing.TB, dir string) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := Open(Options{Dir: dir, ReserveBytes: 1 << 20})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type testRecord struct {
	Name string `json:"name"`
	Size int    `json:"size"`
}

func TestRecordsRoundTripAndPrefix(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	recs := map[string]testRecord{
		"disk/1":       {"a", 1},
		"disk/2":       {"b", 2},
		"disk/10":      {"c", 10},
		"snap/1/1":     {"s", 11},
		"snap/1/2":     {"t", 12},
		"snap/10/1":    {"u", 101},
		"diskette/odd": {"d", 0},
	}
	for k, v := range recs {
		if err := s.PutRecord(k, v); err != nil {
			t.Fatalf("PutRecord(%s): %v", k, err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	// Round trip survives a reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	for k, want := range recs {
		var got testRecord
		if err := s.GetRecord(k, &got); err != nil || got != want {
			t.Errorf("GetRecord(%s) = %+v, %v; want %+v", k, got, err, want)
		}
	}

	tests := []struct {
		prefix string
		want   []string
	}{
		{"disk/", []string{"disk/1", "disk/10", "disk/2"}},
		{"snap/1/", []string{"snap/1/1", "snap/1/2"}},
		{"snap/", []string{"snap/1/1", "snap/1/2", "snap/10/1"}},
		{"nothing/", nil},
	}
	for _, tc := range tests {
		var got []string
		err := s.ListRecords(tc.prefix, func(key string, raw []byte) error {
			if !strings.HasPrefix(string(raw), "{") {
				t.Errorf("ListRecords(%s): raw %q is not JSON", tc.prefix, raw)
			}
			got = append(got, key)
			return nil
		})
		if err != nil {
			t.Fatalf("ListRecords(%s): %v", tc.prefix, err)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("ListRecords(%s) = %v, want %v", tc.prefix, got, tc.want)
		}
	}

	// The callback's error stops the walk and comes back as is.
	stop := errors.New("stop")
	n := 0
	if err := s.ListRecords("disk/", func(string, []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("ListRecords with failing callback: err %v after %d calls; want stop after 1", err, n)
	}

	if err := s.DeleteRecord("disk/2"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRecord("disk/never"); err != nil {
		t.Errorf("DeleteRecord of an absent key: %v", err)
	}
	var r testRecord
	if err := s.GetRecord("disk/2", &r); !errors.Is(err, block.ErrNotFound) {
		t.Errorf("GetRecord after delete: %v, want block.ErrNotFound", err)
	}
}

func TestUpdateAtomic(t *testing.T) {
	s := openTest(t, "")
	if err := s.PutRecord("a", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(map[string]any{"b": 2, "c": 3}, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	var keys []string
	s.ListRecords("", func(k string, _ []byte) error { keys = append(keys, k); return nil })
	if strings.Join(keys, ",") != "b,c" {
		t.Errorf("after Update: keys %v, want [b c]", keys)
	}
	// A value that cannot be encoded fails the whole update.
	if err := s.Update(map[string]any{"d": 4, "e": make(chan int)}, []string{"b"}); err == nil {
		t.Fatal("Update with an unencodable value succeeded")
	}
	var v int
	if err := s.GetRecord("b", &v); err != nil || v != 2 {
		t.Errorf("b after failed update = %d, %v; want 2", v, err)
	}
	if err := s.GetRecord("d", &v); !errors.Is(err, block.ErrNotFound) {
		t.Errorf("d after failed update: %v, want block.ErrNotFound", err)
	}
	if err := s.Update(map[string]any{"x": 1}, []string{"x"}); err == nil {
		t.Error("Update putting and deleting one key succeeded")
	}
}

func TestNextIDMonotoneAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	var last uint64
	for i := 0; i < 5; i++ {
		id, err := s.NextID("disk")
		if err != nil {
			t.Fatal(err)
		}
		if id <= last {
			t.Fatalf("NextID = %d after %d", id, last)
		}
		last = id
	}
	if other, err := s.NextID("vault"); err != nil || other != 1 {
		t.Errorf("first id of another sequence = %d, %v; want 1", other, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	id, err := s.NextID("disk")
	if err != nil || id != last+1 {
		t.Errorf("NextID after reopen = %d, %v; want %d", id, err, last+1)
	}
}

func TestNextIDConcurrentUnique(t *testing.T) {
	s := openTest(t, "")
	const workers, each = 4, 50
	ids := make(chan uint64, workers*each)
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			for i := 0; i < each; i++ {
				id, err := s.NextID("disk")
				if err != nil {
					errs <- err
					return
				}
				ids <- id
			}
			errs <- nil
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(ids)
	seen := map[uint64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("id %d handed out twice", id)
		}
		seen[id] = true
	}
	if len(seen) != workers*each {
		t.Errorf("%d ids, want %d", len(seen), workers*each)
	}
}

func TestOpenLockedDirectory(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir)
	s2, err := Open(Options{Dir: dir})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked directory succeeded")
	}
	if !strings.Contains(err.Error(), "another cairnd") || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the directory and suggest another cairnd", err)
	}
}

func TestCloseTwice(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestInMemory(t *testing.T) {
	s, err := Open(Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put(t, s, 1, 1, Entry{0, textBlock(1, testBlock)})
	wantRead(t, s, 1, 0, 1, textBlock(1, testBlock))
	if err := s.PutRecord("k", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Errorf("Sync in memory: %v", err)
	}
	if err := s.RunGC(); err != nil {
		t.Errorf("RunGC in memory: %v", err)
	}
}
