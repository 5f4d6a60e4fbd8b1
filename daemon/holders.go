package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
)

// Holders: who has a disk's exports open, and how a delete or a rollback
// makes them let go. Every NBD connection, FUSE file and kernel attachment
// that opened an export (exports.go) is a holder of its disk until it
// releases; a release wakes whoever waits for the disk's holders to go, so
// nobody polls for it.

// holderKind is what kind of client holds an export, which says how a
// forced delete or rollback makes it let go.
type holderKind int

const (
	nbdClient    holderKind = iota // an NBD connection: disconnected
	fuseFile                       // a FUSE file: closed only by whoever has it open
	kernelDevice                   // a kernel attachment, /dev/nbdN (attach.go): detached
)

// holder is what an open handle of an export is counted under.
type holder struct {
	snap string // "" for the live disk
	kind holderKind
}

// forceTimeout bounds how long a forced delete or rollback waits for
// clients to go.
const forceTimeout = 30 * time.Second

// negotiatingRetry is how soon NBD clients still negotiating are asked
// again to disconnect (see waitReleased).
const negotiatingRetry = 50 * time.Millisecond

// hold counts one more holder. Caller holds d.mu.
func (k *Disk) hold(h holder) {
	if k.holders == nil {
		k.holders = make(map[holder]int)
	}
	k.holders[h]++
}

// releaseFunc returns the release of holder h of k: it closes the view
// (before the count drops, so a snapshot whose holders are gone has no
// view open either), counts the holder out and wakes the waiters. Calls
// after the first do nothing.
func (d *Daemon) releaseFunc(k *Disk, h holder, view *cow.View) func() {
	released := false
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if released {
			return
		}
		released = true
		if view != nil {
			view.Close()
		}
		if k.holders[h]--; k.holders[h] == 0 {
			delete(k.holders, h)
		}
		if k.released != nil {
			close(k.released)
			k.released = nil
		}
	}
}

// nextRelease is closed at the next release of any of k's holders.
// Caller holds d.mu.
func (k *Disk) nextRelease() <-chan struct{} {
	if k.released == nil {
		k.released = make(chan struct{})
	}
	return k.released
}

// clients counts the open handles of the disk's exports that match (nil:
// all of them). Caller holds d.mu.
func (k *Disk) clients(match func(snap string) bool) int {
	n := 0
	for h, c := range k.holders {
		if match == nil || match(h.snap) {
			n += c
		}
	}
	return n
}

// holdersText says who holds the disk's exports that match (nil: all),
// for the messages that refuse to pull them away: "1 NBD client and 1
// kernel attachment (cairn disk attachments)". Caller holds d.mu.
func (k *Disk) holdersText(match func(snap string) bool) string {
	var n [3]int
	for h, c := range k.holders {
		if match == nil || match(h.snap) {
			n[h.kind] += c
		}
	}
	var parts []string
	for kind, what := range []string{"connected NBD client", "open FUSE file", "kernel attachment"} {
		switch {
		case n[kind] == 1:
			parts = append(parts, "1 "+what)
		case n[kind] > 1:
			parts = append(parts, fmt.Sprintf("%d %ss", n[kind], what))
		}
	}
	text := strings.Join(parts, " and ")
	if n[kernelDevice] > 0 {
		text += " (cairn disk attachments)"
	}
	return text
}

// Matchers of clients and waitReleased: which of a disk's exports.
func anyExport(string) bool       { return true }
func liveExport(snap string) bool { return snap == "" }

// onlySnapshot matches one snapshot's export.
func onlySnapshot(name string) func(string) bool {
	return func(snap string) bool { return snap == name }
}

// waitReleased waits until no handle of k's exports that match is open,
// or ctx ends (block.ErrInUse). With disconnect it detaches their kernel
// attachments and disconnects their NBD clients; FUSE files are waited
// for. Each turn is woken by a release,
// with one exception: a client still negotiating holds its export before
// the NBD server lists it under the export's name, so Disconnect cannot
// find it, and nothing tells when it is listed. While such clients
// remain, Disconnect is asked again every negotiatingRetry.
func (d *Daemon) waitReleased(ctx context.Context, k *Disk, match func(snap string) bool, disconnect bool) error {
	for {
		d.mu.Lock()
		total := k.clients(match)
		nbdHeld := make(map[string]int)
		for h, n := range k.holders {
			if match(h.snap) && h.kind == nbdClient {
				nbdHeld[h.snap] += n
			}
		}
		attached := d.attachmentsOf(k, match)
		released := k.nextRelease()
		d.mu.Unlock()
		if total == 0 {
			return nil
		}
		var retry <-chan time.Time // nil: woken by releases alone
		if disconnect {
			for _, a := range attached {
				d.forceDetach(ctx, a)
			}
			if d.disconnect(ctx, k, nbdHeld) > 0 {
				retry = time.After(negotiatingRetry)
			}
		}
		select {
		case <-released:
		case <-retry:
		case <-ctx.Done():
			return errorf(block.ErrInUse, "the clients of disk %s did not let go: %v", k.rec.Name, context.Cause(ctx))
		}
	}
}

// disconnect disconnects the NBD clients of k's exports, held counting
// the NBD holders of each by snapshot, and returns how many holders it
// could not find: clients still negotiating.
func (d *Daemon) disconnect(ctx context.Context, k *Disk, held map[string]int) (unlisted int) {
	for snap, n := range held {
		name := exportName{k.rec.Name, snap}.String()
		// Disconnect returns once the connections it found have ended,
		// and a connection releases its export before it ends.
		closed := d.nbd.Disconnect(ctx, name)
		if closed > 0 {
			d.log.Info("disconnected NBD clients", "export", name, "connections", closed)
		}
		unlisted += max(0, n-closed)
	}
	return unlisted
}
