package nbdtest

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/cairn-storage/cairn/nbd"
)

// Exports is a map-based nbd.Exporter. It counts the connections holding
// each export open.
type Exports struct {
	mu   sync.Mutex
	exps map[string]*nbd.Export // guarded by mu
	open map[string]int         // guarded by mu: opens not yet released
	ever map[string]int         // guarded by mu: opens ever
}

var _ nbd.Exporter = (*Exports)(nil)

// NewExports returns an Exporter serving exps.
func NewExports(exps ...*nbd.Export) *Exports {
	e := &Exports{exps: make(map[string]*nbd.Export), open: make(map[string]int), ever: make(map[string]int)}
	for _, x := range exps {
		e.Add(x)
	}
	return e
}

// Add adds or replaces an export.
func (e *Exports) Add(x *nbd.Export) {
	e.mu.Lock()
	e.exps[x.Name] = x
	e.mu.Unlock()
}

// Open implements nbd.Exporter.
func (e *Exports) Open(_ context.Context, name string) (*nbd.Export, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x, ok := e.exps[name]
	if !ok {
		return nil, nil, fmt.Errorf("%w: %q", nbd.ErrUnknownExport, name)
	}
	e.open[name]++
	e.ever[name]++
	var once sync.Once
	return x, func() {
		once.Do(func() {
			e.mu.Lock()
			e.open[name]--
			e.mu.Unlock()
		})
	}, nil
}

// OpenCount is how many opens of name have not been released.
func (e *Exports) OpenCount(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.open[name]
}

// Opened is how many times name has been opened.
func (e *Exports) Opened(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ever[name]
}

// List implements nbd.Exporter, sorted by name.
func (e *Exports) List(context.Context) []nbd.ExportInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []nbd.ExportInfo
	for _, x := range e.exps {
		out = append(out, nbd.ExportInfo{Name: x.Name, Description: x.Description})
	}
	slices.SortFunc(out, func(a, b nbd.ExportInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}
