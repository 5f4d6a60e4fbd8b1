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
	image := filepath.Join(filepath.Dir(dir), "helper-backing.raw")
	err := os.WriteFile(image, nil, 0o600)
	if err == nil {
		err = os.Truncate(image, diskSize)
	}
	var backing *testFile
	if err == nil {
		backing, err = openTestFile(image)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	src := newTestSource()
	src.addDisk("d", backing)
	if _, err := fusefs.Mount(dir, src, fusefs.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {}
}
