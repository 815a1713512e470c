package routing

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Strategy names how a Route picks a destination. The values are the names
// used in the configuration file.
type Strategy string

// Strategies.
const (
	FirstAvailable         Strategy = "first-available"
	NextAvailable          Strategy = "next-available"
	RoundRobin             Strategy = "round-robin"
	RoundRobinWithFallback Strategy = "round-robin-with-fallback"
)

// ErrNoDestination is returned by Pick when no destination is up.
var ErrNoDestination = errors.New("no destination available")

// Pick is the outcome of Route.Pick.
type Pick struct {
	Route *Route // the route the destination belongs to (the fallback route on fallback)
	Index int    // position of the destination in Route's list
	Addr  string // host:port
	// Epoch is the route's primary epoch when the pick was made. A session
	// dialed for a pick whose epoch is no longer current must not be kept
	// (the primary moved while it was being dialed).
	Epoch uint64
}

// Route is one route's destinations and strategy. It is safe for
// concurrent use. The zero value is not usable; call New.
type Route struct {
	name     string
	strategy Strategy
	dests    []string
	fallback atomic.Pointer[Route] // swapped by SetFallback

	mu       sync.Mutex
	up       []bool
	burned   []bool    // next-available: marked down since the last reset
	primary  int       // -1 when none; first-available and next-available only
	next     int       // round-robin cursor
	epoch    uint64    // incremented each time the primary changes
	watchers []*func() // replaced, never modified in place: notify reads a snapshot
}

// New returns a route over dests (host:port, in preference order) with every
// destination up. fallback is used only by RoundRobinWithFallback and must
// then be a primary-based route.
func New(name string, strategy Strategy, dests []string, fallback *Route) (*Route, error) {
	switch strategy {
	case FirstAvailable, NextAvailable, RoundRobin:
	case RoundRobinWithFallback:
		if fallback == nil || !fallback.hasPrimary() {
			return nil, fmt.Errorf("route %s: %s needs a first-available or next-available fallback route", name, strategy)
		}
	default:
		return nil, fmt.Errorf("route %s: unknown strategy %q", name, strategy)
	}
	if len(dests) == 0 {
		return nil, fmt.Errorf("route %s: no destinations", name)
	}
	r := &Route{
		name:     name,
		strategy: strategy,
		dests:    append([]string(nil), dests...),
		up:       make([]bool, len(dests)),
		burned:   make([]bool, len(dests)),
		primary:  -1,
	}
	r.fallback.Store(fallback)
	for i := range r.up {
		r.up[i] = true
	}
	if r.hasPrimary() {
		r.primary = 0
	}
	return r, nil
}

// Name returns the route's name.
func (r *Route) Name() string { return r.name }

// Strategy returns the route's strategy.
func (r *Route) Strategy() Strategy { return r.strategy }

// Destinations returns the destination list in preference order.
func (r *Route) Destinations() []string { return append([]string(nil), r.dests...) }

// Fallback returns the fallback route, or nil (none, or SetFallback(nil)).
func (r *Route) Fallback() *Route { return r.fallback.Load() }

// SetFallback makes fb the fallback of a round-robin-with-fallback route,
// in place of the one it had (a reload replaced that route): the route
// keeps its own state, and its watchers are told, since its availability
// may have changed. A nil fb leaves the route without a fallback until
// the next SetFallback: the route it fell back to is gone and its
// replacement did not start.
func (r *Route) SetFallback(fb *Route) error {
	switch {
	case r.strategy != RoundRobinWithFallback:
		return fmt.Errorf("route %s: %s has no fallback", r.name, r.strategy)
	case fb != nil && !fb.hasPrimary():
		return fmt.Errorf("route %s: %s needs a first-available or next-available fallback route", r.name, r.strategy)
	}
	r.fallback.Store(fb)
	r.mu.Lock()
	ws := r.watchers
	r.mu.Unlock()
	r.notify(ws)
	return nil
}

func (r *Route) hasPrimary() bool {
	return r.strategy == FirstAvailable || r.strategy == NextAvailable
}

// Watch registers fn to be called, without the route's lock held, after
// every change of state: a destination going up or down, or the primary
// moving. Calls may arrive concurrently and out of order, so fn should read
// the current state rather than trust its position in a sequence.
// The returned stop unregisters fn, so that a watcher with a shorter
// life (a route replaced by a reload) is not kept alive by this one; fn
// may still run once after stop, from a notification already under way.
func (r *Route) Watch(fn func()) (stop func()) {
	w := &fn
	r.mu.Lock()
	r.watchers = append(slices.Clip(r.watchers), w)
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		r.watchers = slices.DeleteFunc(slices.Clone(r.watchers), func(o *func()) bool { return o == w })
		r.mu.Unlock()
	}
}

func (r *Route) notify(ws []*func()) {
	for _, fn := range ws {
		(*fn)()
	}
}

