package systemd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
)

// NewLogHandler returns the slog handler cairnd logs through.
//
// When stderr is the journal's stream (JOURNAL_STREAM names it, as systemd
// sets for StandardError=journal) each record goes to journald over its
// native protocol with its syslog priority, and every attribute also as a
// field of its own, so `journalctl -u cairnd -p warning` and
// `journalctl -u cairnd DISK=vm1` work. If the native socket is missing,
// records go to stderr as lines with a "<N>" priority prefix, which
// journald's stream transport understands. Otherwise (a terminal, a file,
// `make run`) it is slog's text handler on stderr.
//
// In the journal modes the MESSAGE is the record's message followed by its
// attributes as key=value pairs, without time or level: journald keeps those.
func NewLogHandler(stderr *os.File, opts *slog.HandlerOptions) slog.Handler {
	if !isJournalStream(stderr) {
		return slog.NewTextHandler(stderr, opts)
	}
	if journal.Enabled() {
		return newJournalHandler(opts, sendNative)
	}
	return newJournalHandler(opts, prefixWriter(stderr))
}

// isJournalStream reports whether f is the stream journald gave this
// process: JOURNAL_STREAM holds its device and inode as "DEV:INO".
func isJournalStream(f *os.File) bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	info, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	return ok && dev == strconv.FormatUint(st.Dev, 10) && ino == strconv.FormatUint(st.Ino, 10)
}

// emitFunc delivers one rendered record. fields is nil for emitters that
// cannot carry structured fields.
type emitFunc func(pri journal.Priority, message string, fields map[string]string) error

func sendNative(pri journal.Priority, message string, fields map[string]string) error {
	return journal.Send(message, pri, fields)
}

// prefixWriter writes "<N>message\n" lines for journald's stream transport
// (SyslogLevelPrefix=yes, the default).
func prefixWriter(w io.Writer) emitFunc {
	var mu sync.Mutex // one record per Write, never interleaved
	return func(pri journal.Priority, message string, _ map[string]string) error {
		mu.Lock()
		defer mu.Unlock()
		_, err := fmt.Fprintf(w, "<%d>%s\n", pri, message)
		return err
	}
}

// journalHandler renders records with slog's text handler (so groups,
// LogValuers and ReplaceAttr behave as everywhere else) into a buffer, then
// hands message, priority and fields to emit.
type journalHandler struct {
	opts   slog.HandlerOptions
	render *renderer
	text   slog.Handler // writes attributes only (no time, level, msg) into render.buf
	emit   emitFunc
	fields map[string]string // from WithAttrs; never modified once shared
	prefix string            // WithGroup names joined, as a field name prefix
	ident  string            // SYSLOG_IDENTIFIER
}

// renderer is the buffer shared by a handler and those derived from it.
type renderer struct {
	mu  sync.Mutex // guards buf for one Handle call at a time
	buf bytes.Buffer
}

func newJournalHandler(opts *slog.HandlerOptions, emit emitFunc) *journalHandler {
	h := &journalHandler{render: &renderer{}, emit: emit, ident: filepath.Base(os.Args[0])}
	if opts != nil {
		h.opts = *opts
	}
	userReplace := h.opts.ReplaceAttr
	textOpts := h.opts
	textOpts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey || a.Key == slog.SourceKey) {
			return slog.Attr{}
		}
		if userReplace != nil {
			return userReplace(groups, a)
		}
		return a
	}
	h.text = slog.NewTextHandler(&h.render.buf, &textOpts)
	return h
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.text.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.render.mu.Lock()
	h.render.buf.Reset()
	err := h.text.Handle(ctx, r)
	attrs := strings.TrimSuffix(h.render.buf.String(), "\n")
	h.render.mu.Unlock()
	if err != nil {
		return err
	}
	message := r.Message
	if attrs != "" {
		message += " " + attrs
	}
	return h.emit(priority(r.Level), message, h.recordFields(r))
}

func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.text = h.text.WithAttrs(attrs)
	c.fields = make(map[string]string, len(h.fields)+len(attrs))
	for k, v := range h.fields {
		c.fields[k] = v
	}
	for _, a := range attrs {
		addField(c.fields, h.prefix, a)
	}
	return &c
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.text = h.text.WithGroup(name)
	c.prefix = h.prefix + name + "_"
	return &c
}

// recordFields builds the journal fields of one record: the handler's
// attributes, the record's, the identifier, and the source when asked for.
func (h *journalHandler) recordFields(r slog.Record) map[string]string {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+4)
	for k, v := range h.fields {
		fields[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		addField(fields, h.prefix, a)
		return true
	})
	fields["SYSLOG_IDENTIFIER"] = h.ident
	if h.opts.AddSource && r.PC != 0 {
		frame, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		fields["CODE_FILE"] = frame.File
		fields["CODE_LINE"] = strconv.Itoa(frame.Line)
		fields["CODE_FUNC"] = frame.Function
	}
	return fields
}

// addField stores attribute a (groups flattened with "_") as journal
// fields in upper case. Names journald reserves get an "ATTR_" prefix so
// an attribute can never forge MESSAGE or PRIORITY.
func addField(fields map[string]string, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Key == "" && a.Value.Kind() != slog.KindGroup {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "_"
		}
		for _, g := range a.Value.Group() {
			addField(fields, p, g)
		}
		return
	}
	fields[fieldName(prefix+a.Key)] = a.Value.String()
}

// fieldName maps an attribute key to a valid journal field name: A-Z, 0-9
// and '_', not starting with '_' or a digit, at most 64 bytes.
func fieldName(key string) string {
	name := []byte(strings.ToUpper(key))
	for i, c := range name {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			name[i] = '_'
		}
	}
	s := string(name)
	if s == "" || s[0] == '_' || (s[0] >= '0' && s[0] <= '9') || reservedField(s) {
		s = "ATTR_" + s
	}
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

// reservedField reports names with a meaning to journald or journalctl
// (systemd.journal-fields(7)).
func reservedField(name string) bool {
	switch name {
	case "MESSAGE", "MESSAGE_ID", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
		"ERRNO", "INVOCATION_ID", "USER_INVOCATION_ID", "SYSLOG_FACILITY",
		"SYSLOG_IDENTIFIER", "SYSLOG_PID", "SYSLOG_TIMESTAMP", "SYSLOG_RAW",
		"DOCUMENTATION", "TID", "UNIT", "USER_UNIT":
		return true
	}
	return strings.HasPrefix(name, "OBJECT_") || strings.HasPrefix(name, "COREDUMP_")
}

// priority maps slog levels to syslog priorities (syslog(3)): below Info is
// debug, below Warn info, below Error warning, and Error and above err.
func priority(l slog.Level) journal.Priority {
	switch {
	case l < slog.LevelInfo:
		return journal.PriDebug
	case l < slog.LevelWarn:
		return journal.PriInfo
	case l < slog.LevelError:
		return journal.PriWarning
	default:
		return journal.PriErr
	}
}
