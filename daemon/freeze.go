package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/qga"
	"github.com/cairn-storage/cairn/store"
)

// Freezing a guest's filesystems through its agent for a machine snapshot
// (docs/machines.md, "Consistency"). The freeze is bounded by
// freeze_timeout and the thaw is guaranteed on every path: errors and
// timeouts thaw at once; the task runs apart from the request, so a
// client that goes away changes nothing; and a record written (durably)
// before the freeze and deleted after the thaw makes the next start thaw a
// guest a killed cairnd left frozen.

// thawTimeout bounds one thaw attempt; thawRetry is how often a thaw that
// did not get through is tried again.
const (
	thawTimeout = 5 * time.Second
	thawRetry   = 5 * time.Second
)

// frozen is a guest cairnd has frozen (or tried to).
type frozen struct {
	d     *Daemon
	m     machineRecord
	c     *qga.Client
	start time.Time

	timer   *time.Timer // thaws at the freeze limit
	once    sync.Once
	mu      sync.Mutex
	held    time.Duration // from the freeze command to the thaw's answer (guarded by mu)
	late    bool          // the limit passed before the snapshot was sealed (guarded by mu)
	thawErr error         // why the first thaw did not get through; retried in the background (guarded by mu)
}

// freezeGuest freezes m's guest for a snapshot of the requested
// consistency. It returns the consistency that will be reached and, when
// less than asked, why. With nothing frozen f is nil; otherwise the caller
// must call f.thaw (the limit's timer thaws too, and marks f late).
func (d *Daemon) freezeGuest(ctx context.Context, m machineRecord, requested string) (f *frozen, consistency, reason string, err error) {
	if requested == api.ConsistencyCrash {
		return nil, api.ConsistencyCrash, "", nil
	}
	fail := func(why string, args ...any) (*frozen, string, string, error) {
		why = fmt.Sprintf(why, args...)
		if requested == api.ConsistencyFilesystem {
			return nil, "", "", errorf(block.ErrFailed, "machine %q: no filesystem-consistent snapshot: %s", m.Name, why)
		}
		d.log.Warn("machine snapshot falls back to crash-consistent", "machine", m.Name, "reason", why)
		return nil, api.ConsistencyCrash, why, nil
	}
	if m.AgentSocket == "" {
		return fail("the machine has no guest agent socket (cairn machine set %s --agent-socket PATH)", m.Name)
	}
	if err := d.checkAgentSocket(m.AgentSocket); err != nil {
		return fail("%v", err)
	}
	if !isSocket(m.AgentSocket) {
		return fail("the guest agent socket %s does not exist or is not a socket (is the VM running with its agent channel?)", m.AgentSocket)
	}
	limit := time.Duration(d.cfg.FreezeTimeout)
	fctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	c, err := qga.Dial(fctx, m.AgentSocket)
	if err != nil {
		return fail("the guest agent did not answer: %v", err)
	}
	if err := d.putDurable(store.FreezeKey(m.ID), freezeRecord{Machine: m.Name, AgentSocket: m.AgentSocket, Since: time.Now().UTC()}); err != nil {
		c.Close()
		return nil, "", "", fmt.Errorf("machine %q: record the freeze before it: %w", m.Name, err)
	}
	f = &frozen{d: d, m: m, c: c, start: time.Now()}
	n, err := c.Freeze(fctx)
	if err != nil {
		f.thaw() // part of the filesystems may be frozen
		if errors.Is(err, context.DeadlineExceeded) {
			return fail("the guest agent did not freeze the filesystems within freeze_timeout (%v); %s", limit, f.afterThaw())
		}
		return fail("the guest agent could not freeze the filesystems: %v; %s", err, f.afterThaw())
	}
	d.log.Info("guest filesystems frozen", "machine", m.Name, "filesystems", n)
	f.timer = time.AfterFunc(limit-time.Since(f.start), func() {
		f.mu.Lock()
		f.late = true
		f.mu.Unlock()
		f.thaw()
	})
	return f, api.ConsistencyFilesystem, "", nil
}

