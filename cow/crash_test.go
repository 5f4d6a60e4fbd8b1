package cow

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/store"
)

// The crash test runs a child process (this test binary, re-executed)
// that applies a deterministic stream of operations to a volume — writes,
// trims, zero-writes, flushes, snapshot create, delete and rollback — and
// records in a small file how many it completed. The parent kills it with
// SIGKILL at a random moment, recovers the volume, and checks against an
// oracle that replays the same stream: the live disk holds every completed
// operation (a kill -9 loses nothing that reached the page cache), every
// snapshot reads exactly as the disk did when it was taken, the store's
// references are exact, and a snapshot taken right after recovery equals
// the live disk (change tracking survived). CAIRN_CRASH_ROUNDS sets the
// number of kills (default 12; the long run uses 200).

const crashDiskBlocks = 16

type crashOp struct {
	kind   string // write trim zero flush snap delete rollback
	off, n int64
	seed   uint64
	name   string
}

// crashGen produces the operation stream; child and oracle share it.
type crashGen struct {
	rng   *rand.Rand
	names []string
	next  int
}

func (g *crashGen) op() crashOp {
	size := int64(crashDiskBlocks * testBS)
	switch r := g.rng.IntN(100); {
	case r < 8 && len(g.names) < 6:
		g.next++
		name := fmt.Sprintf("k%d-%d", g.rng.IntN(1<<20), g.next)
		g.names = append(g.names, name)
		return crashOp{kind: "snap", name: name}
	case r < 12 && len(g.names) > 0:
		i := g.rng.IntN(len(g.names))
		name := g.names[i]
		g.names = slices.Delete(g.names, i, i+1)
		return crashOp{kind: "delete", name: name}
	case r < 14 && len(g.names) > 0:
		return crashOp{kind: "rollback", name: g.names[g.rng.IntN(len(g.names))]}
	case r < 20:
		return crashOp{kind: "flush"}
	default:
		off := g.rng.Int64N(size - 1)
		n := min(g.rng.Int64N(2*testBS)+1, size-off)
		kind := "write"
		if r < 24 {
			kind = "trim"
		} else if r < 27 {
			kind = "zero"
		}
		return crashOp{kind: kind, off: off, n: n, seed: g.rng.Uint64()}
	}
}

func opData(op crashOp) []byte {
	p := make([]byte, op.n)
	r := rand.New(rand.NewPCG(op.seed, 1))
	var w [8]byte
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(p[i:], w[:])
	}
	return p
}

// crashModel is the oracle.
type crashModel struct {
	live  []byte
	snaps map[string][]byte
}

func (m *crashModel) apply(op crashOp) {
	switch op.kind {
	case "write":
		copy(m.live[op.off:], opData(op))
	case "trim", "zero":
		clear(m.live[op.off : op.off+op.n])
	case "snap":
		m.snaps[op.name] = bytes.Clone(m.live)
	case "delete":
		delete(m.snaps, op.name)
	case "rollback":
		copy(m.live, m.snaps[op.name])
	}
}

func applyToVolume(ctx context.Context, v *Volume, op crashOp) error {
	switch op.kind {
	case "write":
		return v.WriteAt(ctx, opData(op), op.off, false)
	case "trim":
		return v.Trim(ctx, op.off, op.n, false)
	case "zero":
		return v.Zero(ctx, op.off, op.n, 0)
	case "flush":
		return v.Flush(ctx)
	case "snap":
		_, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: op.name, Kind: "manual"})
		return err
	case "delete":
		_, err := v.DeleteSnapshot(ctx, op.name)
		return err
	case "rollback":
		return v.Rollback(ctx, op.name, nil)
	}
	return nil
}

