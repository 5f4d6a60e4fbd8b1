package main

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// fusePipeSize is the pipe size the FUSE view needs to splice a whole
// 1 MiB read (plus headers) from a live image to the kernel without a copy
// through cairnd (docs/fuse.md: 2.3 vs 4.5 GB/s sequential reads).
const fusePipeSize = 4 << 20

// raisePipeSize raises fs.pipe-max-size to fusePipeSize when cairnd runs
// as root with the FUSE view on and the limit is lower, then re-executes
// cairnd: go-fuse reads the limit once, before main. Under the systemd
// unit the limit comes from sysctl.d (scripts/install.sh) and /proc/sys is
// read-only here, so this does nothing. It never stops cairnd from starting.
func raisePipeSize(args []string) {
	const path = "/proc/sys/fs/pipe-max-size"
	if os.Geteuid() != 0 || os.Getenv("CAIRN_PIPE_RAISED") != "" || slices.Contains(args, "--fuse=false") || slices.Contains(args, "-fuse=false") {
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if cur, err := strconv.Atoi(strings.TrimSpace(string(raw))); err != nil || cur >= fusePipeSize {
		return
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(fusePipeSize)), 0); err != nil {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	os.Setenv("CAIRN_PIPE_RAISED", "1")
	syscall.Exec(exe, append([]string{os.Args[0]}, args...), os.Environ()) // returns only on failure
}
