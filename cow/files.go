package cow

import (
	"strconv"
	"strings"
)

// The files a volume with a store keeps beside its live image, each named
// from Options.TrackPrefix:
//
//	<prefix>.<epoch>       the change-tracking file of an epoch (track.go)
//	<prefix>.<epoch>.tmp   a change-tracking file being created
//	<prefix>.row.<epoch>   the side file of an epoch's redirected writes (side.go)
//	<prefix>.cbw           the copy-before-write journal of an older cairnd (recover.go)

// TrackFile says what the file called name (a base name) is when it is one
// of the files of a volume whose TrackPrefix has the base name prefix; ok
// is false for any other name.
func TrackFile(prefix, name string) (what string, ok bool) {
	rest, found := strings.CutPrefix(name, prefix+".")
	if !found {
		return "", false
	}
	isEpoch := func(s string) bool {
		_, err := strconv.ParseUint(s, 10, 64)
		return err == nil
	}
	if e, found := strings.CutPrefix(rest, "row."); found && isEpoch(e) {
		return "side file of redirected writes (epoch " + e + ")", true
	}
	if e, found := strings.CutSuffix(rest, ".tmp"); found && isEpoch(e) {
		return "change-tracking file being created (epoch " + e + ")", true
	}
	if isEpoch(rest) {
		return "change-tracking file (epoch " + rest + ")", true
	}
	if rest == "failed" {
		return "failure marks of snapshots (failmark.go)", true
	}
	if rest == "cbw" {
		return "copy-before-write journal of an older cairnd", true
	}
	return "", false
}
