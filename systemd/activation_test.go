package systemd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// activatedHelper marks the re-executed test binary that plays cairnd.
const activatedHelper = "CAIRN_ACTIVATION_HELPER"

// TestActivationHelper is not a test: it is the child process the tests
// below start with sockets passed the way systemd passes them. It prints
// "ok NAME..." or "error ...", then answers one connection on each socket
// (in name order) with the socket's name, proving the listener works.
func TestActivationHelper(t *testing.T) {
	if os.Getenv(activatedHelper) == "" {
		t.Skip("helper process for the activation tests")
	}
	listeners, err := Listeners("api", "nbd")
	if err != nil {
		fmt.Printf("error %v\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(0)
	}
	if v, ok := os.LookupEnv("LISTEN_FDS"); ok {
		fmt.Printf("error LISTEN_FDS=%s left for child processes\n", v)
		os.Exit(0)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for name := range listeners {
			if !yield(name) {
				return
			}
		}
	})
	fmt.Printf("ok %s\n", strings.Join(names, " "))
	for _, name := range names {
		conn, err := listeners[name].Accept()
		if err != nil {
			fmt.Printf("accept on %s: %v\n", name, err)
			os.Exit(1)
		}
		io.WriteString(conn, name)
		conn.Close()
	}
	os.Exit(0)
}

// unixListenerFile returns a listening unix socket at dir/name as a file
// that can be passed to a child process.
func unixListenerFile(t *testing.T, dir, name string) *os.File {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// askName connects to the socket at path and returns what the helper says.
func askName(t *testing.T, path string) string {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	defer conn.Close()
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read from %s: %v", path, err)
	}
	return string(b)
}

func TestListenersFromPassedFds(t *testing.T) {
	dir := t.TempDir()
	api := unixListenerFile(t, dir, "api.sock")
	nbd := unixListenerFile(t, dir, "nbd.sock")
	datagram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "dgram.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer datagram.Close()
	dgramFile, err := datagram.File()
	if err != nil {
		t.Fatal(err)
	}
	defer dgramFile.Close()
	plain, err := os.CreateTemp(dir, "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	tests := []struct {
		name  string
		files []*os.File
		names string // LISTEN_FDNAMES; "-" leaves it unset
		want  string // the helper's first line starts with this
	}{
		{"both sockets", []*os.File{api, nbd}, "api:nbd", "ok api nbd"},
		{"api only", []*os.File{api}, "api", "ok api"},
		{"not activated", nil, "-", "ok "},
		{"unnamed", []*os.File{api}, "-", `error socket activation: fd 3 ("LISTEN_FD_3"): unexpected name: set FileDescriptorName=`},
		{"unknown name", []*os.File{api, nbd}, "api:web", `error socket activation: fd 4 ("web"): unexpected name`},
		{"name twice", []*os.File{api, nbd}, "api:api", `error socket activation: fd 4: name "api" passed twice`},
		{"datagram socket", []*os.File{dgramFile}, "api", "error socket activation: fd 3 (\"api\"): not a listening stream socket"},
		{"not a socket", []*os.File{plain}, "nbd", "error socket activation: fd 3 (\"nbd\"): not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// systemd sets LISTEN_PID to the pid it execs; a shell that
			// execs the helper knows its own pid.
			cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$; exec "$@"`, "sh", os.Args[0], "-test.run=^TestActivationHelper$")
			cmd.Env = append(os.Environ(), activatedHelper+"=1", fmt.Sprintf("LISTEN_FDS=%d", len(tt.files)))
			if tt.names != "-" {
				cmd.Env = append(cmd.Env, "LISTEN_FDNAMES="+tt.names)
			}
			cmd.ExtraFiles = tt.files
			out := startHelper(t, cmd)
			if line := firstLine(t, out); !strings.HasPrefix(line, tt.want) {
				t.Fatalf("helper said %q, want it to start with %q", line, tt.want)
			}
			if strings.HasPrefix(tt.want, "ok ") {
				for _, name := range strings.Fields(strings.TrimPrefix(tt.want, "ok ")) {
					if got := askName(t, filepath.Join(dir, name+".sock")); got != name {
						t.Errorf("socket %s.sock answered %q, want %q", name, got, name)
					}
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("helper: %v", err)
			}
		})
	}
}

// TestListenersUnderSocketActivate uses systemd's own socket activator:
// it binds both sockets and starts cairnd's stand-in on the first
// connection, which must be answered, not lost.
func TestListenersUnderSocketActivate(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	apiPath, nbdPath := filepath.Join(dir, "api.sock"), filepath.Join(dir, "nbd.sock")
	cmd := exec.Command(activate, "-l", apiPath, "-l", nbdPath, "--fdname=api:nbd",
		"-E", activatedHelper+"=1", os.Args[0], "-test.run=^TestActivationHelper$")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := startHelper(t, cmd)
	// The activator says "Listening on PATH as FD." once per socket
	// before it waits for a connection.
	errLines := bufio.NewScanner(stderr)
	for bound := 0; bound < 2; {
		if !errLines.Scan() {
			t.Fatalf("systemd-socket-activate exited before binding: %v", errLines.Err())
		}
		if strings.HasPrefix(errLines.Text(), "Listening on ") {
			bound++
		}
	}
	go io.Copy(io.Discard, stderr)
	// This first connection starts the helper.
	if got := askName(t, apiPath); got != "api" {
		t.Errorf("api socket answered %q, want api", got)
	}
	if line := firstLine(t, out); line != "ok api nbd" {
		t.Errorf("helper said %q, want \"ok api nbd\"", line)
	}
	if got := askName(t, nbdPath); got != "nbd" {
		t.Errorf("nbd socket answered %q, want nbd", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("helper: %v", err)
	}
}

// startHelper starts cmd and returns its stdout; the process is killed if
// the test ends before it does.
func startHelper(t *testing.T, cmd *exec.Cmd) *bufio.Reader {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return bufio.NewReader(stdout)
}

func firstLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("helper printed nothing: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}
