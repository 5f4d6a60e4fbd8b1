package cow

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/bitmap"
	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/store"
)

const stripeCount = 1024

// chain is the snapshot state of a Volume (the lock order is in doc.go).
type chain struct {
	st        *store.Store // nil: no snapshots
	storeSync *groupSync   // the store's Sync, batched

	sealMu sync.Mutex // serialises create, delete, rollback and grow
	passMu sync.Mutex // serialises passing pending blocks on (fail.go)
	recMu  sync.Mutex // serialises writing snapshot records (persistRecord)

	mu      sync.Mutex
	snaps   []*snap // the chain, oldest first: copying, ready and failed snapshots (guarded by mu)
	nextSeq uint64  // guarded by mu
	epoch   uint64  // the current epoch (guarded by mu)
	// changed is closed and replaced whenever a snapshot changes state
	// (guarded by mu): WaitReady waits on it.
	changed chan struct{}

	// copying lists the snapshots that still have pending blocks. The write
	// path reads it without locks; it is replaced (never mutated) under mu.
	copying atomic.Pointer[[]*snap]

	stripes [stripeCount]sync.Mutex // per-block locks (doc.go, lock 5)

	stopCtx context.Context // ends when the volume closes
	stop    context.CancelFunc
	workers sync.WaitGroup // copy-out workers

	// unrecorded holds failed snapshots whose record could not be
	// written yet (fail.go, recordFailure); recording is set while
	// retryRecords runs (both guarded by mu). recorder is done when it
	// has returned.
	unrecorded map[*snap]bool
	recording  bool
	recorder   sync.WaitGroup
	// marks names failed snapshots whose failure is not in the store yet
	// (failmark.go); nil until recovery has opened it.
	marks *failMarks
}

// snap is one snapshot in memory.
type snap struct {
	rec     snapRecord     // guarded by chain.mu
	pending *bitmap.Bitmap // blocks whose version is not yet stored; empty when ready
	total   uint64         // pending blocks at seal plus those passed on since (for progress; guarded by chain.mu)
	// incoming counts passes bringing this snapshot blocks (fail.go): it
	// does not turn ready while one is under way (guarded by chain.mu).
	incoming int
	views    atomic.Int32 // open Views

	working bool               // a copy-out worker runs (guarded by chain.mu)
	cancel  context.CancelFunc // stops the worker (guarded by chain.mu)
	done    chan struct{}      // closed when the worker ends (guarded by chain.mu)

	// drained is closed once the writes of the epoch this snapshot sealed
	// have all finished: nothing reads its pending blocks before.
	drained <-chan struct{}
	// committed: the record is durable (guarded by chain.mu); repersist:
	// pending grew before that and the record must be written again.
	committed, repersist bool
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newSnap(rec snapRecord) *snap { return &snap{rec: rec, drained: closedChan} }

func (s *snap) seq() uint64 { return s.rec.Seq }

// readable: the snapshot can be read. Caller holds mu.
func (s *snap) readable() bool { return Readable(s.rec.State) }

// notifyLocked wakes everyone waiting for a state change. Caller holds mu.
func (c *chain) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// addCopying and removeCopying replace the copying list. Caller holds mu.
func (v *Volume) addCopying(s *snap) {
	var list []*snap
	if old := v.copying.Load(); old != nil {
		list = append(list, *old...)
	}
	list = append(list, s)
	v.copying.Store(&list)
}

func (v *Volume) removeCopying(s *snap) {
	old := v.copying.Load()
	if old == nil {
		return
	}
	list := make([]*snap, 0, len(*old))
	for _, x := range *old {
		if x != s {
			list = append(list, x)
		}
	}
	v.copying.Store(&list)
	if len(list) == 0 {
		v.kickRetire()
	}
}

// copyingList is the snapshots with pending blocks (never nil).
func (v *Volume) copyingList() []*snap {
	if list := v.copying.Load(); list != nil {
		return *list
	}
	return nil
}

// find returns the snapshot named name. Takes mu.
func (v *Volume) find(name string) (*snap, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.findLocked(name)
}

func (v *Volume) findLocked(name string) (*snap, bool) {
	for _, s := range v.snaps {
		if s.rec.Name == name {
			return s, true
		}
	}
	return nil, false
}

// neighbours returns the snapshots before and after s in the chain (nil
// when none). Caller holds mu.
func (v *Volume) neighbours(s *snap) (prev, next *snap) {
	for i, x := range v.snaps {
		if x == s {
			if i > 0 {
				prev = v.snaps[i-1]
			}
			if i+1 < len(v.snaps) {
				next = v.snaps[i+1]
			}
		}
	}
	return prev, next
}

// successor is the first readable snapshot after s, or nil. Caller holds mu.
func (v *Volume) successor(s *snap) *snap {
	found := false
	for _, x := range v.snaps {
		if x == s {
			found = true
		} else if found && x.readable() {
			return x
		}
	}
	return nil
}

// dropLocked removes s from the chain. Caller holds mu.
func (v *Volume) dropLocked(s *snap) {
	for i, x := range v.snaps {
		if x == s {
			v.snaps = append(v.snaps[:i:i], v.snaps[i+1:]...)
			break
		}
	}
	v.notifyLocked()
}

// info describes s. Caller holds mu.
func (v *Volume) info(s *snap) SnapshotInfo {
	r := s.rec
	in := SnapshotInfo{Seq: r.Seq, Name: r.Name, Description: r.Description, Kind: r.Kind, Policy: r.Policy,
		RetentionDays: r.RetentionDays, Created: r.Created,
		State: r.State, Reason: r.Reason, Size: r.Size, CopyBytes: s.total * uint64(v.blockSize),
		Hold: time.Duration(r.HoldNS), Drain: time.Duration(r.DrainNS), Progress: 100}
	if r.State == StateCopying && s.total > 0 {
		left := s.pending.Count()
		in.Progress = 100 * float64(s.total-min(left, s.total)) / float64(s.total)
	}
	return in
}

// Snapshots lists the chain, oldest first.
func (v *Volume) Snapshots() []SnapshotInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]SnapshotInfo, 0, len(v.snaps))
	for _, s := range v.snaps {
		out = append(out, v.info(s))
	}
	return out
}

// Snapshot describes the snapshot named name.
func (v *Volume) Snapshot(name string) (SnapshotInfo, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.findLocked(name)
	if !ok {
		return SnapshotInfo{}, notFound(name)
	}
	return v.info(s), nil
}

// WaitReady blocks until the named snapshot is ready (nil) or failed or
// deleted (an error matching block.ErrFailed or block.ErrNotFound), or ctx
// ends.
func (v *Volume) WaitReady(ctx context.Context, name string) error {
	for {
		v.mu.Lock()
		s, ok := v.findLocked(name)
		var rec snapRecord
		if ok {
			rec = s.rec
		}
		changed := v.changed
		v.mu.Unlock()
		switch {
		case !ok:
			return notFound(name)
		case rec.State == StateReady:
			return nil
		case rec.State != StateCopying:
			return block.Errorf(block.ErrFailed, "snapshot %q is %s: %s", name, rec.State, rec.Reason)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
