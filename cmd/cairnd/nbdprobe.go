package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// The client side of the NBD handshake, just enough to greet cairnd's own
// NBD socket and leave politely (NBD protocol, "Fixed newstyle
// negotiation" and "Termination of the session during option haggling";
// /work/shared/reference/nbd-proto.md).
const (
	nbdGreeting       = "NBDMAGICIHAVEOPT" // server: NBDMAGIC, then the IHAVEOPT option magic
	nbdClientFlags    = 1 | 2              // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
	nbdOptAbort       = 2                  // NBD_OPT_ABORT
	nbdOptReplyMagic  = 0x3e889045565a9
	nbdGreetingLength = 18 // the greeting, then 16 bits of handshake flags
)

// probeNBD connects to the NBD Unix socket at path, checks the server's
// greeting, sends NBD_OPT_ABORT and reads the reply. Success proves the
// accept loop takes connections and a connection's goroutine runs the
// handshake, which a store read alone does not.
func probeNBD(ctx context.Context, path string) error {
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("nbd self-check: %w", err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	} else {
		conn.SetDeadline(time.Now().Add(nbdProbeTimeout))
	}
	hello := make([]byte, nbdGreetingLength)
	if _, err := io.ReadFull(conn, hello); err != nil {
		return fmt.Errorf("nbd self-check on %s: no greeting: %w", path, err)
	}
	if !bytes.HasPrefix(hello, []byte(nbdGreeting)) {
		return fmt.Errorf("nbd self-check on %s: greeting %q is not NBD fixed newstyle", path, hello[:16])
	}
	var msg [4 + 8 + 4 + 4]byte
	binary.BigEndian.PutUint32(msg[0:], nbdClientFlags)
	copy(msg[4:], nbdGreeting[8:]) // IHAVEOPT
	binary.BigEndian.PutUint32(msg[12:], nbdOptAbort)
	// msg[16:20]: option length 0
	if _, err := conn.Write(msg[:]); err != nil {
		return fmt.Errorf("nbd self-check on %s: %w", path, err)
	}
	var reply [8 + 4 + 4 + 4]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		return fmt.Errorf("nbd self-check on %s: no reply to NBD_OPT_ABORT: %w", path, err)
	}
	if m := binary.BigEndian.Uint64(reply[0:]); m != nbdOptReplyMagic {
		return fmt.Errorf("nbd self-check on %s: reply magic %#x", path, m)
	}
	return nil
}
