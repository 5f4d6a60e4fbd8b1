// Package fstest holds helpers shared by the tests of fusefs and its
// subpackages: skipping without root or tools, running commands, and
// files with known checksums.
package fstest

import (
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RequireLoop skips the test unless it runs as root with loop devices and
// the named tools.
func RequireLoop(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices and mounts need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices in this kernel: %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/deps.sh installs it)", tool)
		}
	}
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// FileSum is the SHA-256 of the file at path.
func FileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	p, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(p)
}

// WriteFiles writes files of random content and the given sizes under
// dir/files (named f, ff, fff...) and returns their checksums by path
// relative to dir.
func WriteFiles(t testing.TB, dir string, seed uint64, sizes ...int) map[string][32]byte {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o755); err != nil {
		t.Fatal(err)
	}
	sums := map[string][32]byte{}
	r := rand.New(rand.NewPCG(seed, seed))
	for i, n := range sizes {
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		name := filepath.Join("files", strings.Repeat("f", i+1))
		if err := os.WriteFile(filepath.Join(dir, name), p, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(p)
	}
	return sums
}

// CheckFiles reports every file under dir whose checksum differs from sums.
func CheckFiles(t testing.TB, dir string, sums map[string][32]byte) {
	t.Helper()
	for name, sum := range sums {
		p, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if sha256.Sum256(p) != sum {
			t.Errorf("%s: checksum differs", name)
		}
	}
}
