package clock

import (
	"testing"
	"time"
)

func TestFakeAdvanceWakesInOrder(t *testing.T) {
	start := time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	late, early := f.After(2*time.Minute), f.After(time.Minute)
	f.BlockUntil(2)
	f.Advance(59 * time.Second)
	select {
	case <-early:
		t.Fatal("woke before its time")
	default:
	}
	f.Advance(time.Second)
	if at := <-early; !at.Equal(start.Add(time.Minute)) {
		t.Fatalf("woke at %v, want %v", at, start.Add(time.Minute))
	}
	if f.Sleepers() != 1 {
		t.Fatalf("%d sleepers, want 1", f.Sleepers())
	}
	f.Advance(time.Hour)
	<-late
	if f.Sleepers() != 0 {
		t.Fatal("a woken sleeper is still counted")
	}
}

// TestFakeStepWakesNoOne: stepping the wall clock, either way, moves Now
// and leaves timers alone, as on a host.
func TestFakeStepWakesNoOne(t *testing.T) {
	start := time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	ch := f.After(time.Minute)
	f.Step(24 * time.Hour)
	if got := f.Now(); !got.Equal(start.Add(24 * time.Hour)) {
		t.Fatalf("Now %v after a step of a day", got)
	}
	select {
	case <-ch:
		t.Fatal("a wall-clock step woke a timer")
	default:
	}
	f.Step(-48 * time.Hour)
	f.Advance(time.Minute)
	if at := <-ch; !at.Equal(start.Add(-24*time.Hour + time.Minute)) {
		t.Fatalf("woke at %v", at)
	}
}

func TestFakeAfterZero(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	select {
	case <-f.After(0):
	default:
		t.Fatal("After(0) did not fire at once")
	}
}
