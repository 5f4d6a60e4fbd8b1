package qga

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxReply bounds one reply of the agent (guest-info lists ~50 commands in
// a few KiB).
const MaxReply = 64 << 10

// ErrProtocol is wrapped by errors for replies that break the protocol:
// malformed, oversized, or not what the command returns.
var ErrProtocol = errors.New("guest agent protocol error")

// AgentError is an error the agent answered with (qemu's QMP error
// object); the stream stays in step after one.
type AgentError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *AgentError) Error() string { return e.Class + ": " + e.Desc }

// encodeCommand is {"execute": command, "arguments": args}.
func encodeCommand(command string, args map[string]any) ([]byte, error) {
	cmd := map[string]any{"execute": command}
	if args != nil {
		cmd["arguments"] = args
	}
	return json.Marshal(cmd)
}

// decodeReply parses one reply: an object whose only key is "return"
// (decoded into out; unknown fields inside objects are allowed, since
// agents add them) or "error" (an *AgentError, returned). Anything else —
// other or repeated keys, trailing data, a return value of another type —
// is an ErrProtocol error.
func decodeReply(raw []byte, out any) error {
	keys, err := topLevelKeys(raw)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if len(keys) != 1 || (keys[0] != "return" && keys[0] != "error") {
		return fmt.Errorf("%w: reply with keys %q, want one of \"return\" or \"error\"", ErrProtocol, keys)
	}
	var msg struct {
		Return json.RawMessage `json:"return"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(raw, &msg); err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	if keys[0] == "error" {
		var ae AgentError
		if err := strictUnmarshal(msg.Error, &ae); err != nil || ae.Class == "" {
			return fmt.Errorf("%w: malformed error object %s", ErrProtocol, truncate(msg.Error))
		}
		return &ae
	}
	if err := json.Unmarshal(msg.Return, out); err != nil {
		return fmt.Errorf("%w: return value %s: %v", ErrProtocol, truncate(msg.Return), err)
	}
	return nil
}

// topLevelKeys lists the keys of the JSON object raw, in order, and fails
// on anything but exactly one object (repeated keys included).
func topLevelKeys(raw []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("not an object")
	}
	var keys []string
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("key %v is not a string", tok)
		}
		if seen[k] {
			return nil, fmt.Errorf("key %q repeated", k)
		}
		seen[k] = true
		keys = append(keys, k)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the object")
	}
	return keys, nil
}

func strictUnmarshal(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
