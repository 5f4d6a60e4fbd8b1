package schedule

import (
	"errors"
	"testing"
	"time"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func mustNew(t *testing.T, spec Spec) Schedule {
	t.Helper()
	s, err := New(spec)
	if err != nil {
		t.Fatalf("New(%+v): %v", spec, err)
	}
	return s
}

// TestNext walks schedules through weekdays, several times a day, minute
// steps, time zones and both daylight-saving changes, each point checked
// against the instant worked out by hand.
func TestNext(t *testing.T) {
	tests := []struct {
		name  string
		spec  Spec
		after string
		want  []string // the next points, in order
	}{
		{"hours on two weekdays", Spec{Times: []string{"02:00", "14:00"}, Weekdays: []string{"mon", "wednesday"}, Zone: "UTC"},
			"2026-06-02T10:00:00Z", // a Tuesday
			[]string{"2026-06-03T02:00:00Z", "2026-06-03T14:00:00Z", "2026-06-08T02:00:00Z", "2026-06-08T14:00:00Z"}},
		{"a point exactly at t is not next", Spec{Times: []string{"02:00"}, Zone: "UTC"},
			"2026-06-02T02:00:00Z", []string{"2026-06-03T02:00:00Z"}},
		{"every 15 minutes across midnight", Spec{Every: 15, Zone: "UTC"},
			"2026-06-02T23:37:10Z", []string{"2026-06-02T23:45:00Z", "2026-06-03T00:00:00Z", "2026-06-03T00:15:00Z"}},
		{"every 25 minutes restarts at midnight", Spec{Every: 25, Zone: "UTC"},
			"2026-06-02T23:30:00Z", []string{"2026-06-02T23:45:00Z", "2026-06-03T00:00:00Z", "2026-06-03T00:25:00Z"}},
		{"Tokyo's 02:00 is the UTC evening before", Spec{Times: []string{"02:00"}, Weekdays: []string{"sat"}, Zone: "Asia/Tokyo"},
			"2026-06-01T00:00:00Z", []string{"2026-06-05T17:00:00Z", "2026-06-12T17:00:00Z"}},
		{"weekday of the local date, not UTC's", Spec{Times: []string{"23:30"}, Weekdays: []string{"mon"}, Zone: "America/Los_Angeles"},
			"2026-06-01T00:00:00Z", []string{"2026-06-02T06:30:00Z"}}, // Monday 23:30 PDT is Tuesday in UTC
		{"Berlin spring gap: 02:30 runs at 03:00 CEST", Spec{Times: []string{"02:30"}, Zone: "Europe/Berlin"},
			"2026-03-28T12:00:00Z", []string{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}},
		{"New York spring gap", Spec{Times: []string{"02:30"}, Zone: "America/New_York"},
			"2026-03-07T12:00:00Z", []string{"2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
		{"gap times run once at its end", Spec{Times: []string{"02:00", "02:30", "03:00", "03:30"}, Zone: "Europe/Berlin"},
			"2026-03-28T12:00:00Z", []string{"2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:00:00Z"}},
		{"Berlin autumn repeat: 02:30 runs once, the first time", Spec{Times: []string{"02:30"}, Zone: "Europe/Berlin"},
			"2026-10-24T12:00:00Z", []string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"a step has no points in the repeated hour's second pass", Spec{Every: 30, Zone: "Europe/Berlin"},
			"2026-10-24T23:15:00Z", // 01:15 CEST
			[]string{"2026-10-24T23:30:00Z", "2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00Z"}},
		{"a step through the spring gap", Spec{Every: 30, Zone: "Europe/Berlin"},
			"2026-03-29T00:15:00Z", // 01:15 CET
			[]string{"2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"}},
		{"Lord Howe's half-hour gap", Spec{Times: []string{"02:15"}, Zone: "Australia/Lord_Howe"},
			"2026-10-03T00:00:00Z", []string{"2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"}},
		{"UTC never skips", Spec{Every: 60, Zone: "UTC"},
			"2026-10-25T00:30:00Z", []string{"2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustNew(t, tc.spec)
			got := s.NextN(utc(tc.after), len(tc.want))
			if len(got) != len(tc.want) {
				t.Fatalf("got %d points, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				if !got[i].Equal(utc(w)) {
					t.Errorf("point %d: %s, want %s", i, got[i].UTC().Format(time.RFC3339), w)
				}
			}
		})
	}
}

// TestLatest: the last point at or before t, the one a restart within the
// grace still takes.
func TestLatest(t *testing.T) {
	s := mustNew(t, Spec{Times: []string{"02:00", "14:00"}, Weekdays: []string{"mon"}, Zone: "UTC"})
	for _, tc := range []struct{ at, want string }{
		{"2026-06-01T14:00:00Z", "2026-06-01T14:00:00Z"}, // exactly at a point
		{"2026-06-01T13:59:59Z", "2026-06-01T02:00:00Z"},
		{"2026-06-05T00:00:00Z", "2026-06-01T14:00:00Z"}, // days later
		{"2026-06-01T01:00:00Z", "2026-05-25T14:00:00Z"}, // the week before
	} {
		got, ok := s.Latest(utc(tc.at))
		if !ok || !got.Equal(utc(tc.want)) {
			t.Errorf("Latest(%s) = %v %v, want %s", tc.at, got.UTC(), ok, tc.want)
		}
	}
	gap := mustNew(t, Spec{Times: []string{"02:30"}, Zone: "Europe/Berlin"})
	if got, _ := gap.Latest(utc("2026-03-29T01:10:00Z")); !got.Equal(utc("2026-03-29T01:00:00Z")) {
		t.Errorf("Latest after the gap = %v, want the gap's end", got.UTC())
	}
}

func TestCount(t *testing.T) {
	s := mustNew(t, Spec{Every: 15, Zone: "UTC"})
	if n := s.Count(utc("2026-06-01T00:00:00Z"), utc("2026-06-01T01:00:00Z"), 100); n != 4 {
		t.Errorf("Count over an hour of 15-minute steps = %d, want 4 (the end counts, the start does not)", n)
	}
	if n := s.Count(utc("2026-06-01T00:00:00Z"), utc("2026-06-08T00:00:00Z"), 10); n != 10 {
		t.Errorf("Count did not stop at its limit: %d", n)
	}
}

func TestRules(t *testing.T) {
	tests := []struct {
		spec  Spec
		field string
	}{
		{Spec{Zone: "UTC"}, "times"},
		{Spec{Times: []string{"02:00"}, Every: 15, Zone: "UTC"}, "every_minutes"},
		{Spec{Every: 721, Zone: "UTC"}, "every_minutes"},
		{Spec{Every: -5, Zone: "UTC"}, "every_minutes"},
		{Spec{Times: []string{"24:00"}, Zone: "UTC"}, "times"},
		{Spec{Times: []string{"2:00"}, Zone: "UTC"}, "times"},
		{Spec{Times: []string{"02:60"}, Zone: "UTC"}, "times"},
		{Spec{Times: []string{"02:00"}, Weekdays: []string{"funday"}, Zone: "UTC"}, "weekdays"},
		{Spec{Times: []string{"02:00"}, Zone: "Mars/Olympus_Mons"}, "time_zone"},
		{Spec{Times: []string{"02:00"}, Zone: "Local"}, "time_zone"},
		{Spec{Times: []string{"02:00"}}, "time_zone"},
	}
	for _, tc := range tests {
		_, err := New(tc.spec)
		var e *Error
		if !errors.As(err, &e) || e.Field != tc.field {
			t.Errorf("New(%+v) = %v, want an error about %s", tc.spec, err, tc.field)
		}
	}
	s := mustNew(t, Spec{Times: []string{"14:00", "02:00", "02:00"}, Weekdays: []string{"Sunday", "MON"}, Zone: "UTC"})
	if got := s.Weekdays(); len(got) != 2 || got[0] != "mon" || got[1] != "sun" {
		t.Errorf("Weekdays = %v, want [mon sun]", got)
	}
	if got := s.Times(); len(got) != 2 || got[0] != "02:00" || got[1] != "14:00" {
		t.Errorf("Times = %v, want [02:00 14:00]", got)
	}
	if n := s.Count(utc("2026-06-01T00:00:00Z"), utc("2026-06-02T00:00:00Z"), 10); n != 2 {
		t.Errorf("a duplicated time counts %d points on a day, want 2", n)
	}
}

// TestCountLongDowntime: a year of a one-minute step counts exactly (a
// restart after long downtime counts the points it missed).
func TestCountLongDowntime(t *testing.T) {
	s := mustNew(t, Spec{Every: 1, Zone: "UTC"})
	if n := s.Count(utc("2025-06-01T00:00:00Z"), utc("2026-06-01T00:00:00Z"), 1<<30); n != 365*24*60 {
		t.Fatalf("a year of minutes: %d, want %d", n, 365*24*60)
	}
	berlin := mustNew(t, Spec{Every: 60, Zone: "Europe/Berlin"})
	// A year in Berlin has one 23-hour day (no 02:00) and one 25-hour day
	// (02:00 once): 365*24 - 1 points.
	if n := berlin.Count(utc("2025-12-31T23:00:00Z"), utc("2026-12-31T23:00:00Z"), 1<<30); n != 365*24-1 {
		t.Fatalf("a year of hours in Berlin: %d, want %d", n, 365*24-1)
	}
}
