// Package clock is the time as cairnd's schedules see it: the host's wall
// clock and timers in production, a fake one that tests move by hand, so
// that schedules are tested without sleeping.
//
// A Clock has two kinds of time, as the host has: the wall clock (Now),
// which an administrator or NTP may step forwards or backwards, and the
// elapsed time timers count (After), which never jumps. Code that waits
// for a wall-clock instant must therefore wake now and then and look at
// Now again, never trust that a timer of d ended at Now()+d.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the wall time and wakes sleepers.
type Clock interface {
	// Now is the wall-clock time.
	Now() time.Time
	// After sends the time on the returned channel once d has elapsed
	// (d <= 0: at once). Elapsed time is not wall time: stepping the wall
	// clock neither hastens nor delays it.
	After(d time.Duration) <-chan time.Time
}

// Real is the host's clock.
type Real struct{}

var _ Clock = Real{}

// Now is time.Now.
func (Real) Now() time.Time { return time.Now() }

// After is time.After.
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Fake is a clock that moves only when told: Advance lets time elapse
// (wall clock and timers alike), Step moves the wall clock alone, as a
// host's clock step does. Safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	wall     time.Time     // guarded by mu
	elapsed  time.Duration // guarded by mu: time elapsed since NewFake
	sleepers []sleeper     // guarded by mu
	// waiting is closed and replaced whenever a sleeper arrives, so
	// BlockUntil can wait for one without polling.
	waiting chan struct{} // guarded by mu
}

type sleeper struct {
	at time.Duration // elapsed time at which it wakes
	ch chan time.Time
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock whose wall time is now.
func NewFake(now time.Time) *Fake {
	return &Fake{wall: now, waiting: make(chan struct{})}
}

// Now is the fake wall time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wall
}

// After wakes once d more has elapsed (Advance).
func (f *Fake) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- f.wall
		return ch
	}
	f.sleepers = append(f.sleepers, sleeper{at: f.elapsed + d, ch: ch})
	close(f.waiting)
	f.waiting = make(chan struct{})
	return ch
}

// Advance lets d elapse: the wall clock moves by d and every sleeper due
// by then wakes, in order.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.elapsed += d
	f.wall = f.wall.Add(d)
	sort.SliceStable(f.sleepers, func(i, j int) bool { return f.sleepers[i].at < f.sleepers[j].at })
	n := 0
	for _, s := range f.sleepers {
		if s.at <= f.elapsed {
			s.ch <- f.wall
			continue
		}
		f.sleepers[n] = s
		n++
	}
	f.sleepers = f.sleepers[:n]
}

// Step moves the wall clock by d (negative: backwards) and wakes no one,
// as stepping a host's clock does to its timers.
func (f *Fake) Step(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wall = f.wall.Add(d)
}

// Sleepers is how many After calls have not yet woken.
func (f *Fake) Sleepers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sleepers)
}

// BlockUntil returns once at least n After calls are waiting: the code
// under test has done its work and gone back to sleep.
func (f *Fake) BlockUntil(n int) {
	for {
		f.mu.Lock()
		if len(f.sleepers) >= n {
			f.mu.Unlock()
			return
		}
		ch := f.waiting
		f.mu.Unlock()
		<-ch
	}
}
