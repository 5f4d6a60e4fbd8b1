package nbd

import (
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/block"
)

func TestMatchContexts(t *testing.T) {
	avail := []string{"base:allocation", "qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b", "x-other:thing"}
	tests := []struct {
		queries []string
		list    bool
		want    []string
		ok      bool
	}{
		{nil, true, avail, true},
		{nil, false, nil, true},
		{[]string{"base:"}, true, avail[:1], true},
		{[]string{"base:"}, false, nil, true},
		{[]string{"qemu:"}, true, avail[1:3], true},
		{[]string{"qemu:dirty-bitmap:"}, true, avail[1:3], true},
		{[]string{"qemu:dirty-bitmap:b"}, false, avail[2:3], true},
		{[]string{"qemu:dirty-bitmap:b", "qemu:dirty-bitmap:b"}, false, avail[2:3], true},
		{[]string{"qemu:dirty-bitmap:"}, false, nil, true},
		{[]string{"unknown:"}, true, nil, true},
		{[]string{"base:nope"}, false, nil, true},
		{[]string{"base:allocation", "nocolon"}, true, nil, false},
		{[]string{":leaf"}, false, nil, false},
	}
	for _, tt := range tests {
		got, ok := matchContexts(avail, tt.queries, tt.list)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("%q list=%v: %q %v, want %q %v", tt.queries, tt.list, got, ok, tt.want, tt.ok)
		}
	}
}

func TestAvailableContexts(t *testing.T) {
	e := &Export{Device: nil, Contexts: func() map[string]block.ExtentMap {
		return map[string]block.ExtentMap{
			"qemu:dirty-bitmap:b": fixedContext{}, "qemu:dirty-bitmap:a": fixedContext{},
			"base:allocation": fixedContext{}, // cannot replace the backend's
			"nonamespace":     fixedContext{}, "qemu:": fixedContext{}, "qemu:nil": nil,
		}
	}}
	names, byName := availableContexts(e)
	if want := []string{"base:allocation", "qemu:dirty-bitmap:a", "qemu:dirty-bitmap:b"}; !slices.Equal(names, want) {
		t.Fatalf("%q, want %q", names, want)
	}
	if len(byName) != 3 {
		t.Fatalf("%d contexts by name", len(byName))
	}
}
