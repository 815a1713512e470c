package routing

import (
	"errors"
	"sync"
	"testing"
)

var dests = []string{"a:1", "b:2", "c:3"}

// op is one step of a scenario: mark a destination up or down, reset, or
// expect the next picks.
type op struct {
	down, up int // index to mark, or -1
	reset    bool
	want     []string // addresses the next picks return, in order; "" = ErrNoDestination
}

func down(i int, want ...string) op { return op{down: i, up: -1, want: want} }
func up(i int, want ...string) op   { return op{down: -1, up: i, want: want} }
func reset(want ...string) op       { return op{down: -1, up: -1, reset: true, want: want} }
func picks(want ...string) op       { return op{down: -1, up: -1, want: want} }

func run(t *testing.T, r *Route, ops []op) {
	t.Helper()
	for n, o := range ops {
		switch {
		case o.down >= 0:
			r.SetUp(o.down, false)
		case o.up >= 0:
			r.SetUp(o.up, true)
		case o.reset:
			r.Reset()
		}
		for k, w := range o.want {
			p, err := r.Pick()
			got := p.Addr
			if err != nil {
				if !errors.Is(err, ErrNoDestination) {
					t.Fatalf("step %d pick %d: unexpected error %v", n, k, err)
				}
				got = ""
			}
			if got != w {
				t.Fatalf("step %d pick %d: got %q, want %q", n, k, got, w)
			}
		}
	}
}

func TestStrategies(t *testing.T) {
	tests := []struct {
		name     string
		strategy Strategy
		ops      []op
	}{
		{"first-available starts on the first", FirstAvailable, []op{picks("a:1", "a:1")}},
		{"first-available fails over in list order", FirstAvailable, []op{
			down(0, "b:2", "b:2"), down(1, "c:3")}},
		{"first-available is sticky after recovery", FirstAvailable, []op{
			down(0, "b:2"), up(0, "b:2", "b:2")}},
		{"first-available does not move when a non-primary recovers", FirstAvailable, []op{
			down(0, "b:2"), down(2, "b:2"), up(2, "b:2")}},
		{"first-available reset moves back", FirstAvailable, []op{
			down(0, "b:2"), up(0, "b:2"), reset("a:1")}},
		{"first-available reset while first still down", FirstAvailable, []op{
			down(0, "b:2"), down(1, "c:3"), up(1, "c:3"), reset("b:2")}},
		{"first-available all down", FirstAvailable, []op{
			down(0), down(1), down(2, "", "")}},
		{"first-available recovery from all down takes the first that comes up", FirstAvailable, []op{
			down(0), down(1), down(2, ""), up(2, "c:3"), up(0, "c:3"), reset("a:1")}},
		{"first-available skips a down destination when the primary fails", FirstAvailable, []op{
			down(1, "a:1"), down(0, "c:3")}},
		{"next-available never reuses a failed destination", NextAvailable, []op{
			down(0, "b:2"), up(0, "b:2"), down(1, "c:3"), up(1, "c:3"), down(2, "")}},
		{"next-available exhausted stays down until reset", NextAvailable, []op{
			down(0), down(1), down(2, ""), up(0, ""), up(1, ""), reset("a:1")}},
		{"next-available reset while first down", NextAvailable, []op{
			down(0, "b:2"), reset("b:2"), up(0, "b:2"), reset("a:1")}},
		{"round-robin rotates", RoundRobin, []op{picks("a:1", "b:2", "c:3", "a:1")}},
		{"round-robin skips down", RoundRobin, []op{
			down(1, "a:1", "c:3", "a:1", "c:3")}},
		{"round-robin takes recovered back", RoundRobin, []op{
			down(1, "a:1", "c:3"), up(1, "a:1", "b:2", "c:3")}},
		{"round-robin all down", RoundRobin, []op{down(0), down(1), down(2, "")}},
		{"round-robin reset restarts rotation", RoundRobin, []op{picks("a:1"), reset("a:1", "b:2")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New("r", tt.strategy, dests, nil)
			if err != nil {
				t.Fatal(err)
			}
			run(t, r, tt.ops)
		})
	}
}

