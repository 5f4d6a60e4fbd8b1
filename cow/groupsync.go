package cow

import "sync"

// groupSync batches durability barriers: every caller of Wait is answered
// by one sync call that started after Wait was entered, so N concurrent
// callers cost one fsync instead of N.
type groupSync struct {
	sync func() error

	mu        sync.Mutex
	cond      *sync.Cond
	requested uint64 // tickets handed out (guarded by mu)
	completed uint64 // highest ticket covered by a finished sync (guarded by mu)
	running   bool   // a sync is in progress (guarded by mu)
	err       error  // first sync error; sticky (guarded by mu)
}

func newGroupSync(fn func() error) *groupSync {
	g := &groupSync{sync: fn}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// Wait returns once a sync that began after the call has finished. Errors
// are sticky: after one sync fails every later Wait fails too, because on
// Linux a failed fsync may have dropped the dirty pages it was to write, so
// a later successful fsync proves nothing about them.
func (g *groupSync) Wait() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return g.err
	}
	g.requested++
	ticket := g.requested
	for g.completed < ticket {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		covers := g.requested
		g.mu.Unlock()
		err := g.sync()
		g.mu.Lock()
		g.running = false
		g.completed = covers
		if err != nil && g.err == nil {
			g.err = err
		}
		g.cond.Broadcast()
	}
	return g.err
}

// broken returns the sticky error, or nil.
func (g *groupSync) broken() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
