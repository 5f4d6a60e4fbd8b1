// Package qga is a client of the qemu guest agent protocol (QGA: JSON
// commands and replies over the agent's virtio-serial port, which qemu or
// libvirt exposes as a Unix socket on the host), for the few commands
// cairnd needs to take filesystem-consistent snapshots:
// guest-sync-delimited, guest-ping, guest-info, and guest-fsfreeze-freeze,
// -thaw and -status.
//
// Replies are parsed strictly (codec.go): one JSON object with exactly one
// of "return" or "error", of the type the command returns, at most
// MaxReply bytes; anything else is an error and the client is closed, never
// a guess. Every call takes a context whose deadline bounds it.
//
// The protocol (qemu-ga-ref, "guest-sync-delimited"): a client first sends
// a 0xFF byte, which makes the agent drop any partial command a previous
// client left, then guest-sync-delimited with a random id; the agent
// answers 0xFF followed by the id. Everything before that answer is a
// previous client's and is discarded. After a timeout the stream is out of
// step: the client is closed and a new one must sync again.
package qga

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Client is one connection to a guest agent. Its methods may be called
// from one goroutine at a time (the protocol has one command in flight);
// Close may be called from any.
type Client struct {
	conn net.Conn
	r    *bufio.Reader

	mu     sync.Mutex // one command at a time
	broken error      // set once the stream is out of step; guarded by mu
}

// Dial connects to the agent's socket and syncs the stream. ctx bounds
// both.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("guest agent at %s: %w", path, err)
	}
	c := &Client{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	if err := c.Sync(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sync resynchronises the stream (guest-sync-delimited with a random id),
// discarding whatever a previous client left.
func (c *Client) Sync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.watch(ctx)()
	id := rand.Int64N(1 << 52) // an integer JSON keeps exactly
	cmd, err := encodeCommand("guest-sync-delimited", map[string]any{"id": id})
	if err != nil {
		return err
	}
	if err := c.write(ctx, append([]byte{0xff}, cmd...)); err != nil {
		return err
	}
	for {
		// Skip to the sentinel; a previous client's replies come before.
		if err := c.skipToSentinel(ctx); err != nil {
			return err
		}
		raw, err := c.readReply(ctx)
		if err != nil {
			return err
		}
		var got int64
		if err := decodeReply(raw, &got); err != nil {
			continue // a stale reply that happened to follow a 0xFF byte
		}
		if got == id {
			return nil
		}
	}
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "guest-ping", nil, nil)
}

// Info is what guest-info reports (the fields cairnd uses).
type Info struct {
	Version  string        `json:"version"`
	Commands []CommandInfo `json:"supported_commands"`
}

// CommandInfo says whether the agent offers a command.
type CommandInfo struct {
	Name    string `json:"name"`
	Enabled bool   `json:"enabled"`
}

// Info asks the agent its version and commands.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var in Info
	err := c.call(ctx, "guest-info", nil, &in)
	return in, err
}

// Enabled reports whether the agent offers command, enabled.
func (in Info) Enabled(command string) bool {
	for _, c := range in.Commands {
		if c.Name == command {
			return c.Enabled
		}
	}
	return false
}

// Freeze freezes the guest's filesystems (guest-fsfreeze-freeze) and
// returns how many it froze. The caller must thaw them whatever happens
// next (Thaw); a freeze that failed may have frozen some.
func (c *Client) Freeze(ctx context.Context) (int, error) {
	var n int
	err := c.call(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// Thaw thaws the guest's filesystems (guest-fsfreeze-thaw) and returns
// how many it thawed.
func (c *Client) Thaw(ctx context.Context) (int, error) {
	var n int
	err := c.call(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// Status is the guest's freeze state: "thawed" or "frozen".
func (c *Client) Status(ctx context.Context) (string, error) {
	var s string
	err := c.call(ctx, "guest-fsfreeze-status", nil, &s)
	if err == nil && s != "thawed" && s != "frozen" {
		err = fmt.Errorf("%w: guest-fsfreeze-status returned %q", ErrProtocol, s)
	}
	return s, err
}

// call sends one command and decodes its reply into out (nil: an empty
// object is expected).
func (c *Client) call(ctx context.Context, command string, args map[string]any, out any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	defer c.watch(ctx)()
	cmd, err := encodeCommand(command, args)
	if err != nil {
		return err
	}
	if err := c.write(ctx, cmd); err != nil {
		return c.breakStream(command, err)
	}
	raw, err := c.readReply(ctx)
	if err != nil {
		return c.breakStream(command, err)
	}
	if out == nil {
		out = &struct{}{}
	}
	if err := decodeReply(raw, out); err != nil {
		var ae *AgentError
		if errors.As(err, &ae) {
			return fmt.Errorf("guest agent: %s: %w", command, err) // the stream is still in step
		}
		return c.breakStream(command, err)
	}
	return nil
}

// breakStream closes the client after a failure that leaves the stream
// out of step (a timeout, a malformed reply).
func (c *Client) breakStream(command string, err error) error {
	c.broken = fmt.Errorf("guest agent: %s: %w (the connection was closed; connect again)", command, err)
	c.conn.Close()
	return c.broken
}

// watch makes a cancelled ctx end the read or write in progress; the
// returned function stops watching.
func (c *Client) watch(ctx context.Context) (stop func()) {
	s := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { s() }
}

func (c *Client) write(ctx context.Context, p []byte) error {
	c.conn.SetWriteDeadline(deadline(ctx))
	_, err := c.conn.Write(p)
	return ctxErr(ctx, err)
}

// skipToSentinel reads up to and including the next 0xFF byte.
func (c *Client) skipToSentinel(ctx context.Context) error {
	c.conn.SetReadDeadline(deadline(ctx))
	for n := 0; ; n++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return ctxErr(ctx, err)
		}
		if b == 0xff {
			return nil
		}
		if n > 16*MaxReply {
			return fmt.Errorf("%w: no sync reply in %d bytes", ErrProtocol, n)
		}
	}
}

// readReply reads one JSON object: from its opening brace to the brace
// that closes it, outside strings; at most MaxReply bytes.
func (c *Client) readReply(ctx context.Context) ([]byte, error) {
	c.conn.SetReadDeadline(deadline(ctx))
	var buf []byte
	depth, inString, escaped := 0, false, false
	for {
		b, err := c.r.ReadByte()
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		if len(buf) == 0 {
			switch b {
			case ' ', '\t', '\r', '\n':
				continue
			case '{':
			default:
				return nil, fmt.Errorf("%w: reply starts with byte %#x, not an object", ErrProtocol, b)
			}
		}
		buf = append(buf, b)
		if len(buf) > MaxReply {
			return nil, fmt.Errorf("%w: reply longer than %d bytes", ErrProtocol, MaxReply)
		}
		switch {
		case escaped:
			escaped = false
		case inString && b == '\\':
			escaped = true
		case b == '"':
			inString = !inString
		case inString:
		case b == '{' || b == '[':
			depth++
		case b == '}' || b == ']':
			depth--
			if depth == 0 {
				return buf, nil
			}
		}
	}
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Time{}
}

// ctxErr names a timeout as the context's end.
func ctxErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var ne net.Error
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %v", cerr, err)
	}
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
	}
	return err
}
