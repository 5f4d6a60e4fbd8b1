package fusefs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/fusefs"
)

// helperEnv makes the test binary a FUSE server instead of running tests:
// it mounts a tree with one disk on the directory the variable names,
// prints "ready" and serves until killed (the stale-mount test kills it).
const helperEnv = "CAIRN_FUSEFS_TEST_SERVE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(serve(dir))
	}
	os.Exit(m.Run())
}

func serve(dir string) int {
	backing, err := os.Create(filepath.Join(filepath.Dir(dir), "helper-backing.raw"))
	if err == nil {
		err = backing.Truncate(diskSize)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	src := newTestSource()
	src.addDisk("d", &testFile{f: backing, size: diskSize})
	if _, err := fusefs.Mount(dir, src, fusefs.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {}
}
