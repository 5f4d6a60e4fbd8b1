package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
)

// setJournalStream points JOURNAL_STREAM at f, as systemd does for the
// stream it connects to a service's stderr.
func setJournalStream(t *testing.T, f *os.File) {
	t.Helper()
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
}

func TestNewLogHandlerChoosesOutput(t *testing.T) {
	dir := t.TempDir()
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	other, err := os.Create(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	tests := []struct {
		name    string
		stream  *os.File // JOURNAL_STREAM names this file; nil leaves it unset
		journal bool     // records should bypass the text handler
	}{
		{"terminal or file", nil, false},
		{"stream of another process", other, false},
		{"stderr is the journal", stderr, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", "")
			if tt.stream != nil {
				setJournalStream(t, tt.stream)
			}
			h := NewLogHandler(stderr, nil)
			if _, isJournal := h.(*journalHandler); isJournal != tt.journal {
				t.Errorf("handler %T, want journal handler: %v", h, tt.journal)
			}
		})
	}
}

func TestPrefixLinesCarryPriority(t *testing.T) {
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	setJournalStream(t, stderr)
	if journal.Enabled() {
		t.Log("journald's socket exists here; checking the stream fallback directly")
	}
	logger := slog.New(newJournalHandler(&slog.HandlerOptions{Level: slog.LevelDebug}, prefixWriter(stderr)))
	logger.Debug("accept loop heartbeat")
	logger.Info("disk created", "disk", "vm1", "size", 10<<30)
	logger.With("conn", 7).WithGroup("nbd").Warn("client sent a bad request", "export", "vm1@s1", "err", "bad magic\nsecond line")
	logger.Error("store failed", "err", "i/o error")

	b, err := os.ReadFile(stderr.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := "<7>accept loop heartbeat\n" +
		"<6>disk created disk=vm1 size=10737418240\n" +
		"<4>client sent a bad request conn=7 nbd.export=vm1@s1 nbd.err=\"bad magic\\nsecond line\"\n" +
		"<3>store failed err=\"i/o error\"\n"
	if string(b) != want {
		t.Errorf("stderr got\n%s\nwant\n%s", b, want)
	}
}

type diskName string

func (d diskName) LogValue() slog.Value { return slog.StringValue("disk/" + string(d)) }

func TestJournalFields(t *testing.T) {
	type entry struct {
		pri     journal.Priority
		message string
		fields  map[string]string
	}
	var got []entry
	record := func(pri journal.Priority, message string, fields map[string]string) error {
		got = append(got, entry{pri, message, fields})
		return nil
	}
	tests := []struct {
		name        string
		log         func(l *slog.Logger)
		pri         journal.Priority
		message     string
		fields      map[string]string // must be present with these values
		mustNotHave []string
	}{
		{
			name:    "attributes become fields",
			log:     func(l *slog.Logger) { l.Info("disk created", "disk", "vm1", "blocks", 16) },
			pri:     journal.PriInfo,
			message: "disk created disk=vm1 blocks=16",
			fields:  map[string]string{"DISK": "vm1", "BLOCKS": "16", "SYSLOG_IDENTIFIER": filepath.Base(os.Args[0])},
		},
		{
			name:    "groups and handler attributes",
			log:     func(l *slog.Logger) { l.With("conn", 3).WithGroup("nbd").Warn("bad request", "export", "vm1") },
			pri:     journal.PriWarning,
			message: "bad request conn=3 nbd.export=vm1",
			fields:  map[string]string{"CONN": "3", "NBD_EXPORT": "vm1"},
		},
		{
			name:    "nested group attribute",
			log:     func(l *slog.Logger) { l.Error("copy-out failed", slog.Group("snap", "disk", "vm1", "id", 4)) },
			pri:     journal.PriErr,
			message: "copy-out failed snap.disk=vm1 snap.id=4",
			fields:  map[string]string{"SNAP_DISK": "vm1", "SNAP_ID": "4"},
		},
		{
			name: "attributes cannot forge journal fields",
			log: func(l *slog.Logger) {
				l.Info("hello", "message", "forged", "priority", "0", "_PID", "1", "9lives", "x", "a-b.c", "y")
			},
			pri:         journal.PriInfo,
			message:     "hello message=forged priority=0 _PID=1 9lives=x a-b.c=y",
			fields:      map[string]string{"ATTR_MESSAGE": "forged", "ATTR_PRIORITY": "0", "ATTR__PID": "1", "ATTR_9LIVES": "x", "A_B_C": "y"},
			mustNotHave: []string{"MESSAGE", "PRIORITY", "_PID"},
		},
		{
			name:    "log valuer resolved",
			log:     func(l *slog.Logger) { l.Info("opened", "disk", diskName("vm2")) },
			pri:     journal.PriInfo,
			message: "opened disk=disk/vm2",
			fields:  map[string]string{"DISK": "disk/vm2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = nil
			tt.log(slog.New(newJournalHandler(&slog.HandlerOptions{AddSource: true}, record)))
			if len(got) != 1 {
				t.Fatalf("got %d entries, want 1", len(got))
			}
			e := got[0]
			if e.pri != tt.pri || e.message != tt.message {
				t.Errorf("got <%d> %q, want <%d> %q", e.pri, e.message, tt.pri, tt.message)
			}
			for k, v := range tt.fields {
				if e.fields[k] != v {
					t.Errorf("field %s = %q, want %q (all: %v)", k, e.fields[k], v, e.fields)
				}
			}
			for _, k := range tt.mustNotHave {
				if _, ok := e.fields[k]; ok {
					t.Errorf("field %s set by an attribute: %v", k, e.fields)
				}
			}
			if !strings.HasSuffix(e.fields["CODE_FILE"], "journal_test.go") || !strings.HasPrefix(e.fields["CODE_FUNC"], "github.com/cairn-storage/cairn/systemd.TestJournalFields") {
				t.Errorf("CODE_FILE, CODE_FUNC = %q, %q, want this test", e.fields["CODE_FILE"], e.fields["CODE_FUNC"])
			}
		})
	}
}

func TestJournalHandlerLevel(t *testing.T) {
	sent := 0
	h := newJournalHandler(&slog.HandlerOptions{Level: slog.LevelWarn}, func(journal.Priority, string, map[string]string) error {
		sent++
		return nil
	})
	logger := slog.New(h)
	logger.Info("quiet")
	logger.Warn("loud")
	if sent != 1 {
		t.Errorf("sent %d records at level Warn, want 1", sent)
	}
	if h.Enabled(context.Background(), slog.LevelInfo) {
		t.Error("Info enabled at level Warn")
	}
}
