package nbd

import "time"

// Observer is told of the requests an export's clients complete, for
// metrics. Its method is called on the connection's goroutines, once per
// request answered, so it must be fast (an atomic add) and safe for
// concurrent use.
type Observer interface {
	// Request reports one request: its command (Command* below), the
	// length it covered (0 for FLUSH) and the time from reading its
	// header to queuing its reply.
	Request(cmd Command, length uint32, took time.Duration)
}

// Command is an NBD command as an Observer sees it.
type Command uint16

// Commands ("Request types").
const (
	CommandRead        Command = Command(cmdRead)
	CommandWrite       Command = Command(cmdWrite)
	CommandFlush       Command = Command(cmdFlush)
	CommandTrim        Command = Command(cmdTrim)
	CommandCache       Command = Command(cmdCache)
	CommandWriteZeroes Command = Command(cmdWriteZeroes)
	CommandBlockStatus Command = Command(cmdBlockStatus)
)

// observe reports r to the export's Observer, if it has one.
func (c *conn) observe(r *request) {
	if obs := c.exp.Observer; obs != nil && !r.start.IsZero() {
		obs.Request(Command(r.typ), r.length, time.Since(r.start))
	}
}