// openCrashVolume opens the crash test's volume.
func openCrashVolume(dir string) (*store.Store, *Volume, error) {
	st, err := store.Open(store.Options{Dir: filepath.Join(dir, "store")})
	if err != nil {
		return nil, nil, err
	}
	v, err := Open(filepath.Join(dir, "live.raw"), Options{BlockSize: testBS, Store: st, DiskID: 1,
		TrackPrefix: filepath.Join(dir, "track")})
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return st, v, nil
}

// crashChild is the body of the child process.
func crashChild(dir string, seed uint64, names []string) {
	st, v, err := openCrashVolume(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	_ = st
	progress, err := os.OpenFile(filepath.Join(dir, "done"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		os.Exit(3)
	}
	g := &crashGen{rng: rand.New(rand.NewPCG(seed, 7)), names: names}
	ctx := context.Background()
	var buf [8]byte
	for i := uint64(1); ; i++ {
		if err := applyToVolume(ctx, v, g.op()); err != nil {
			fmt.Fprintln(os.Stderr, "child op:", err)
			os.Exit(4)
		}
		binary.LittleEndian.PutUint64(buf[:], i)
		progress.WriteAt(buf[:], 0) // the page cache survives kill -9
	}
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("CAIRN_GROUP_CRASH_CHILD"); dir != "" {
		groupCrashChild(dir)
		return
	}
	if dir := os.Getenv("CAIRN_CRASH_CHILD"); dir != "" {
		seed, _ := strconv.ParseUint(os.Getenv("CAIRN_CRASH_SEED"), 10, 64)
		var names []string
		if s := os.Getenv("CAIRN_CRASH_NAMES"); s != "" {
			names = splitNames(s)
		}
		crashChild(dir, seed, names)
		return
	}
	os.Exit(m.Run())
}

func splitNames(s string) []string {
	var out []string
	for _, n := range bytes.Split([]byte(s), []byte(",")) {
		out = append(out, string(n))
	}
	return out
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary; skipped in -short")
	}
	rounds := 12
	if s := os.Getenv("CAIRN_CRASH_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	dir := t.TempDir()
	size := int64(crashDiskBlocks * testBS)
	if err := os.WriteFile(filepath.Join(dir, "live.raw"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "live.raw"), size); err != nil {
		t.Fatal(err)
	}
	model := &crashModel{live: make([]byte, size), snaps: map[string][]byte{}}
	rng := rand.New(rand.NewPCG(42, 42))
	exe, _ := os.Executable()
	totalOps := 0
	for round := 0; round < rounds; round++ {
		seed := rng.Uint64()
		var names []string
		for n := range model.snaps {
			names = append(names, n)
		}
		slices.Sort(names)
		os.Remove(filepath.Join(dir, "done")) // a child killed before it starts must not count the last one's work
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "CAIRN_CRASH_CHILD="+dir, fmt.Sprint("CAIRN_CRASH_SEED=", seed),
			"CAIRN_CRASH_NAMES="+joinNames(names))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond) // a random moment to crash, not synchronisation
		cmd.Process.Kill()
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
			t.Fatalf("round %d: child ended before the kill (%v): %s", round, err, stderr.String())
		}
		raw, _ := os.ReadFile(filepath.Join(dir, "done"))
		var done uint64
		if len(raw) >= 8 {
			done = binary.LittleEndian.Uint64(raw)
		}
		totalOps += int(done)

		// Replay the completed operations; the next one may have been in flight.
		g := &crashGen{rng: rand.New(rand.NewPCG(seed, 7)), names: names}
		for i := uint64(0); i < done; i++ {
			model.apply(g.op())
		}
		inflight := g.op()
		after := &crashModel{live: bytes.Clone(model.live), snaps: map[string][]byte{}}
		for k, v := range model.snaps {
			after.snaps[k] = v
		}
		after.apply(inflight)

		st, v, err := openCrashVolume(dir)
		if err != nil {
			t.Fatalf("round %d: recover: %v", round, err)
		}
		checkCrashState(t, round, v, model, after, inflight)
		// Adopt what recovery shows (it was checked to be acceptable).
		model.live = readAll(t, v)
		model.snaps = map[string][]byte{}
		for _, in := range v.Snapshots() {
			if err := v.WaitReady(ctx, in.Name); err != nil {
				t.Fatalf("round %d: snapshot %s after recovery: %v", round, in.Name, err)
			}
			model.snaps[in.Name] = readView(t, v, in.Name)
		}
		rep, err := st.Verify(ctx, 0, nil)
		if err != nil || len(rep.Faults) > 0 {
			t.Fatalf("round %d: verify: %v %v", round, err, rep.Faults)
		}
		// Change tracking survived: a new snapshot equals the live disk.
		probe := fmt.Sprintf("probe-%d", round)
		if _, err := v.CreateSnapshot(ctx, SnapshotMeta{Name: probe}); err != nil {
			t.Fatal(err)
		}
		if got := readView(t, v, probe); !bytes.Equal(got, model.live) {
			t.Fatalf("round %d: snapshot after recovery differs from the live disk: change tracking lost blocks", round)
		}
		if _, err := v.DeleteSnapshot(ctx, probe); err != nil {
			t.Fatal(err)
		}
		v.Close()
		st.Close()
	}
	t.Logf("%d crashes, %d operations", rounds, totalOps)
}

