package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/cow"
	"github.com/cairn-storage/cairn/daemon/api"
)

// SnapshotNameRule is the rule every manual snapshot name follows (after
// Alibaba's: 2–128 characters, not starting with "auto", which automatic
// snapshots use, nor with a URL scheme).
const SnapshotNameRule = "2 to 128 characters from letters, digits and . _ - : +, starting with a letter or digit, " +
	"not starting with 'auto' (reserved for automatic snapshots) nor 'http://' or 'https://'"

func checkSnapshotName(name string, kind string) error {
	n := utf8.RuneCountInString(name)
	ok := n >= 2 && n <= 128 && utf8.ValidString(name)
	for i, r := range name {
		if !ok {
			break
		}
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r):
		case i > 0 && strings.ContainsRune("._-:+", r):
		default:
			ok = false
		}
	}
	lower := strings.ToLower(name)
	if ok && kind == api.SnapshotManual && strings.HasPrefix(lower, "auto") {
		ok = false
	}
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") {
		ok = false
	}
	if !ok {
		return invalidf("name %q: a snapshot name is %s", name, SnapshotNameRule)
	}
	return nil
}

// liveDisk returns an available disk. Caller holds d.mu.
func (d *Daemon) liveDisk(name string) (*Disk, error) {
	k, err := d.lookup(name)
	if err != nil {
		return nil, err
	}
	if k.vol == nil {
		return nil, errorf(block.ErrFailed, "disk %q is unavailable: %v", name, k.openErr)
	}
	if k.deleting {
		return nil, errorf(block.ErrFailed, "disk %q is being deleted", name)
	}
	return k, nil
}

// volume returns an available disk's volume.
func (d *Daemon) volume(name string) (*Disk, *cow.Volume, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := d.liveDisk(name)
	if err != nil {
		return nil, nil, err
	}
	return k, k.vol, nil
}

// CreateSnapshot takes a crash-consistent snapshot of a disk. It returns
// with the snapshot's record durable and the snapshot copying.
func (d *Daemon) CreateSnapshot(ctx context.Context, disk string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	return d.createSnapshot(ctx, disk, req, api.SnapshotManual)
}

func (d *Daemon) createSnapshot(ctx context.Context, disk string, req api.CreateSnapshotRequest, kind string) (api.Snapshot, error) {
	if err := checkSnapshotName(req.Name, kind); err != nil {
		return api.Snapshot{}, err
	}
	if err := checkDescription(req.Description); err != nil {
		return api.Snapshot{}, err
	}
	d.mu.Lock()
	err := d.checkChange()
	d.mu.Unlock()
	if err != nil {
		return api.Snapshot{}, err
	}
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.Snapshot{}, err
	}
	d.snapMu.Lock()
	defer d.snapMu.Unlock()
	if n := len(vol.Snapshots()); n >= d.cfg.SnapshotQuota {
		return api.Snapshot{}, errorf(block.ErrQuota, "disk %q already has %d snapshots, its quota (snapshot_quota = %d): delete snapshots it no longer needs (cairn snapshot delete %s NAME) to make room",
			disk, n, d.cfg.SnapshotQuota, disk)
	}
	info, err := vol.CreateSnapshot(ctx, cow.SnapshotMeta{Name: req.Name, Description: req.Description, Kind: kind})
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	d.log.Info("snapshot taken", "disk", disk, "snapshot", info.Name, "seq", info.Seq, "hold", info.Hold, "drain", info.Drain, "blocks", info.WrittenBytes/uint64(vol.BlockSize()))
	return d.snapToAPI(k, info, 0, 0), nil
}

// snapToAPI describes a snapshot.
func (d *Daemon) snapToAPI(k *Disk, in cow.SnapshotInfo, unique uint64, clients int) api.Snapshot {
	return api.Snapshot{
		Disk: k.rec.Name, Name: in.Name, Seq: in.Seq, Description: in.Description, Kind: in.Kind,
		Created: in.Created, State: in.State, Progress: in.Progress, Reason: in.Reason, Size: in.Size,
		WrittenBytes: in.WrittenBytes, UniqueBytes: unique, HoldMicros: float64(in.Hold) / float64(time.Microsecond),
		DrainMicros: float64(in.Drain) / float64(time.Microsecond),
		Export:      k.rec.Name + "@" + in.Name, Clients: clients,
	}
}

