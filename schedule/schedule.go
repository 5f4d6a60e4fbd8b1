// Package schedule computes when an automatic snapshot policy runs: its
// time points, from a list of local times of day or a step of minutes,
// on chosen weekdays, in an IANA time zone. It is pure logic: no clock,
// no I/O (time zones come from the system's tzdata through
// time.LoadLocation), so every rule is tested with plain instants.
//
// # Words
//
// A point is one instant at which a policy takes a snapshot. A day's
// points are its times of day (Times, or every Every minutes from 00:00)
// on that local date, when the date's weekday is selected.
//
// # Daylight-saving time
//
// Points are local wall-clock times, so a change of the zone's offset
// moves them:
//   - A time that does not exist that day (it falls in the gap when clocks
//     go forward, such as 02:30 in Europe/Berlin on the last Sunday of
//     March) runs at the first instant after the gap (03:00 local). Several
//     such times run once.
//   - A time that happens twice (clocks go back, 02:30 on the last Sunday
//     of October) runs once, at its first occurrence. A step schedule
//     therefore has no points in the repeated hour's second pass.
//
// A zone without daylight-saving time (UTC) has neither effect: policies
// with short steps that must never leave a gap should use it.
package schedule

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Schedule is a validated set of points. The zero value has no points.
type Schedule struct {
	minutes  []int // minutes after local midnight, sorted, unique
	weekdays [7]bool
	zone     *time.Location
}