func TestFallback(t *testing.T) {
	rw, err := New("rw", FirstAvailable, []string{"p:1", "q:2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := New("ro", RoundRobinWithFallback, []string{"r1:1", "r2:2"}, rw)
	if err != nil {
		t.Fatal(err)
	}
	run(t, ro, []op{picks("r1:1", "r2:2"), down(0, "r2:2"), down(1, "p:1", "p:1")})
	p, _ := ro.Pick()
	if p.Route != rw || p.Index != 0 {
		t.Fatalf("fallback pick = %+v, want route rw index 0", p)
	}
	rw.SetUp(0, false)
	run(t, ro, []op{picks("q:2"), up(0, "r1:1")})
	rw.SetUp(1, false)
	ro.SetUp(0, false)
	if ro.Available() {
		t.Fatal("Available with no replica and no primary")
	}
	run(t, ro, []op{picks("")})

	if _, err := New("x", RoundRobinWithFallback, dests, nil); err == nil {
		t.Fatal("round-robin-with-fallback without a fallback route accepted")
	}
	if _, err := New("x", RoundRobinWithFallback, dests, ro); err == nil {
		t.Fatal("round-robin-with-fallback to a round-robin route accepted")
	}
}

// TestSetFallback: a read-only route re-pointed at a new fallback route
// keeps its own state, falls back to the new route's primary, and tells
// its watchers.
func TestSetFallback(t *testing.T) {
	old, _ := New("rw", FirstAvailable, []string{"p:1"}, nil)
	ro, err := New("ro", RoundRobinWithFallback, []string{"r1:1", "r2:2"}, old)
	if err != nil {
		t.Fatal(err)
	}
	ro.SetUp(1, false)
	ro.Pick() // advance the rotation: it must survive the swap
	calls := 0
	ro.Watch(func() { calls++ })
	rw, _ := New("rw", FirstAvailable, []string{"q:2", "p:1"}, nil)
	if err := ro.SetFallback(rw); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || ro.Fallback() != rw {
		t.Fatalf("after SetFallback: %d watcher calls, fallback %p; want 1 call and %p", calls, ro.Fallback(), rw)
	}
	if st := ro.State(); st[0].Up != true || st[1].Up != false {
		t.Fatalf("own state after SetFallback: %+v, want r1 up, r2 down", st)
	}
	ro.SetUp(0, false)
	if p, err := ro.Pick(); err != nil || p.Route != rw || p.Addr != "q:2" {
		t.Fatalf("fallback pick = %+v, %v; want the new route's primary q:2", p, err)
	}
	// nil: the new fallback did not start. The route serves its own
	// destinations and has nothing to fall back to.
	if err := ro.SetFallback(nil); err != nil || calls != 3 || ro.Fallback() != nil {
		t.Fatalf("SetFallback(nil) = %v; %d watcher calls, fallback %p; want nil, 3 calls (SetUp made one), nil", err, calls, ro.Fallback())
	}
	if p, err := ro.Pick(); !errors.Is(err, ErrNoDestination) || ro.Available() {
		t.Errorf("without fallback, replicas down: Pick = %+v, %v; Available %v; want ErrNoDestination, false", p, err, ro.Available())
	}
	ro.SetUp(1, true)
	if p, err := ro.Pick(); err != nil || p.Addr != "r2:2" || !ro.Available() {
		t.Errorf("without fallback, r2 up: Pick = %+v, %v; Available %v; want r2:2, true", p, err, ro.Available())
	}
	if err := ro.SetFallback(ro); err == nil {
		t.Error("SetFallback to a round-robin route accepted")
	}
	if err := rw.SetFallback(old); err == nil {
		t.Error("SetFallback on a first-available route accepted")
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New("x", "random", dests, nil); err == nil {
		t.Fatal("unknown strategy accepted")
	}
	if _, err := New("x", FirstAvailable, nil, nil); err == nil {
		t.Fatal("empty destinations accepted")
	}
}

func TestEpochAndCurrent(t *testing.T) {
	r, _ := New("rw", FirstAvailable, dests, nil)
	p, _ := r.Pick()
	if !r.Current(p) {
		t.Fatal("fresh pick not current")
	}
	r.SetUp(2, false) // not the primary: nothing moves
	if !r.Current(p) {
		t.Fatal("pick made stale by a change that did not move the primary")
	}
	r.SetUp(0, false)
	if r.Current(p) {
		t.Fatal("pick still current after the primary moved")
	}
	r.SetUp(0, true)
	if r.Current(p) {
		t.Fatal("pick current again after the old primary recovered (primary is sticky on b)")
	}
	if r.Reset(); r.Current(p) {
		t.Fatal("a pick from an older epoch must stay stale even when the index matches again")
	}
}

func TestWatch(t *testing.T) {
	r, _ := New("rw", FirstAvailable, dests, nil)
	var calls int
	r.Watch(func() { calls++ })
	r.SetUp(1, false) // change: up/down
	r.SetUp(1, false) // no change
	r.SetUp(0, false) // primary moves
	if calls != 2 {
		t.Fatalf("watch called %d times, want 2", calls)
	}
	r.Reset() // primary on b, a down: nothing moves
	if calls != 2 {
		t.Fatalf("watch called on a reset that moved nothing")
	}
	r.SetUp(0, true)
	r.Reset()
	if calls != 4 {
		t.Fatalf("watch called %d times, want 4", calls)
	}
	if got := r.State(); !got[0].Primary || got[1].Up {
		t.Fatalf("state = %+v", got)
	}
	var other int
	stop := r.Watch(func() { other++ })
	r.SetUp(1, true)
	stop()
	stop() // twice: harmless
	r.SetUp(1, false)
	if calls != 6 || other != 1 {
		t.Fatalf("after stop: %d and %d calls, want 6 for the first watcher and 1 for the stopped one", calls, other)
	}
}

// TestMarkDown: the state changes at once, the watchers only when the
// caller makes the returned call, and a destination already down returns
// nothing to call.
func TestMarkDown(t *testing.T) {
	r, _ := New("rw", FirstAvailable, dests, nil)
	var calls int
	r.Watch(func() { calls++ })
	notify := r.MarkDown(0)
	if notify == nil {
		t.Fatal("MarkDown of the primary returned no notification")
	}
	if p := r.Primary(); p != 1 || calls != 0 {
		t.Fatalf("after MarkDown: primary %d, %d watcher calls; want 1, 0", p, calls)
	}
	if pk, err := r.Pick(); err != nil || pk.Index != 1 {
		t.Fatalf("Pick after MarkDown = %+v, %v; want index 1", pk, err)
	}
	notify()
	if calls != 1 {
		t.Fatalf("watcher called %d times after notify, want 1", calls)
	}
	if r.MarkDown(0) != nil {
		t.Error("MarkDown of a destination already down returned a notification")
	}
}

// TestConcurrentPicks checks that round-robin spreads evenly under
// concurrent picks, and that concurrent picks and state changes leave a
// first-available route with a primary that is up (for the race
// detector, too: every access to the state is under the lock).
func TestConcurrentPicks(t *testing.T) {
	r, _ := New("ro", RoundRobin, dests, nil)
	const workers, each = 8, 300
	counts := make([][3]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				p, err := r.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				counts[w][p.Index]++
			}
		}()
	}
	wg.Wait()
	var total [3]int
	for _, c := range counts {
		for i := range c {
			total[i] += c[i]
		}
	}
	for i, n := range total {
		if n != workers*each/3 {
			t.Errorf("destination %d got %d picks, want %d (round-robin under concurrency)", i, n, workers*each/3)
		}
	}

	rw, _ := New("rw", FirstAvailable, dests, nil)
	var flip sync.WaitGroup
	flip.Add(1)
	go func() {
		defer flip.Done()
		for k := range 1000 {
			rw.SetUp(k%3, k%2 == 0)
		}
	}()
	for range 2000 {
		if p, err := rw.Pick(); err == nil && (p.Index < 0 || p.Index > 2) {
			t.Fatalf("bad pick %+v", p)
		}
	}
	flip.Wait()
	// Whatever happened, the primary must be up.
	st := rw.State()
	for _, d := range st {
		if d.Primary && !d.Up {
			t.Fatalf("primary %s is down: %+v", d.Addr, st)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, s := range []Strategy{FirstAvailable, RoundRobin} {
		b.Run(string(s), func(b *testing.B) {
			r, _ := New("r", s, dests, nil)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := r.Pick(); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestInherit: a route that replaces another keeps the state of the
// destinations both list, and the primary where it was.
func TestInherit(t *testing.T) {
	prev, _ := New("rw", FirstAvailable, []string{"a:1", "b:1", "c:1"}, nil)
	prev.SetUp(0, false) // the primary moves to b
	prev.SetUp(0, true)  // and stays there: sticky
	prev.SetUp(2, false)
	next, _ := New("rw", FirstAvailable, []string{"a:1", "b:1", "c:1", "d:1"}, nil)
	calls := 0
	next.Watch(func() { calls++ })
	next.Inherit(prev)
	if p := next.Primary(); p != 1 {
		t.Errorf("primary after Inherit = %d, want 1 (b, sticky)", p)
	}
	st := next.State()
	if !st[0].Up || !st[1].Up || st[2].Up || !st[3].Up {
		t.Errorf("state after Inherit: %+v; want c down, the others up", st)
	}
	if calls != 1 {
		t.Errorf("%d watcher calls, want 1", calls)
	}
	// next-available keeps its failed marks: a destination that failed
	// before the reload is not taken again after the next failure.
	nprev, _ := New("rw", NextAvailable, []string{"a:1", "b:1", "c:1"}, nil)
	nprev.SetUp(0, false) // a fails: b is primary, a burned
	nprev.SetUp(0, true)
	nnext, _ := New("rw", NextAvailable, []string{"a:1", "b:1", "c:1"}, nil)
	nnext.Inherit(nprev)
	if st := nnext.State(); !st[0].Burned || !st[1].Primary {
		t.Errorf("next-available after Inherit: %+v; want a burned, b primary", st)
	}
	nnext.SetUp(1, false) // b fails: c, not a
	if p := nnext.Primary(); p != 2 {
		t.Errorf("next-available primary after b failed = %d, want 2 (c; a failed before the reload)", p)
	}

	// The old primary not listed any more: the first usable one.
	gone, _ := New("rw", FirstAvailable, []string{"c:1", "a:1"}, nil)
	gone.Inherit(prev)
	if p := gone.Primary(); p != 1 {
		t.Errorf("primary when the old one is not listed = %d, want 1 (a; c is down)", p)
	}
}