// snapClients counts NBD clients per export name.
func (d *Daemon) snapClients() map[string]int {
	out := map[string]int{}
	for _, c := range d.nbd.Connections() {
		out[c.Export]++
	}
	return out
}

// ListSnapshots lists a disk's chain, oldest first, with what deleting
// each would free.
func (d *Daemon) ListSnapshots(ctx context.Context, disk string) ([]api.Snapshot, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return nil, err
	}
	clients := d.snapClients()
	infos := vol.Snapshots()
	out := make([]api.Snapshot, 0, len(infos))
	for _, in := range infos {
		_, unique, err := vol.UniqueBytes(ctx, in.Name)
		if err != nil && !errors.Is(err, block.ErrNotFound) {
			return nil, err
		}
		out = append(out, d.snapToAPI(k, in, unique, clients[disk+"@"+in.Name]))
	}
	return out, nil
}

// GetSnapshot describes one snapshot.
func (d *Daemon) GetSnapshot(ctx context.Context, disk, snap string) (api.Snapshot, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.Snapshot{}, err
	}
	in, err := vol.Snapshot(snap)
	if err != nil {
		return api.Snapshot{}, fmt.Errorf("disk %q: %w", disk, err)
	}
	_, unique, err := vol.UniqueBytes(ctx, snap)
	if err != nil {
		return api.Snapshot{}, err
	}
	return d.snapToAPI(k, in, unique, d.snapClients()[disk+"@"+snap]), nil
}

// DeleteSnapshot deletes a snapshot (metadata only). With NBD clients
// reading it, it fails with block.ErrInUse unless force, which disconnects them.
func (d *Daemon) DeleteSnapshot(ctx context.Context, disk, snap string, force bool) (api.DeleteSnapshotResult, error) {
	_, vol, err := d.volume(disk)
	if err != nil {
		return api.DeleteSnapshotResult{}, err
	}
	export := disk + "@" + snap
	deadline := time.Now().Add(forceTimeout)
	for {
		freed, err := vol.DeleteSnapshot(ctx, snap)
		switch {
		case err == nil:
			d.log.Info("snapshot deleted", "disk", disk, "snapshot", snap, "freed", freed)
			if freed > 0 {
				d.kickGC()
			}
			return api.DeleteSnapshotResult{FreedBytes: freed}, nil
		case errors.Is(err, block.ErrInUse) && !force:
			return api.DeleteSnapshotResult{}, errorf(block.ErrInUse, "snapshot %s is being read (NBD export %s, or its file in the FUSE view): disconnect the clients, or delete with --force (force=true) to disconnect NBD clients; open FUSE files must be closed", export, export)
		case errors.Is(err, block.ErrInUse) && time.Now().Before(deadline):
			d.nbd.Disconnect(ctx, export)
			select {
			case <-ctx.Done():
				return api.DeleteSnapshotResult{}, ctx.Err()
			case <-time.After(50 * time.Millisecond): // clients release their views as their connections end
			}
		default:
			return api.DeleteSnapshotResult{}, fmt.Errorf("disk %q: %w", disk, err)
		}
	}
}