// thaw thaws the guest once (later calls wait for the first), over the
// freeze's connection or, if that is broken, a new one, and deletes the
// freeze record. If the guest cannot be thawed now, it keeps trying in
// the background (the record stays until it succeeds).
func (f *frozen) thaw() {
	f.once.Do(func() {
		if f.timer != nil {
			f.timer.Stop()
		}
		err := thawAgent(f.c, f.m.AgentSocket)
		f.c.Close()
		held := time.Since(f.start)
		f.mu.Lock()
		f.held, f.thawErr = held, err
		f.mu.Unlock()
		if err != nil {
			f.d.log.Error("could not thaw the guest's filesystems; retrying", "machine", f.m.Name, "err", err)
			go f.d.thawUntilDone(f.m.ID, freezeRecord{Machine: f.m.Name, AgentSocket: f.m.AgentSocket})
			return
		}
		f.d.log.Info("guest filesystems thawed", "machine", f.m.Name, "frozen", held)
		if err := f.d.deleteDurable(store.FreezeKey(f.m.ID)); err != nil {
			f.d.log.Warn("could not delete the freeze record; the next start thaws the guest again (harmless)", "machine", f.m.Name, "err", err)
		}
	})
}

// afterThaw says, for a reason, what became of the guest's filesystems
// after f.thaw.
func (f *frozen) afterThaw() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thawErr == nil {
		return "they were thawed"
	}
	return fmt.Sprintf("the thaw did not get through either (%v): cairnd retries it every %v until the agent answers", f.thawErr, thawRetry)
}

// result is how long the guest stayed frozen (until the thaw's answer)
// and whether the limit passed before the snapshot was sealed.
func (f *frozen) result() (held time.Duration, late bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, f.late
}

// thawAgent thaws through c, or through a new connection to sock if c
// cannot.
func thawAgent(c *qga.Client, sock string) error {
	ctx, cancel := context.WithTimeout(context.Background(), thawTimeout)
	defer cancel()
	if c != nil {
		if _, err := c.Thaw(ctx); err == nil {
			return nil
		}
	}
	c2, err := qga.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c2.Close()
	_, err = c2.Thaw(ctx)
	return err
}

// thawLeftovers thaws, in the background, every guest a cairnd that was
// killed left frozen (its freeze records).
func (d *Daemon) thawLeftovers() {
	err := d.store.ListRecords(store.FreezePrefix, func(key string, raw []byte) error {
		var rec freezeRecord
		if err := json.Unmarshal(raw, &rec); err != nil {
			d.log.Warn("unreadable freeze record; deleting it", "key", key, "err", err)
			return d.deleteDurable(key)
		}
		var id uint64
		if _, err := fmt.Sscanf(key, store.FreezePrefix+"%d", &id); err != nil {
			return nil
		}
		d.log.Warn("a guest was left frozen by a cairnd that stopped mid-snapshot; thawing it", "machine", rec.Machine, "since", rec.Since)
		go d.thawUntilDone(id, rec)
		return nil
	})
	if err != nil {
		d.log.Warn("listing freeze records", "err", err)
	}
}

// thawUntilDone thaws a recorded frozen guest, retrying until it succeeds
// or the daemon stops (the record then stays for the next start).
func (d *Daemon) thawUntilDone(id uint64, rec freezeRecord) {
	for attempt := 0; ; attempt++ {
		err := thawAgent(nil, rec.AgentSocket)
		if err == nil {
			d.log.Info("guest filesystems thawed", "machine", rec.Machine)
			if err := d.deleteDurable(store.FreezeKey(id)); err != nil {
				d.log.Warn("could not delete the freeze record", "machine", rec.Machine, "err", err)
			}
			return
		}
		if attempt%12 == 0 {
			d.log.Error("guest filesystems still frozen: the agent does not answer; retrying", "every", thawRetry, "machine", rec.Machine, "socket", rec.AgentSocket, "err", err)
		}
		select {
		case <-d.bg.Done():
			return
		case <-time.After(thawRetry):
		}
	}
}
