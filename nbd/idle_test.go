package nbd_test

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

// With an idle timeout, a client that sends nothing for longer is
// disconnected; one that keeps sending requests is not.
func TestIdleTimeout(t *testing.T) {
	need(t, "qemu-io")
	f := newFixture(t)
	sock, _ := nbdtest.Serve(t, f.exports, nbd.Options{IdleTimeout: 500 * time.Millisecond})
	uri := nbdtest.URI(sock, "disk")
	busy := []string{"-f", "raw", "-r"}
	for i := 0; i < 10; i++ {
		busy = append(busy, "-c", "read 0 4k", "-c", "sleep 200")
	}
	if out, err := exec.Command("qemu-io", append(busy, uri)...).CombinedOutput(); err != nil || strings.Count(string(out), "read 4096/4096") != 10 {
		t.Fatalf("a client reading every 200 ms was cut off: %v\n%s", err, out)
	}
	out, _ := exec.Command("qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", "-c", "sleep 1500", "-c", "read 0 4k", uri).CombinedOutput()
	if strings.Count(string(out), "read 4096/4096") != 1 {
		t.Fatalf("a client idle for 1.5 s with a 500 ms idle timeout was not disconnected:\n%s", out)
	}
}
