package daemon

import (
	"fmt"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// spaceWatchInterval is how often cairnd looks at the store's filesystem
// to log a change of its state.
const spaceWatchInterval = 5 * time.Second

// spaceRank orders the states, best first.
var spaceRank = map[string]int{api.SpaceOK: 0, api.SpaceLow: 1, api.SpaceFull: 2, api.SpaceReserve: 3}

// StoreSpace reports the store's filesystem and reserve, its state and,
// unless it is ok, what to do.
func (d *Daemon) StoreSpace() api.StoreSpace {
	sp, err := d.store.Space()
	if err != nil {
		return api.StoreSpace{State: api.SpaceFull, Warning: fmt.Sprintf("cannot tell the store's free space: %v", err)}
	}
	out := api.StoreSpace{
		Dir: sp.Dir, FreeBytes: sp.Free, ReserveBytes: sp.Reserve, ReserveHeldBytes: sp.ReserveHeld,
		StopBelowBytes: sp.StopBelow, WarnBelowBytes: 2 * sp.StopBelow, State: api.SpaceOK,
	}
	if err := d.store.Broken(); err != nil {
		out.Broken = err.Error()
	}
	switch {
	case sp.ReserveHeld < sp.Reserve:
		out.State = api.SpaceReserve
		out.Warning = fmt.Sprintf("the store's filesystem (%s) is full and the store runs on its reserve (%d of %d MiB left): new snapshots are refused; %s",
			sp.Dir, sp.ReserveHeld>>20, sp.Reserve>>20, d.whatToFree())
	case sp.Free < sp.StopBelow:
		out.State = api.SpaceFull
		out.Warning = fmt.Sprintf("the store's filesystem (%s) has %d MiB free, less than the %d MiB snapshots need (store_reserve): new snapshots are refused and copying ones fail; %s",
			sp.Dir, sp.Free>>20, sp.StopBelow>>20, d.whatToFree())
	case sp.Free < out.WarnBelowBytes:
		out.State = api.SpaceLow
		out.Warning = fmt.Sprintf("the store's filesystem (%s) has %d MiB free: snapshots stop below %d MiB; %s",
			sp.Dir, sp.Free>>20, sp.StopBelow>>20, d.whatToFree())
	}
	return out
}

// whatToFree tells the operator what to delete: failed snapshots first
// (they hold what they stored and are of no use), then snapshots by what
// they hold, and the usual cause.
func (d *Daemon) whatToFree() string {
	var failed []string
	d.mu.Lock()
	for _, k := range d.sortedDisks() {
		if k.vol == nil {
			continue
		}
		for _, s := range k.vol.Snapshots() {
			if s.State == cow.StateFailed {
				failed = append(failed, k.rec.Name+"@"+s.Name)
			}
		}
	}
	d.mu.Unlock()
	var b strings.Builder
	if len(failed) > 0 {
		more := ""
		if len(failed) > 5 {
			failed, more = failed[:5], fmt.Sprintf(" and %d more", len(failed)-5)
		}
		fmt.Fprintf(&b, "delete the failed snapshots %s%s (cairn snapshot delete DISK NAME), then ", strings.Join(failed, ", "), more)
	}
	b.WriteString("delete snapshots you no longer need (cairn snapshot capacity shows what each frees) or free space on that filesystem; guests' live images growing are the usual cause: keep the store on a filesystem of its own")
	return b.String()
}

// watchSpace logs the store's space state when it changes (at once if it
// is not ok at start), until d.bg ends. Owned by the daemon: started by
// New, stopped by release's cancel of bg.
func (d *Daemon) watchSpace() {
	defer d.spaceDone.Done()
	last := api.SpaceOK
	t := time.NewTicker(spaceWatchInterval)
	defer t.Stop()
	for {
		sp := d.StoreSpace()
		if sp.State != last {
			args := []any{"state", sp.State, "free_mib", sp.FreeBytes >> 20, "reserve_held_mib", sp.ReserveHeldBytes >> 20,
				"reserve_mib", sp.ReserveBytes >> 20, "dir", sp.Dir}
			switch {
			case spaceRank[sp.State] > spaceRank[last]:
				d.log.Warn(sp.Warning, args...)
			case sp.State == api.SpaceOK:
				d.log.Info("the store's filesystem has room again", args...)
			default:
				d.log.Info("the store's filesystem has more room: "+sp.Warning, args...)
			}
			last = sp.State
		}
		select {
		case <-d.bg.Done():
			return
		case <-t.C:
		}
	}
}
