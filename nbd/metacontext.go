package nbd

import (
	"slices"
	"strings"

	"github.com/cairn-storage/cairn/block"
)

// Meta contexts ("Metadata querying"). An export offers base:allocation,
// answered by its block.Device, plus whatever Export.Contexts returns (for
// example qemu:dirty-bitmap:SNAP). Query syntax, as documented by the spec
// for base: and by qemu for qemu::
//
//   - NBD_OPT_LIST_META_CONTEXT with no queries lists every context.
//   - A query ending in a colon ("base:", "qemu:", "qemu:dirty-bitmap:")
//     lists every context whose name starts with it; in
//     NBD_OPT_SET_META_CONTEXT it selects nothing.
//   - Any other query matches the context of exactly that name.
//   - A query without a colon is invalid (NBD_REP_ERR_INVALID); a query in
//     an unknown namespace matches nothing.

// selectedContext is one context chosen by NBD_OPT_SET_META_CONTEXT.
type selectedContext struct {
	id   uint32
	name string
	src  block.ExtentMap
}

// availableContexts returns the contexts e offers, base:allocation first
// and the rest sorted by name.
func availableContexts(e *Export) (names []string, byName map[string]block.ExtentMap) {
	byName = map[string]block.ExtentMap{ctxBaseAllocation: e.Device}
	if e.Contexts != nil {
		for name, mc := range e.Contexts() {
			if mc != nil && validContextName(name) && name != ctxBaseAllocation {
				byName[name] = mc
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	return append([]string{ctxBaseAllocation}, names...), byName
}

// validContextName: a non-empty namespace, a colon, a leaf; no NUL; at
// most 4096 bytes ("Metadata querying", "Conventions").
func validContextName(name string) bool {
	i := strings.IndexByte(name, ':')
	return i > 0 && i < len(name)-1 && len(name) <= maxStringLen && !strings.ContainsRune(name, 0)
}

// matchContexts returns the names among available (in that order) that the
// queries select. list is true for NBD_OPT_LIST_META_CONTEXT, where empty
// leaf names are wildcards and no queries means all. ok is false when a
// query has no namespace.
func matchContexts(available []string, queries []string, list bool) (matched []string, ok bool) {
	for _, q := range queries {
		if strings.IndexByte(q, ':') <= 0 {
			return nil, false
		}
	}
	if len(queries) == 0 {
		if list {
			return available, true
		}
		return nil, true
	}
	for _, name := range available {
		for _, q := range queries {
			if name == q || list && strings.HasSuffix(q, ":") && strings.HasPrefix(name, q) {
				matched = append(matched, name)
				break
			}
		}
	}
	return matched, true
}