// Rollback starts rolling a disk back to a snapshot as a task. Clients of
// the live disk must be gone (force disconnects them); no new ones connect
// until the rollback ends.
func (d *Daemon) Rollback(ctx context.Context, disk, snap string, force bool) (api.Task, error) {
	d.settleLiveClients(disk)
	d.mu.Lock()
	k, err := d.liveDisk(disk)
	if err == nil && k.rollingBack {
		err = errorf(block.ErrInUse, "disk %q is already being rolled back", disk)
	}
	if err == nil && k.liveConns > 0 && !force {
		err = errorf(block.ErrInUse, "disk %q has %d NBD client(s) on its live export: stop the VM or disconnect them, or roll back with --force (force=true) to disconnect them", disk, k.liveConns)
	}
	if err != nil {
		d.mu.Unlock()
		return api.Task{}, err
	}
	vol := k.vol
	k.rollingBack = true
	d.mu.Unlock()
	done := func() {
		d.mu.Lock()
		k.rollingBack = false
		d.mu.Unlock()
	}
	in, err := vol.Snapshot(snap)
	if err == nil && !in.Readable() {
		err = errorf(block.ErrFailed, "snapshot %s@%s is %s and cannot be rolled back to: %s", disk, snap, in.State, in.Reason)
	}
	if err == nil {
		err = d.disconnectLive(ctx, k)
	}
	if err != nil {
		done()
		return api.Task{}, fmt.Errorf("rollback %s to %s: %w", disk, snap, err)
	}
	d.log.Info("rollback started", "disk", disk, "snapshot", snap)
	return d.tasks.start(d.bg, api.TaskRollback, disk, snap, func(ctx context.Context, progress progressFunc) (any, error) {
		defer done()
		defer d.fuseChanged(disk)
		err := vol.Rollback(ctx, snap, progress)
		if err != nil {
			d.log.Error("rollback failed", "disk", disk, "snapshot", snap, "err", err)
		} else {
			d.log.Info("rollback done", "disk", disk, "snapshot", snap)
		}
		return nil, err
	}), nil
}

