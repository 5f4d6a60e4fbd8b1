package daemon

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block"
)

func TestExportNames(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want exportName
		ok   bool
	}{
		{"vm1", exportName{"vm1", ""}, true},
		{"vm1@before", exportName{"vm1", "before"}, true},
		{"vm1@a@b", exportName{"vm1", "a@b"}, true}, // the first '@' separates; no such snapshot opens
		{"vm1@", exportName{}, false},
		{"@snap", exportName{}, false},
		{"", exportName{}, false},
		{".hidden", exportName{}, false},
		{"a/b@s", exportName{}, false},
	} {
		got, ok := parseExport(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseExport(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		if ok && got.String() != tc.in {
			t.Errorf("parseExport(%q).String() = %q", tc.in, got.String())
		}
	}
}

// TestWaitReleased: a wait for the holders of some of a disk's exports
// ends when the last of them releases (woken by the release: nothing polls
// without disconnect), not before, and regardless of other exports'
// holders; with none it ends at once; a holder that stays makes it fail
// with ErrInUse when its context ends.
func TestWaitReleased(t *testing.T) {
	d := &Daemon{}
	k := &Disk{rec: diskRecord{Name: "d"}}
	open := func(h holder) func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		k.hold(h)
		return d.releaseFunc(k, h, nil)
	}
	if err := d.waitReleased(context.Background(), k, anyExport, false); err != nil {
		t.Fatalf("wait with no holders: %v", err)
	}
	open(holder{}) // the live export's, never released
	releaseFUSE := open(holder{snap: "s", kind: fuseFile})
	releaseNBD := open(holder{snap: "s"})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.waitReleased(ctx, k, onlySnapshot("s"), false) }()
	// Once the waiter has counted the holders it has its release channel:
	// from then on only a release can wake it.
	for waiting := false; !waiting; runtime.Gosched() {
		d.mu.Lock()
		waiting = k.released != nil
		d.mu.Unlock()
	}
	releaseFUSE()
	releaseFUSE() // a second call does nothing
	select {
	case err := <-done:
		t.Fatalf("the wait ended with a holder left: %v", err)
	default:
	}
	releaseNBD()
	if err := <-done; err != nil {
		t.Fatalf("wait after the last release: %v", err)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.waitReleased(ended, k, liveExport, false); !errors.Is(err, block.ErrInUse) {
		t.Fatalf("wait with a holder and an ended context: %v, want ErrInUse", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, live := k.clients(nil), k.clients(liveExport); n != 1 || live != 1 {
		t.Errorf("%d holders, %d of the live export; want the live one alone", n, live)
	}
}

// TestHoldersText: the refusals name every kind of holder, counted, and
// point at the attachments' list when there are some.
func TestHoldersText(t *testing.T) {
	k := &Disk{}
	for _, h := range []holder{{kind: nbdClient}, {kind: nbdClient}, {snap: "s", kind: kernelDevice}, {snap: "s", kind: fuseFile}} {
		k.hold(h)
	}
	for _, c := range []struct {
		match func(string) bool
		want  string
	}{
		{nil, "2 connected NBD clients and 1 open FUSE file and 1 kernel attachment (cairn disk attachments)"},
		{liveExport, "2 connected NBD clients"},
		{onlySnapshot("s"), "1 open FUSE file and 1 kernel attachment (cairn disk attachments)"},
		{onlySnapshot("t"), ""},
	} {
		if got := k.holdersText(c.match); got != c.want {
			t.Errorf("holdersText = %q, want %q", got, c.want)
		}
	}
}
