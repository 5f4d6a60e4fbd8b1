package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// reserveFile is the reserve's name in the store's directory (Badger
// ignores files it does not know).
const reserveFile = "cairn.reserve"

// cushion is the free space the store's upkeep keeps on a full filesystem,
// taken from the reserve, for what Badger writes with write(2) rather
// than through a mapping: its lock file's pid at open, manifest records
// when tables change. refill leaves it.
const cushion = 1 << 20

// reserve is the store's slop space (ZFS's word): a file of allocated
// blocks on the store's filesystem that only the store's own upkeep may
// use. Badger writes its memtables, value logs and tables through
// memory-mapped files; the patched ristretto (third_party/ristretto)
// allocates their blocks before mapping them, and when the filesystem is
// full it asks the reserve (give, a z.RoomFunc) for room instead of
// failing. So a full filesystem — guests' sparse images filling it, say —
// still lets the store open, close, delete, merge and record failures,
// while chunk writes stopped long before (spaceGuard). When space comes
// back, refill takes it back up to its full size.
//
// Any Badger file may take from it: a failed table (a memtable's flush,
// a compaction) or value-log file is an error Badger retries, but a new
// memtable that cannot be made stops Badger for good, so spaceGuard
// refuses metadata writes once the free space and the reserve together
// would not hold one (logFloor).
type reserve struct {
	path   string
	target int64 // the full size

	mu   sync.Mutex // guards f, held and the file's size
	f    *os.File   // nil when the file could not be created
	held int64      // bytes allocated in the file
}

// openReserve opens (or creates) the reserve in dir and allocates it up
// to target bytes as far as free space allows; a full filesystem is no
// error: the reserve holds what it could get and refill tries again.
func openReserve(dir string, target int64) (*reserve, error) {
	r := &reserve{path: filepath.Join(dir, reserveFile), target: target}
	f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if !isNoSpace(err) {
			return nil, fmt.Errorf("store: open its reserve %s: %w", r.path, err)
		}
		return r, nil // no room for even an inode: refill creates it later
	}
	r.f = f
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: stat its reserve %s: %w", r.path, err)
	}
	// The size is what is allocated: refill and give keep it so.
	r.held = min(st.Size, st.Blocks*512)
	if r.held != st.Size {
		if err := f.Truncate(r.held); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: trim its reserve %s: %w", r.path, err)
		}
	}
	if r.held > target {
		r.shrinkLocked(r.held - target)
	}
	if _, err := r.refill(); err != nil && !isNoSpace(err) {
		r.close()
		return nil, err
	}
	return r, nil
}

// give is the z.RoomFunc of the store's directory: it frees up to need
// bytes of the reserve (from its end, at least 1 MiB at a time) for a
// Badger file that could not be allocated, and reports whether it freed
// anything.
func (r *reserve) give(path string, need int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(max(need, 1<<20), r.held)
	return n > 0 && r.shrinkLocked(n) == nil
}

// shrinkLocked frees n bytes of the reserve. Caller holds mu.
func (r *reserve) shrinkLocked(n int64) error {
	if r.f == nil {
		return errors.New("no reserve file")
	}
	if err := r.f.Truncate(r.held - n); err != nil {
		return err
	}
	r.held -= n
	return nil
}

// ensureCushion frees reserve space until the filesystem has cushion bytes
// free (for the store's own writes on a full filesystem).
func (r *reserve) ensureCushion(free uint64) {
	if r == nil || free >= cushion {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := min(int64(cushion-free), r.held); n > 0 {
		r.shrinkLocked(n)
	}
}

// refill allocates the reserve back up to its full size as far as the
// free space beyond the cushion allows, and returns how many bytes it is
// still short.
func (r *reserve) refill() (short int64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return r.target, err
		}
		r.f = f
	}
	for tries := 0; r.held < r.target; tries++ {
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(r.f.Fd()), &st); err != nil {
			return r.target - r.held, err
		}
		// Whole filesystem blocks, so the file's size is what it holds.
		bsize := int64(st.Bsize)
		free := int64(st.Bavail) * bsize
		n := min(r.target-r.held, free-cushion) / bsize * bsize
		if n <= 0 {
			return r.target - r.held, unix.ENOSPC
		}
		if err := unix.Fallocate(int(r.f.Fd()), 0, r.held, n); err != nil {
			// Another writer took the space between statfs and here:
			// give back what a partial allocation took and try again.
			r.f.Truncate(r.held)
			if !isNoSpace(err) {
				return r.target - r.held, fmt.Errorf("store: allocate its reserve %s: %w", r.path, err)
			}
			if tries >= 3 {
				return r.target - r.held, err
			}
			continue
		}
		r.held += n
	}
	return 0, nil
}

// state returns the bytes held and the full size.
func (r *reserve) state() (held, target int64) {
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held, r.target
}

func (r *reserve) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}