// Error is a field of a schedule that breaks a rule; Field is its API name.
type Error struct {
	Field string
	Msg   string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &Error{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits of a schedule.
const (
	// MaxEvery is the longest step: a longer one would give one point a
	// day, which Times says better.
	MaxEvery = 720
	// MaxTimes bounds the list of times (one a minute is 1440).
	MaxTimes = 1440
)

// Spec is what a policy says about its schedule (the API's fields).
type Spec struct {
	// Times are local times of day, "HH:MM" (00:00 to 23:59).
	Times []string
	// Every is a step in minutes from 00:00, 1 to MaxEvery; exclusive
	// with Times.
	Every int
	// Weekdays are the days points fall on ("mon" to "sun", or full
	// English names); none means every day.
	Weekdays []string
	// Zone is an IANA time zone name ("Europe/Berlin", "UTC").
	Zone string
}

// New validates spec and returns its schedule. A broken rule is an *Error
// naming the field ("times", "every_minutes", "weekdays", "time_zone").
func New(spec Spec) (Schedule, error) {
	var s Schedule
	switch {
	case len(spec.Times) > 0 && spec.Every != 0:
		return s, fieldErr("every_minutes", "give times or every_minutes, not both")
	case len(spec.Times) == 0 && spec.Every == 0:
		return s, fieldErr("times", "a policy needs times (such as 02:00,14:00) or every_minutes (such as 15)")
	case spec.Every < 0 || spec.Every > MaxEvery:
		return s, fieldErr("every_minutes", "%d: must be from 1 to %d minutes", spec.Every, MaxEvery)
	case len(spec.Times) > MaxTimes:
		return s, fieldErr("times", "%d times: at most %d", len(spec.Times), MaxTimes)
	}
	for _, t := range spec.Times {
		m, err := ParseTime(t)
		if err != nil {
			return s, fieldErr("times", "%v", err)
		}
		s.minutes = append(s.minutes, m)
	}
	for m := 0; spec.Every > 0 && m < 24*60; m += spec.Every {
		s.minutes = append(s.minutes, m)
	}
	slices.Sort(s.minutes)
	s.minutes = slices.Compact(s.minutes)
	if len(spec.Weekdays) == 0 {
		s.weekdays = [7]bool{true, true, true, true, true, true, true}
	}
	for _, w := range spec.Weekdays {
		d, err := ParseWeekday(w)
		if err != nil {
			return s, fieldErr("weekdays", "%v", err)
		}
		s.weekdays[d] = true
	}
	if spec.Zone == "" || spec.Zone == "Local" {
		return s, fieldErr("time_zone", "%q: name an IANA time zone, such as Europe/Berlin or UTC", spec.Zone)
	}
	zone, err := time.LoadLocation(spec.Zone)
	if err != nil {
		return s, fieldErr("time_zone", "%q is not a time zone this host knows (IANA names such as Europe/Berlin or UTC; Debian's tzdata package has them)", spec.Zone)
	}
	s.zone = zone
	return s, nil
}

// ParseTime parses "HH:MM" (00:00 to 23:59) into minutes after midnight.
func ParseTime(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(h) != 2 || len(m) != 2 || hh < 0 || hh > 23 || mm < 0 || mm > 59 {
		return 0, fmt.Errorf("%q is not a time of day HH:MM from 00:00 to 23:59", s)
	}
	return hh*60 + mm, nil
}

// FormatTime writes minutes after midnight as "HH:MM".
func FormatTime(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

var weekdayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWeekday parses "mon" to "sun" or the full English name, any case.
func ParseWeekday(s string) (time.Weekday, error) {
	l := strings.ToLower(strings.TrimSpace(s))
	for i, n := range weekdayNames {
		if l == n || l == strings.ToLower(time.Weekday(i).String()) {
			return time.Weekday(i), nil
		}
	}
	return 0, fmt.Errorf("%q is not a weekday (mon, tue, wed, thu, fri, sat, sun)", s)
}

// FormatWeekday writes a weekday as the API does ("mon").
func FormatWeekday(d time.Weekday) string { return weekdayNames[d] }

// Weekdays lists the selected weekdays, Monday first, as the API writes
// them.
func (s Schedule) Weekdays() []string {
	var out []string
	for i := range 7 {
		d := time.Weekday((i + 1) % 7)
		if s.weekdays[d] {
			out = append(out, FormatWeekday(d))
		}
	}
	return out
}

// Times lists the times of day, "HH:MM", sorted, each once (a step's
// too).
func (s Schedule) Times() []string {
	out := make([]string, len(s.minutes))
	for i, m := range s.minutes {
		out[i] = FormatTime(m)
	}
	return out
}

// Zone is the schedule's time zone.
func (s Schedule) Zone() *time.Location { return s.zone }

// lookAround bounds the search for a point: the next selected weekday is
// at most a week away, plus a day either side for offsets.
const lookAround = 9

// Next is the first point strictly after t; ok is false for a schedule
// with no points.
func (s Schedule) Next(t time.Time) (next time.Time, ok bool) {
	if s.zone == nil || len(s.minutes) == 0 {
		return time.Time{}, false
	}
	local := t.In(s.zone)
	y, m, d := local.Date()
	for i := -1; i <= lookAround; i++ {
		for _, p := range s.day(y, m, d+i) {
			if p.After(t) {
				return p, true
			}
		}
	}
	return time.Time{}, false
}

// Latest is the last point at or before t (ok false when there is none in
// the week before t).
func (s Schedule) Latest(t time.Time) (latest time.Time, ok bool) {
	if s.zone == nil || len(s.minutes) == 0 {
		return time.Time{}, false
	}
	local := t.In(s.zone)
	y, m, d := local.Date()
	for i := 1; i >= -lookAround; i-- {
		points := s.day(y, m, d+i)
		for j := len(points) - 1; j >= 0; j-- {
			if !points[j].After(t) {
				return points[j], true
			}
		}
	}
	return time.Time{}, false
}

// Count counts the points in (after, upto], stopping at limit. It walks
// the days between, so a long downtime of a minute step costs a day's
// points per day, not a search per point.
func (s Schedule) Count(after, upto time.Time, limit int) int {
	if s.zone == nil || !upto.After(after) {
		return 0
	}
	y, m, d := after.In(s.zone).Date()
	end := upto.Add(48 * time.Hour) // past the last local date that can hold a point <= upto
	n := 0
	for i := -1; n < limit; i++ {
		if time.Date(y, m, d+i, 0, 0, 0, 0, time.UTC).After(end) {
			break
		}
		for _, p := range s.day(y, m, d+i) {
			if p.After(after) && !p.After(upto) {
				if n++; n >= limit {
					break
				}
			}
		}
	}
	return n
}

// NextN lists the next n points after t.
func (s Schedule) NextN(t time.Time, n int) []time.Time {
	var out []time.Time
	for p, ok := s.Next(t); ok && len(out) < n; p, ok = s.Next(p) {
		out = append(out, p)
	}
	return out
}

// day lists the points of the local date y-m-d (normalised: d may be out
// of the month's range), earliest first, none when its weekday is not
// selected.
func (s Schedule) day(y int, m time.Month, d int) []time.Time {
	date := time.Date(y, m, d, 12, 0, 0, 0, time.UTC) // the date, normalised
	if !s.weekdays[date.Weekday()] {
		return nil
	}
	y, m, d = date.Date()
	midnight := time.Date(y, m, d, 0, 0, 0, 0, time.UTC) // the wall clock as if UTC
	before := offset(midnight.Add(-36*time.Hour), s.zone)
	after := offset(midnight.Add(60*time.Hour), s.zone)
	out := make([]time.Time, 0, len(s.minutes))
	for _, mins := range s.minutes {
		wall := midnight.Add(time.Duration(mins) * time.Minute)
		var p time.Time
		if before == after && offset(wall.Add(-before), s.zone) == before {
			p = wall.Add(-before) // no change of offset near this day
		} else {
			p = resolve(wall, s.zone, before, after)
		}
		if len(out) == 0 || p.After(out[len(out)-1]) {
			out = append(out, p)
		}
	}
	return out
}

// offset is the zone's UTC offset at instant t.
func offset(t time.Time, zone *time.Location) time.Duration {
	_, off := t.In(zone).Zone()
	return time.Duration(off) * time.Second
}

// resolve is the instant of the wall-clock time wall (written as if UTC)
// in zone on a day whose offset changes from before to after: its first
// occurrence, or, when it falls in a gap, the first instant after the gap.
func resolve(wall time.Time, zone *time.Location, before, after time.Duration) time.Time {
	var first time.Time
	for _, off := range []time.Duration{before, after} {
		p := wall.Add(-off)
		if sameWall(p.In(zone), wall) && (first.IsZero() || p.Before(first)) {
			first = p
		}
	}
	if !first.IsZero() {
		return first
	}
	// In the gap: read with the old offset it lies just past the change,
	// which is where the zone now in effect began.
	start, _ := wall.Add(-before).In(zone).ZoneBounds()
	return start.UTC()
}

func sameWall(local, wall time.Time) bool {
	y1, m1, d1 := local.Date()
	y2, m2, d2 := wall.Date()
	return y1 == y2 && m1 == m2 && d1 == d2 && local.Hour() == wall.Hour() && local.Minute() == wall.Minute()
}
