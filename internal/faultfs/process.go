package faultfs

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// childEnv carries "backing\ndir" to the child that serves the mount.
const childEnv = "CAIRN_FAULTFS_CHILD"

// FS is a fault-injecting filesystem mounted by a child process.
type FS struct {
	Dir     string // the mount point
	backing string
	cmd     *exec.Cmd

	mu  sync.Mutex // one command at a time
	in  io.WriteCloser
	out *bufio.Scanner
}

// Start mounts a filesystem on dir that passes through to backing, served
// by this program run again (its TestMain must call ChildMain first).
func Start(backing, dir string) (*FS, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+backing+"\n"+dir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	f := &FS{Dir: dir, backing: backing, cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	if _, err := f.reply(); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("faultfs on %s: %w", dir, err)
	}
	return f, nil
}

// reply reads the child's answer: "ok [N]" or "error MESSAGE".
func (f *FS) reply() (int, error) {
	if !f.out.Scan() {
		return 0, fmt.Errorf("the faultfs process ended: %v", f.out.Err())
	}
	line := f.out.Text()
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return 0, fmt.Errorf("%s", msg)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ok")))
	return n, nil
}

func (f *FS) do(cmd string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := fmt.Fprintln(f.in, cmd); err != nil {
		return 0, err
	}
	return f.reply()
}

// Fail arms r and returns the function that disarms it. It panics if the
// child cannot be told (a test then cannot go on anyway).
func (f *FS) Fail(r Rule) (disarm func()) {
	b, _ := json.Marshal(r)
	id, err := f.do("fail " + string(b))
	if err != nil {
		panic(fmt.Sprintf("faultfs: arm %+v: %v", r, err))
	}
	return func() {
		if _, err := f.do("clear " + strconv.Itoa(id)); err != nil {
			panic(fmt.Sprintf("faultfs: disarm %+v: %v", r, err))
		}
	}
}

// Hits is how many requests armed rules have failed so far.
func (f *FS) Hits() int {
	n, err := f.do("hits")
	if err != nil {
		panic(fmt.Sprintf("faultfs: hits: %v", err))
	}
	return n
}

// Backing is the path of a file in the backing directory (for tests that
// damage a file behind the filesystem's back).
func (f *FS) Backing(rel string) string { return filepath.Join(f.backing, rel) }

// Unmount unmounts the filesystem and waits for the child to end.
func (f *FS) Unmount() error {
	_, err := f.do("quit")
	f.in.Close()
	if werr := f.cmd.Wait(); err == nil {
		err = werr
	}
	return err
}

// ChildMain serves the filesystem and exits if this process is a child
// Start made; otherwise it returns at once. Call it first in TestMain.
func ChildMain() {
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	backing, dir, _ := strings.Cut(spec, "\n")
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	srv, err := mount(backing, dir)
	if err != nil {
		say("error %v", err)
		os.Exit(1)
	}
	say("ok")
	disarms := map[int]func(){}
	next := 0
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		verb, arg, _ := strings.Cut(in.Text(), " ")
		switch verb {
		case "fail":
			var r Rule
			if err := json.Unmarshal([]byte(arg), &r); err != nil {
				say("error %v", err)
				continue
			}
			next++
			disarms[next] = srv.fail(r)
			say("ok %d", next)
		case "clear":
			id, _ := strconv.Atoi(arg)
			if d := disarms[id]; d != nil {
				d()
				delete(disarms, id)
			}
			say("ok")
		case "hits":
			say("ok %d", srv.hitCount())
		case "quit":
			err := srv.unmount()
			if err != nil {
				say("error %v", err)
			} else {
				say("ok")
			}
			os.Exit(0)
		default:
			say("error unknown command %q", verb)
		}
	}
	srv.unmount() // the parent went away
	os.Exit(0)
}