// disconnectLive disconnects the clients of a disk's live export and waits
// until they are gone.
func (d *Daemon) disconnectLive(ctx context.Context, k *Disk) error {
	ctx, cancel := context.WithTimeout(ctx, forceTimeout)
	defer cancel()
	for {
		d.mu.Lock()
		n := k.liveConns
		d.mu.Unlock()
		if n == 0 {
			return nil
		}
		d.nbd.Disconnect(ctx, k.rec.Name)
		select {
		case <-ctx.Done():
			return errorf(block.ErrInUse, "the NBD clients of disk %s did not disconnect: %v", k.rec.Name, context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Changes lists the byte ranges changed after snapshot from up to
// snapshot to ("" = the live disk).
func (d *Daemon) Changes(ctx context.Context, disk, from, to string) (api.Changes, error) {
	if from == "" {
		return api.Changes{}, invalidf("from is required: the snapshot to compare against")
	}
	_, vol, err := d.volume(disk)
	if err != nil {
		return api.Changes{}, err
	}
	bm, err := vol.Changes(ctx, from, to)
	if err != nil {
		if errors.Is(err, block.ErrNotFound) {
			return api.Changes{}, fmt.Errorf("disk %q: %w", disk, err)
		}
		return api.Changes{}, invalidf("%v", err)
	}
	size := vol.Size()
	if to != "" {
		if in, err := vol.Snapshot(to); err == nil {
			size = in.Size
		}
	}
	bs := int64(vol.BlockSize())
	out := api.Changes{Disk: disk, From: from, To: to, BlockSize: int(bs), Size: size, Extents: []api.Extent{}}
	for _, b := range bm.Members() {
		off := int64(b) * bs
		if off >= size {
			break
		}
		n := min(bs, size-off)
		if l := len(out.Extents); l > 0 && out.Extents[l-1].Offset+out.Extents[l-1].Length == off {
			out.Extents[l-1].Length += n
		} else {
			out.Extents = append(out.Extents, api.Extent{Offset: off, Length: n})
		}
		out.ChangedBytes += n
	}
	return out, nil
}

// ChainCapacity describes a disk's chain: snapshots, quota, stored bytes
// and what each snapshot alone holds.
func (d *Daemon) ChainCapacity(ctx context.Context, disk string) (api.ChainCapacity, error) {
	k, vol, err := d.volume(disk)
	if err != nil {
		return api.ChainCapacity{}, err
	}
	stored, entries, err := d.store.ChainBytes(ctx, k.rec.ID)
	if err != nil {
		return api.ChainCapacity{}, err
	}
	out := api.ChainCapacity{Disk: disk, Quota: d.cfg.SnapshotQuota, StoredBytes: stored, Entries: entries, PerSnapshot: []api.SnapshotCapacity{}}
	for _, in := range vol.Snapshots() {
		_, unique, err := vol.UniqueBytes(ctx, in.Name)
		if err != nil && !errors.Is(err, block.ErrNotFound) {
			return api.ChainCapacity{}, err
		}
		out.PerSnapshot = append(out.PerSnapshot, api.SnapshotCapacity{Name: in.Name, State: in.State, WrittenBytes: in.WrittenBytes, UniqueBytes: unique})
	}
	out.Snapshots = len(out.PerSnapshot)
	return out, nil
}

// Capacity describes every chain and the store.
func (d *Daemon) Capacity(ctx context.Context) (api.Capacity, error) {
	out := api.Capacity{Chains: []api.ChainCapacity{}}
	for _, disk := range d.ListDisks() {
		if disk.State != api.DiskReady {
			continue
		}
		c, err := d.ChainCapacity(ctx, disk.Name)
		if err != nil {
			if errors.Is(err, block.ErrNotFound) {
				continue // deleted meanwhile
			}
			return api.Capacity{}, err
		}
		out.Chains = append(out.Chains, c)
	}
	st, err := d.StoreStats(ctx)
	out.Store = st
	return out, err
}

// StoreStats describes the chunk store.
func (d *Daemon) StoreStats(ctx context.Context) (api.StoreStats, error) {
	s, err := d.store.Stats(ctx)
	if err != nil {
		return api.StoreStats{}, err
	}
	return api.StoreStats{Chunks: s.Chunks, LogicalBytes: s.LogicalBytes, UniqueBytes: s.UniqueBytes, StoredBytes: s.StoredBytes,
		ReclaimBytes: s.ReclaimBytes, DiskBytes: s.DiskBytes, DataEntries: s.DataEntries, ZeroEntries: s.ZeroEntries}, nil
}

// Verify starts a task that re-hashes every chunk (of one disk, or all)
// and checks every reference count.
func (d *Daemon) Verify(ctx context.Context, req api.VerifyRequest) (api.Task, error) {
	var id uint64
	if req.Disk != "" {
		k, _, err := d.volume(req.Disk)
		if err != nil {
			return api.Task{}, err
		}
		id = k.rec.ID
	}
	return d.tasks.start(d.bg, api.TaskVerify, req.Disk, "", func(ctx context.Context, progress progressFunc) (any, error) {
		rep, err := d.store.Verify(ctx, id, progress)
		res := api.VerifyResult{ChunksChecked: rep.ChunksChecked, EntriesChecked: rep.EntriesChecked, Faults: rep.Faults}
		if res.Faults == nil {
			res.Faults = []string{}
		}
		if err == nil && len(res.Faults) > 0 {
			d.log.Error("verify found faults", "disk", req.Disk, "faults", len(res.Faults), "first", res.Faults[0])
		}
		return res, err
	}), nil
}

// SnapshotsCopying counts the snapshots of every disk still copying out.
func (d *Daemon) SnapshotsCopying() int {
	d.mu.Lock()
	var vols []*cow.Volume
	for _, k := range d.disks {
		if k.vol != nil {
			vols = append(vols, k.vol)
		}
	}
	d.mu.Unlock()
	n := 0
	for _, v := range vols {
		for _, s := range v.Snapshots() {
			if s.State == cow.StateCopying {
				n++
			}
		}
	}
	return n
}

// kickGC gives freed chunks' space back to the filesystem soon, instead of
// at the store's next periodic GC: one collection at a time, in the
// background (the store's Close waits for it).
func (d *Daemon) kickGC() {
	if !d.gcRunning.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer d.gcRunning.Store(false)
		if err := d.store.RunGC(); err != nil {
			d.log.Warn("store garbage collection", "err", err)
		}
	}()
}

// settleLiveClients waits a moment for clients of a disk's live export
// that have just disconnected to be released (their handlers finish after
// the client sees the disconnect), so a rollback right after a VM stops is
// not refused for a connection that is already gone.
func (d *Daemon) settleLiveClients(disk string) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		k := d.disks[disk]
		busy := k != nil && k.liveConns > 0
		d.mu.Unlock()
		if !busy {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
