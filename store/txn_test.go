package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// TestUpdateWaitsForTheFlush: a commit refused because a memtable flush
// blocks writes is tried again when the flush ends, not before.
func TestUpdateWaitsForTheFlush(t *testing.T) {
	s := openTest(t, "")
	end := s.flush.begin()
	ended := false // written before end(), read after the wait it ends
	refused := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		calls := 0
		done <- s.update(context.Background(), func(txn *badger.Txn) error {
			if calls++; calls == 1 {
				close(refused)
				return badger.ErrBlockedWrites
			}
			if !ended {
				return errors.New("tried again while the flush still ran")
			}
			return txn.Set([]byte("zkey"), nil)
		})
	}()
	<-refused
	ended = true
	end()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestUpdateBlockedWithoutFlush: a commit refused when no flush of the
// store's runs (it ended in between) is tried again at once, and gives up
// after maxConflictRetries.
func TestUpdateBlockedWithoutFlush(t *testing.T) {
	s := openTest(t, "")
	calls := 0
	start := time.Now()
	err := s.update(context.Background(), func(*badger.Txn) error { calls++; return badger.ErrBlockedWrites })
	if !errors.Is(err, badger.ErrBlockedWrites) || calls != maxConflictRetries+1 {
		t.Fatalf("update = %v after %d calls; want ErrBlockedWrites after %d", err, calls, maxConflictRetries+1)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the retries took %v: they waited for nothing", took)
	}
}
