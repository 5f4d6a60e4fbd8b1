package main

import "github.com/cairn-storage/cairn/internal/clock"

// testClock, when set (only by a cairn_testfaults build), is the clock the
// daemon's policies, retention and samples go by (testfaults.go).
var testClock func() clock.Clock
