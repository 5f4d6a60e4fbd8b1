package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/store"
)

// Capacity over time (docs/snapshots.md, "Capacity history"): every
// capacity_interval (hourly by default, on the interval's boundaries of
// the clock) one sample per disk's chain, per machine and for the whole
// store goes into the store (store.CapacityKey), kept capacity_history
// (90 days by default). A sample missed while cairnd was down is not made
// up; one is taken at start when the current interval has none.
//
// What a sample holds (api.CapacitySample):
//   - a disk: its snapshots; logical bytes, what they wrote (the sum of
//     their written_bytes, zeros included); unique bytes, the distinct
//     chunks its chain names; stored bytes, those chunks compressed; and
//     each snapshot's unique bytes.
//   - a machine: the sum of its disks' figures (chunks two of its disks
//     share are counted in each).
//   - the store: every snapshot; logical bytes (every reference counted),
//     unique and stored bytes of all chunks, and its files' size.

// capacitySampleVersion is the format of capacitySample; a sample of
// another version is skipped (with a warning), never misread.
const capacitySampleVersion = 1

// capacitySample is one sample as stored.
type capacitySample struct {
	Version      int                  `json:"version"`
	Time         time.Time            `json:"time"`
	Snapshots    int                  `json:"snapshots"`
	LogicalBytes uint64               `json:"logical_bytes"`
	UniqueBytes  uint64               `json:"unique_bytes"`
	StoredBytes  uint64               `json:"stored_bytes"`
	DiskBytes    uint64               `json:"disk_bytes,omitempty"` // the store only
	PerSnapshot  []api.SnapshotUnique `json:"per_snapshot,omitempty"`
}

// Sample kinds (store.CapacityPrefix).
const capacityStore = "store"

// capacityHistory is the sampler's state.
type capacityHistory struct {
	mu         sync.Mutex
	last       time.Time      // guarded by mu: the last sample's time
	stats      api.StoreStats // guarded by mu: the store's figures then (metrics)
	statsAt    time.Time      // guarded by mu
	lastPruned time.Time      // guarded by mu
	warned     bool           // guarded by mu: an unreadable sample was reported
}

// storeStats is the store's figures at the last sample, and when.
func (h *capacityHistory) storeStats() (api.StoreStats, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stats, h.statsAt
}

// runCapacitySampler is the sampler's loop (started by Run, stopped with
// the daemon's background context). Like the policy scheduler it wakes
// at least every maxPolicySleep and goes by the wall clock's time then.
func (d *Daemon) runCapacitySampler(ctx context.Context) {
	interval := time.Duration(d.cfg.CapacityInterval)
	h := &d.capHist
	h.mu.Lock()
	h.last = d.lastCapacitySample()
	h.mu.Unlock()
	for {
		now := d.clock.Now()
		h.mu.Lock()
		last := h.last
		h.mu.Unlock()
		if last.IsZero() || now.Truncate(interval).After(last.Truncate(interval)) {
			d.sampleCapacity(ctx, now)
		}
		d.pruneCapacity(now)
		d.loopDone("capacity", now)
		wait := min(now.Truncate(interval).Add(interval).Sub(d.clock.Now()), maxPolicySleep)
		if wait <= 0 {
			continue // the clock passed the next boundary while this one sampled
		}
		select {
		case <-ctx.Done():
			return
		case <-d.clock.After(wait):
		}
	}
}

// lastCapacitySample is the time of the newest store sample (zero: none).
func (d *Daemon) lastCapacitySample() time.Time {
	var last time.Time
	d.store.ScanRecords(store.CapacityPrefix(capacityStore, 0), "", true, func(_ string, raw []byte) bool {
		var s capacitySample
		if json.Unmarshal(raw, &s) == nil && s.Version == capacitySampleVersion {
			last = s.Time
		}
		return false
	})
	return last
}

