package cow

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTrackerVersion: a change-tracking file of another version is
// refused naming both versions, and a file that is not a tracker (or of
// another block size) is refused as such.
func TestTrackerVersion(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "1.track")
	tr, err := createTracker(prefix, 3, 100, testBS)
	if err != nil {
		t.Fatal(err)
	}
	path := trackPath(prefix, 3)
	tr.close()
	if tr, err := openTracker(path, testBS); err != nil {
		t.Fatalf("reopen: %v", err)
	} else {
		tr.close()
	}
	if _, err := openTracker(path, 2*testBS); err == nil || !strings.Contains(err.Error(), "another block size") {
		t.Fatalf("another block size: %v", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var v [4]byte
	binary.LittleEndian.PutUint32(v[:], trackVersion+1)
	f.WriteAt(v[:], 8)
	f.Close()
	if _, err := openTracker(path, testBS); err == nil || !strings.Contains(err.Error(), "is version 2; this cairnd reads version 1") {
		t.Fatalf("a newer tracker version: %v", err)
	}
}