// Pick chooses the destination for a new session. It returns
// ErrNoDestination (wrapped with the route's name) when none is up.
func (r *Route) Pick() (Pick, error) {
	r.mu.Lock()
	switch r.strategy {
	case FirstAvailable, NextAvailable:
		if r.primary >= 0 {
			p := Pick{Route: r, Index: r.primary, Addr: r.dests[r.primary], Epoch: r.epoch}
			r.mu.Unlock()
			return p, nil
		}
	default:
		n := len(r.dests)
		for k := 0; k < n; k++ {
			i := (r.next + k) % n
			if r.up[i] {
				r.next = (i + 1) % n
				p := Pick{Route: r, Index: i, Addr: r.dests[i], Epoch: r.epoch}
				r.mu.Unlock()
				return p, nil
			}
		}
	}
	r.mu.Unlock()
	if r.strategy == RoundRobinWithFallback {
		if fb := r.fallback.Load(); fb != nil {
			if p, err := fb.Pick(); err == nil {
				return p, nil
			}
		}
	}
	return Pick{}, fmt.Errorf("route %s: %w", r.name, ErrNoDestination)
}

// SetUp records whether destination i is up and reports whether that
// changed anything. Marking the primary down moves the primary; marking a
// destination up never takes the primary away from a primary that is up.
func (r *Route) SetUp(i int, up bool) bool {
	notify := r.setUp(i, up)
	if notify != nil {
		notify()
	}
	return notify != nil
}

// MarkDown is SetUp(i, false) without telling the watchers: it returns the
// call that tells them, or nil if nothing changed. A caller that must not
// wait for the watchers (a proxy's event loop, which goes on at once to the
// next destination) makes that call from another goroutine.
func (r *Route) MarkDown(i int) (notify func()) { return r.setUp(i, false) }

func (r *Route) setUp(i int, up bool) (notify func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i < 0 || i >= len(r.dests) || r.up[i] == up {
		return nil
	}
	r.up[i] = up
	if !up && r.strategy == NextAvailable {
		r.burned[i] = true
	}
	if r.hasPrimary() && (r.primary == i && !up || r.primary < 0 && up) {
		r.setPrimary(r.firstUsable())
	}
	ws := r.watchers
	return func() { r.notify(ws) }
}

// Reset moves the primary to the first destination in list order that is
// up, forgetting next-available's failed marks. It reports whether the
// primary moved. On strategies without a primary it only restarts the
// rotation.
func (r *Route) Reset() bool {
	r.mu.Lock()
	moved := false
	if r.hasPrimary() {
		clear(r.burned)
		p := r.firstUsable()
		moved = p != r.primary
		r.setPrimary(p)
	} else {
		r.next = 0
	}
	ws := r.watchers
	r.mu.Unlock()
	if moved {
		r.notify(ws)
	}
	return moved
}

// Inherit takes over the state of prev, the route of the same name that
// a reload replaced: each destination prev lists too keeps whether it is
// up (and next-available's failed mark), and a primary-based route keeps
// prev's primary when it lists it, so that a reload never moves writes
// by itself. Destinations new here start up. Watchers are told if
// anything changed.
func (r *Route) Inherit(prev *Route) {
	prev.mu.Lock()
	up := make(map[string]bool, len(prev.dests))
	burned := make(map[string]bool, len(prev.dests))
	for i, a := range prev.dests {
		up[a], burned[a] = prev.up[i], prev.burned[i]
	}
	primary := ""
	if prev.primary >= 0 {
		primary = prev.dests[prev.primary]
	}
	prev.mu.Unlock()

	r.mu.Lock()
	changed := false
	for i, a := range r.dests {
		if u, ok := up[a]; ok && u != r.up[i] {
			r.up[i], changed = u, true
		}
		r.burned[i] = burned[a]
	}
	if r.hasPrimary() {
		p := slices.Index(r.dests, primary)
		if p < 0 || !r.up[p] {
			p = r.firstUsable()
		}
		if p != r.primary {
			r.setPrimary(p)
			changed = true
		}
	}
	ws := r.watchers
	r.mu.Unlock()
	if changed {
		r.notify(ws)
	}
}

// firstUsable returns the first destination in list order that may be the
// primary, or -1. r.mu must be held.
func (r *Route) firstUsable() int {
	for i, up := range r.up {
		if up && !r.burned[i] {
			return i
		}
	}
	return -1
}

// setPrimary moves the primary to p. r.mu must be held.
func (r *Route) setPrimary(p int) {
	if p != r.primary {
		r.primary = p
		r.epoch++
	}
}

// Primary returns the index of the current primary, or -1 when there is
// none or the strategy has no primary.
func (r *Route) Primary() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.primary
}

// Current reports whether a session made for pick p may be kept: the
// primary has not moved since p was made. It is always true for strategies
// without a primary.
func (r *Route) Current(p Pick) bool {
	if !r.hasPrimary() {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return p.Epoch == r.epoch && p.Index == r.primary
}

// Available reports whether a new session could be routed now (including
// through the fallback route).
func (r *Route) Available() bool {
	r.mu.Lock()
	ok := false
	if r.hasPrimary() {
		ok = r.primary >= 0
	} else {
		for _, up := range r.up {
			ok = ok || up
		}
	}
	r.mu.Unlock()
	if fb := r.fallback.Load(); !ok && fb != nil {
		return fb.Available()
	}
	return ok
}

// DestinationState is one destination as seen by the route.
type DestinationState struct {
	Addr    string
	Up      bool
	Primary bool
	Burned  bool // next-available: failed since the last reset
}

// State returns a snapshot of the destinations in list order.
func (r *Route) State() []DestinationState {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := make([]DestinationState, len(r.dests))
	for i, a := range r.dests {
		s[i] = DestinationState{Addr: a, Up: r.up[i], Primary: i == r.primary, Burned: r.burned[i]}
	}
	return s
}