// sampleCapacity takes one sample of every disk, machine and the store.
func (d *Daemon) sampleCapacity(ctx context.Context, now time.Time) {
	at := now.UTC().Truncate(time.Second)
	puts := map[string]any{}
	byDisk := map[string]capacitySample{}
	for _, disk := range d.ListDisks() {
		if disk.State != api.DiskReady {
			continue
		}
		c, err := d.ChainCapacity(ctx, disk.Name)
		if err != nil {
			if !errors.Is(err, block.ErrNotFound) {
				d.log.Warn("capacity sample of a disk failed", "disk", disk.Name, "err", err)
			}
			continue
		}
		s := capacitySample{Version: capacitySampleVersion, Time: at, Snapshots: c.Snapshots, UniqueBytes: c.UncompressedBytes, StoredBytes: c.StoredBytes}
		for _, p := range c.PerSnapshot {
			s.LogicalBytes += p.WrittenBytes
			s.PerSnapshot = append(s.PerSnapshot, api.SnapshotUnique{Name: p.Name, UniqueBytes: p.UniqueBytes})
		}
		byDisk[disk.Name] = s
		puts[store.CapacityKey(api.TargetDisk, disk.ID, at.Unix())] = s
	}
	d.mu.Lock()
	for _, m := range d.machines {
		s := capacitySample{Version: capacitySampleVersion, Time: at}
		for _, disk := range m.rec.Disks {
			ds := byDisk[disk]
			s.Snapshots += ds.Snapshots
			s.LogicalBytes += ds.LogicalBytes
			s.UniqueBytes += ds.UniqueBytes
			s.StoredBytes += ds.StoredBytes
		}
		puts[store.CapacityKey(api.TargetMachine, m.rec.ID, at.Unix())] = s
	}
	d.mu.Unlock()
	st, statsErr := d.StoreStats(ctx)
	if statsErr != nil {
		d.log.Warn("capacity sample of the store failed", "err", statsErr)
	} else {
		s := capacitySample{Version: capacitySampleVersion, Time: at, LogicalBytes: st.LogicalBytes, UniqueBytes: st.UniqueBytes,
			StoredBytes: st.StoredBytes, DiskBytes: st.DiskBytes}
		for _, ds := range byDisk {
			s.Snapshots += ds.Snapshots
		}
		puts[store.CapacityKey(capacityStore, 0, at.Unix())] = s
	}
	if err := d.store.Update(puts, nil); err != nil {
		d.log.Warn("could not record capacity samples", "err", err)
		return
	}
	h := &d.capHist
	h.mu.Lock()
	h.last = at
	if statsErr == nil {
		h.stats, h.statsAt = st, at
	}
	h.mu.Unlock()
	d.log.Debug("capacity sampled", "disks", len(byDisk), "time", at)
}

// pruneCapacity deletes samples older than capacity_history, at most once
// a day.
func (d *Daemon) pruneCapacity(now time.Time) {
	h := &d.capHist
	h.mu.Lock()
	if now.Sub(h.lastPruned) < 24*time.Hour && !h.lastPruned.After(now) {
		h.mu.Unlock()
		return
	}
	h.lastPruned = now
	h.mu.Unlock()
	cutoff := now.Add(-time.Duration(d.cfg.CapacityHistory)).Unix()
	var old []string
	err := d.store.ScanRecords("capacity/", "", false, func(key string, _ []byte) bool {
		if t, err := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 10, 64); err == nil && t < cutoff {
			old = append(old, key)
		}
		return len(old) < 10000
	})
	if err == nil && len(old) > 0 {
		err = d.store.Update(nil, old)
	}
	if err != nil {
		d.log.Warn("could not prune the capacity history", "err", err)
	}
}

// CapacityHistory returns the samples of a disk (kind api.TargetDisk), a
// machine (api.TargetMachine) or the store ("store", name "") taken in
// [since, until] (zero: unbounded), oldest first.
func (d *Daemon) CapacityHistory(ctx context.Context, kind, name string, since, until time.Time) (api.CapacityHistory, error) {
	var id uint64
	d.mu.Lock()
	switch kind {
	case api.TargetDisk:
		k, err := d.lookup(name)
		if err != nil {
			d.mu.Unlock()
			return api.CapacityHistory{}, err
		}
		id = k.rec.ID
	case api.TargetMachine:
		m, err := d.lookupMachine(name)
		if err != nil {
			d.mu.Unlock()
			return api.CapacityHistory{}, err
		}
		id = m.rec.ID
	}
	d.mu.Unlock()
	out := api.CapacityHistory{Target: name, Kind: kind, Interval: int64(time.Duration(d.cfg.CapacityInterval) / time.Second), Samples: []api.CapacitySample{}}
	prefix := store.CapacityPrefix(kind, id)
	from := ""
	if !since.IsZero() {
		from = store.CapacityKey(kind, id, max(since.Unix(), 0))
	}
	err := d.store.ScanRecords(prefix, from, false, func(key string, raw []byte) bool {
		var s capacitySample
		err := json.Unmarshal(raw, &s)
		if err == nil && s.Version != capacitySampleVersion {
			err = fmt.Errorf("format version %d, this cairnd reads version %d", s.Version, capacitySampleVersion)
		}
		if err != nil {
			d.capHist.warnOnce(d, key, err)
			return true
		}
		if !until.IsZero() && s.Time.After(until) {
			return false
		}
		out.Samples = append(out.Samples, api.CapacitySample{Time: api.At(s.Time), Snapshots: s.Snapshots, LogicalBytes: s.LogicalBytes,
			UniqueBytes: s.UniqueBytes, StoredBytes: s.StoredBytes, PerSnapshot: s.PerSnapshot})
		return ctx.Err() == nil
	})
	if err == nil {
		err = ctx.Err()
	}
	return out, err
}

func (h *capacityHistory) warnOnce(d *Daemon, key string, err error) {
	h.mu.Lock()
	warn := !h.warned
	h.warned = true
	h.mu.Unlock()
	if warn {
		d.log.Warn("skipping capacity samples this cairnd cannot read", "key", key, "err", err)
	}
}
