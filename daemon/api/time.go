package api

import (
	"fmt"
	"time"
)

// TimeLayout is how the API writes every time: RFC 3339 in UTC with
// milliseconds, always the same width ("2026-11-23T14:31:07.042Z").
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// Time is a time in the API's JSON, written with TimeLayout whatever the
// precision it was taken with, so every time of every object has one shape.
// Any RFC 3339 time is read.
type Time struct{ time.Time }

// At makes t an API time.
func At(t time.Time) Time { return Time{t} }

// MarshalJSON writes t in UTC with TimeLayout.
func (t Time) MarshalJSON() ([]byte, error) {
	return []byte(`"` + t.UTC().Format(TimeLayout) + `"`), nil
}

// UnmarshalJSON reads an RFC 3339 time.
func (t *Time) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return fmt.Errorf("a time must be an RFC 3339 string, got %s", b)
	}
	p, err := time.Parse(time.RFC3339Nano, string(b[1:len(b)-1]))
	if err != nil {
		return err
	}
	t.Time = p
	return nil
}
