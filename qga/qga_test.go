package qga

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hostAgent starts the real qemu-ga on this host, listening on a Unix
// socket, with every command that could touch the host's filesystems or
// power blocked (freezing here would freeze the host's own filesystems:
// FIFREEZE acts on superblocks every mount namespace shares). Freezes are
// tested for real only inside a VM (scripts/test/vm).
func hostAgent(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-ga")
	if err != nil {
		bin = "/usr/sbin/qemu-ga"
		if _, err := os.Stat(bin); err != nil {
			t.Skip("qemu-ga not installed (Debian package qemu-guest-agent; make test installs it)")
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	blocked := "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,guest-fstrim,guest-shutdown," +
		"guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,guest-exec,guest-file-open,guest-file-write," +
		"guest-set-user-password,guest-set-time,guest-set-vcpus,guest-set-memory-blocks,guest-network-get-interfaces"
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"), "-b", blocked)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(10 * time.Millisecond) // waiting for another process to create its socket
	}
	t.Fatal("qemu-ga did not create its socket")
	return ""
}

func TestRealAgent(t *testing.T) {
	sock := hostAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Version == "" || !in.Enabled("guest-ping") || in.Enabled("guest-fsfreeze-freeze") {
		t.Fatalf("info: version %q, ping enabled %v, freeze enabled %v", in.Version, in.Enabled("guest-ping"), in.Enabled("guest-fsfreeze-freeze"))
	}
	if st, err := c.Status(ctx); err != nil || st != "thawed" {
		t.Fatalf("status %q, %v", st, err)
	}
	// The blocked freeze is the agent's own error reply: the stream stays
	// in step.
	_, err = c.Freeze(ctx)
	var ae *AgentError
	if !errors.As(err, &ae) {
		t.Fatalf("freeze of a blocked command: %v, want the agent's error", err)
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after an agent error: %v", err)
	}
	// A client that dies mid-command leaves a partial command behind; the
	// next client's 0xFF and sync get past it. (The agent serves one
	// client at a time.)
	if _, err := c.conn.Write([]byte(`{"execute":"guest-pi`)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c2, err := Dial(ctx, sock)
	if err != nil {
		t.Fatalf("a client after one that died mid-command: %v", err)
	}
	defer c2.Close()
	if err := c2.Ping(ctx); err != nil {
		t.Fatalf("ping after a partial command: %v", err)
	}
}

// fakeAgent is a scripted agent for the failure paths the real one cannot
// be made to show (silence, garbage, dying mid-reply). It answers each
// command line it reads with script(line), written raw; "" means no
// answer.
func fakeAgent(t *testing.T, script func(line string) string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('}')
					if err != nil {
						return
					}
					line = strings.TrimLeft(line, "\xff")
					for strings.Count(line, "{") > strings.Count(line, "}") {
						more, err := r.ReadString('}')
						if err != nil {
							return
						}
						line += more
					}
					if out := script(line); out == "close" {
						return
					} else if out != "" {
						conn.Write([]byte(out))
					}
				}
			}()
		}
	}()
	return sock
}

// syncReply answers guest-sync-delimited with the id it was sent.
func syncReply(line string) string {
	var cmd struct {
		Arguments struct {
			ID json.Number `json:"id"`
		} `json:"arguments"`
	}
	if err := json.Unmarshal([]byte(line), &cmd); err != nil {
		return ""
	}
	return "\xff{\"return\": " + cmd.Arguments.ID.String() + "}"
}

func TestFailurePaths(t *testing.T) {
	cases := []struct {
		name   string
		reply  string // to guest-fsfreeze-freeze
		want   string // in the error
		broken bool   // the stream is out of step afterwards
	}{
		{"silence", "", "deadline exceeded", true},
		{"garbage", "not json at all", "not an object", true},
		{"two keys", `{"return": 1, "error": {"class": "X", "desc": "y"}}`, "want one of", true},
		{"repeated key", `{"return": 1, "return": 2}`, "repeated", true},
		{"wrong type", `{"return": "three"}`, "return value", true},
		{"huge", `{"return": "` + strings.Repeat("a", MaxReply) + `"}`, "longer than", true},
		{"dies", "close", "EOF", true},
		{"agent error", `{"error": {"class": "GenericError", "desc": "failed to freeze /: busy"}}`, "busy", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := fakeAgent(t, func(line string) string {
				switch {
				case strings.Contains(line, "guest-sync-delimited"):
					// Stale data of an earlier client comes first.
					return `{"return": 99}` + syncReply(line)
				case strings.Contains(line, "guest-fsfreeze-freeze"):
					return tc.reply
				case strings.Contains(line, "guest-ping"):
					return `{"return": {}}`
				}
				return ""
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := Dial(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fctx, fcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = c.Freeze(fctx)
			fcancel()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("freeze: %v, want an error with %q", err, tc.want)
			}
			perr := c.Ping(ctx)
			if tc.broken != (perr != nil) {
				t.Fatalf("ping after the failure: %v (broken expected: %v)", perr, tc.broken)
			}
		})
	}
}

func TestDialMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := Dial(ctx, filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("dial a missing socket: %v", err)
	}
}

func FuzzDecodeReply(f *testing.F) {
	for _, s := range []string{`{"return": 1}`, `{"return": {}}`, `{"error": {"class": "A", "desc": "b"}}`,
		`{"return": 1, "return": 2}`, `[]`, `{"return": "thawed"}`, `{"return": {"version": "7.2", "supported_commands": [{"name": "a", "enabled": true}]}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var n int
		decodeReply(raw, &n)
		var s string
		decodeReply(raw, &s)
		var in Info
		decodeReply(raw, &in)
	})
}
