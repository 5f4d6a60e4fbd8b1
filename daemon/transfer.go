package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/block"
	"github.com/cairn-storage/cairn/daemon/api"
)

// Transfers (docs/export.md): exports of disks and images to image files,
// imports of image files into new disks. The client (cairn) converts with
// qemu-img, as the user who ran it, against the NBD export the transfer
// names, so cairnd never opens a path a client names; cairnd owns the
// task and what the transfer made. The client reports progress through
// the task (which renews its lease) and finishes it; a transfer whose
// client stops reporting for the lease ends failed, and cairnd cleans up
// (deletes the snapshot taken for an export, the disks of an import).
// Transfers a stop of cairnd interrupted are cleaned up at the next start
// (abandonTransfer).

// DefaultTransferLease is how long a transfer waits for its client's next
// report before it ends failed.
const DefaultTransferLease = 60 * time.Second

// transferList is the running transfers by task id; its own lock, taken
// under nothing else.
type transferList struct {
	mu   sync.Mutex
	byID map[string]*transfer // guarded by mu
}

// transfer is one running transfer's mailbox from its client.
type transfer struct {
	reports chan api.TransferProgress // the newest report (capacity 1)
	finish  chan string               // the client's end: "" success, else its error
}

func (l *transferList) add(id string, t *transfer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byID == nil {
		l.byID = map[string]*transfer{}
	}
	l.byID[id] = t
}

func (l *transferList) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, id)
}

func (l *transferList) get(id string) *transfer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byID[id]
}

// transferWork is what one kind of transfer does around its client's
// work: setup (given the task's id) makes what the client reads or writes
// and answers the client; cleanup runs when the transfer ends (failed
// says whether it failed, was cancelled or its lease ran out) and its
// error fails the transfer.
type transferWork struct {
	setup   func(ctx context.Context, id string) (api.Transfer, error)
	cleanup func(ctx context.Context, failed bool) error
}

// startTransfer starts a transfer task and waits for its setup, whose
// answer it returns. A setup that fails fails the task and the request.
func (d *Daemon) startTransfer(spec taskSpec, work transferWork) (api.Transfer, error) {
	spec.cancellable = true
	tr := &transfer{reports: make(chan api.TransferProgress, 1), finish: make(chan string, 1)}
	ready := make(chan string, 1)
	type answer struct {
		out api.Transfer
		err error
	}
	answered := make(chan answer, 1)
	task, err := d.tasks.start(d.bg, spec, func(ctx context.Context, progress progressFunc) (any, error) {
		id := <-ready
		defer d.transfers.remove(id)
		out, err := work.setup(ctx, id)
		answered <- answer{out, err}
		if err != nil {
			return nil, err
		}
		err = d.followTransfer(ctx, tr, progress)
		if d.bg.Err() != nil {
			return nil, err // cairnd stops: the next start cleans up (abandonTransfer)
		}
		if cerr := work.cleanup(context.Background(), err != nil); cerr != nil {
			d.log.Warn("transfer cleanup failed", "task", id, "err", cerr)
			err = errors.Join(err, cerr)
		}
		return nil, err
	})
	if err != nil {
		return api.Transfer{}, err
	}
	d.transfers.add(task.ID, tr)
	ready <- task.ID
	a := <-answered
	if a.err != nil {
		return api.Transfer{}, a.err
	}
	out := a.out
	if out.Task, err = d.tasks.get(task.ID); err != nil {
		out.Task = task
	}
	out.NBDSocket = d.nbdListener.Addr().String()
	out.LeaseSeconds = d.transferLease().Seconds()
	return out, nil
}

func (d *Daemon) transferLease() time.Duration {
	if d.cfg.TransferLease > 0 {
		return d.cfg.TransferLease
	}
	return DefaultTransferLease
}

// followTransfer passes the client's reports on as the task's progress
// until the client finishes, the lease runs out or ctx ends (cancel).
func (d *Daemon) followTransfer(ctx context.Context, tr *transfer, progress progressFunc) error {
	lease := d.transferLease()
	timer := time.NewTimer(lease)
	defer timer.Stop()
	for {
		select {
		case p := <-tr.reports:
			progress(p.DoneBytes, p.TotalBytes)
			timer.Reset(lease)
		case e := <-tr.finish:
			if e == "" {
				return nil
			}
			return errors.New(e)
		case <-timer.C:
			return fmt.Errorf("the client doing the transfer (cairn) sent no progress for %v: it was stopped or lost cairnd; what the transfer made was removed, run it again", lease)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// transferOf finds a running transfer by its task's id, or says why
// there is none.
func (d *Daemon) transferOf(id string) (*transfer, error) {
	if tr := d.transfers.get(id); tr != nil {
		return tr, nil
	}
	t, err := d.tasks.get(id)
	switch {
	case err != nil:
		return nil, err
	case t.Kind != api.TaskExport && t.Kind != api.TaskImageExport && t.Kind != api.TaskImport:
		return nil, errorf(block.ErrInvalid, "task %s is a %s task: only transfers (export, image-export, import) take progress from their client", id, t.Kind)
	case t.Ended():
		return nil, errorf(block.ErrFailed, "task %s has already ended (%s): %s", id, t.State, t.Error)
	}
	return nil, errorf(block.ErrFailed, "task %s is still setting up; report again", id)
}

// ReportProgress records a transfer's progress, renewing its lease.
func (d *Daemon) ReportProgress(ctx context.Context, id string, p api.TransferProgress) (api.Task, error) {
	tr, err := d.transferOf(id)
	if err != nil {
		return api.Task{}, err
	}
	if p.TotalBytes > 0 && p.DoneBytes > p.TotalBytes {
		return api.Task{}, invalidField("done_bytes", "done_bytes %d is more than total_bytes %d", p.DoneBytes, p.TotalBytes)
	}
	select { // keep only the newest report
	case <-tr.reports:
	default:
	}
	select {
	case tr.reports <- p:
	default:
	}
	return d.tasks.get(id)
}

// FinishTransfer ends a transfer as its client says and returns the task
// once it has ended (cleanup done).
func (d *Daemon) FinishTransfer(ctx context.Context, id string, req api.FinishTransfer) (api.Task, error) {
	if len(req.Error) > 4096 {
		req.Error = req.Error[:4096]
	}
	tr, err := d.transferOf(id)
	if err != nil {
		return api.Task{}, err
	}
	select {
	case tr.finish <- req.Error:
	default:
		return api.Task{}, errorf(block.ErrInUse, "task %s is already finishing", id)
	}
	return d.tasks.waitEnded(ctx, id)
}