func joinNames(names []string) string { return string(bytes.Join(toBytes(names), []byte(","))) }

func toBytes(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

func readAll(t *testing.T, v *Volume) []byte {
	t.Helper()
	buf := make([]byte, v.Size())
	if err := v.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

func readView(t *testing.T, v *Volume, name string) []byte {
	t.Helper()
	w, err := v.OpenView(name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	buf := make([]byte, w.Size())
	if err := w.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

// checkCrashState: the recovered volume must look like the state before
// or after the in-flight operation (per block for the live disk).
func checkCrashState(t *testing.T, round int, v *Volume, before, after *crashModel, inflight crashOp) {
	t.Helper()
	live := readAll(t, v)
	for b := 0; b < crashDiskBlocks; b++ {
		lo, hi := b*testBS, (b+1)*testBS
		if !bytes.Equal(live[lo:hi], before.live[lo:hi]) && !bytes.Equal(live[lo:hi], after.live[lo:hi]) {
			if inflight.kind != "rollback" && inflight.kind != "write" {
				t.Fatalf("round %d: live block %d lost completed writes (in flight: %s)", round, b, inflight.kind)
			}
			// A write or rollback in flight may be torn inside a block: accept any mix of the two versions.
			for i := lo; i < hi; i++ {
				if live[i] != before.live[i] && live[i] != after.live[i] {
					diff := 0
					for j := lo; j < hi; j++ {
						if live[j] != before.live[j] {
							diff++
						}
					}
					t.Fatalf("round %d: live block %d byte %d is neither the old nor the new content (in flight: %+v; %d bytes of the block differ from before; zero=%v)", round, b, i-lo, inflight, diff, isZero(live[lo:hi]))
				}
			}
		}
	}
	got := map[string]bool{}
	for _, in := range v.Snapshots() {
		got[in.Name] = true
		want, ok := before.snaps[in.Name]
		if !ok {
			want, ok = after.snaps[in.Name]
		}
		if !ok {
			t.Fatalf("round %d: unexpected snapshot %s after recovery", round, in.Name)
		}
		if err := v.WaitReady(context.Background(), in.Name); err != nil {
			t.Fatalf("round %d: snapshot %s: %v", round, in.Name, err)
		}
		if !bytes.Equal(readView(t, v, in.Name), want) {
			t.Fatalf("round %d: snapshot %s differs after recovery (in flight: %s %s)", round, in.Name, inflight.kind, inflight.name)
		}
	}
	for name := range before.snaps {
		if !got[name] && !(inflight.kind == "delete" && inflight.name == name) {
			t.Fatalf("round %d: snapshot %s lost in the crash", round, name)
		}
	}
}
