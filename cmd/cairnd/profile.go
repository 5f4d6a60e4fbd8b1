package main

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// startProfile writes a CPU profile of the whole run to the file named by
// CAIRND_CPUPROFILE, if set (for benchmarks: scripts/bench, docs/performance.md).
// The returned stop ends it.
func startProfile(stderr io.Writer) (stop func()) {
	path := os.Getenv("CAIRND_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "cairnd: CAIRND_CPUPROFILE: %v (no profile)\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
