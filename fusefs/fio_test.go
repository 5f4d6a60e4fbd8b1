package fusefs_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/fusefs"
)

// TestFioVerify runs fio through disk.raw with crc32c verification: every
// block written is read back and checked, with direct and buffered I/O,
// one request at a time and many in parallel.
func TestFioVerify(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio is not installed (scripts/deps.sh installs it)")
	}
	for _, c := range []struct {
		name string
		opts fusefs.Options
		args []string
	}{
		{"direct 4k random libaio qd16", fusefs.Options{}, []string{"--direct=1", "--ioengine=libaio", "--iodepth=16", "--rw=randwrite", "--bs=4k"}},
		{"direct 1M sequential", fusefs.Options{}, []string{"--direct=1", "--ioengine=psync", "--rw=write", "--bs=1m"}},
		{"LiveCache (writable handles: direct) 64k random, 2 jobs", fusefs.Options{LiveCache: true}, []string{"--ioengine=psync", "--rw=randwrite", "--bs=64k", "--numjobs=2", "--size=16m", "--offset_increment=16m"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tree, _, _ := oneDisk(t, c.opts)
			args := append([]string{
				"--name=verify", "--filename=" + livePath(tree, "d"), "--size=32m",
				"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--fallocate=none",
				"--randrepeat=0", "--norandommap=0", "--group_reporting", "--verify_state_save=0",
			}, c.args...)
			out, err := exec.Command("fio", args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "err= 0") {
				t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}
