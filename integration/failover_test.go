package integration

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFailover kills the primary and checks that no client notices, that
// the primary stays where it moved when the old one comes back, and that
// `hamr ctl reset-primary` moves it back on purpose.
func TestFailover(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	h := startHamr(t, hamrConfig{Routes: []routeConfig{rw, ro}})
	rwAddr := Addr(rw.Port)
	p0, p1 := topo.Servers[0].Port, topo.Servers[1].Port

	if got := mustPortVia(t, rwAddr); got != p0 {
		t.Fatalf("before failover: rw reaches %d, want the primary %d", got, p0)
	}

	if err := topo.Kill(0); err != nil {
		t.Fatal(err)
	}
	// The very next connection: hamr has not seen a health check fail yet,
	// dials the dead primary, and must move on without the client noticing.
	got, err := portVia(ctx, rwAddr)
	if err != nil {
		t.Fatalf("first rw connection after SIGKILL of the primary failed: %v", err)
	}
	if got != p1 {
		t.Fatalf("first rw connection after SIGKILL of the primary reached %d, want the next destination %d", got, p1)
	}
	for range 3 {
		if got := mustPortVia(t, rwAddr); got != p1 {
			t.Fatalf("after failover: rw reaches %d, want %d", got, p1)
		}
	}
	if r, err := h.route("rw"); err != nil || r.Primary != topo.Addr(1) {
		t.Errorf("/status rw primary = %q (%v), want %s", r.Primary, err, topo.Addr(1))
	}
	out, err := h.ctl("status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rw", topo.Addr(0), topo.Addr(1), "down", "up"} {
		if !strings.Contains(out, want) {
			t.Errorf("hamr ctl status after failover: missing %q in:\n%s", want, out)
		}
	}

	// The old primary comes back: hamr marks it up but keeps rw where it is.
	if err := topo.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	h.waitDest("rw", topo.Addr(0), true, 10*time.Second)
	for range 5 {
		if got := mustPortVia(t, rwAddr); got != p1 {
			t.Fatalf("old primary back up: rw reaches %d, want it to stay on %d", got, p1)
		}
	}

	if out, err := h.ctl("reset-primary", "rw"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("hamr ctl reset-primary rw: %s", strings.TrimSpace(out))
	}
	for range 3 {
		if got := mustPortVia(t, rwAddr); got != p0 {
			t.Fatalf("after reset-primary: rw reaches %d, want the first destination %d", got, p0)
		}
	}
	if r, err := h.route("rw"); err != nil || r.Primary != topo.Addr(0) {
		t.Errorf("after reset-primary: /status rw primary = %q (%v), want %s", r.Primary, err, topo.Addr(0))
	}
	// A read-only route has no primary; ctl says so, not "no destination
	// is up", while its replicas serve.
	if out, err := h.ctl("reset-primary", "ro"); err != nil || !strings.Contains(out, "is read-only: it has no primary") {
		t.Errorf("hamr ctl reset-primary ro: %v; want it to say the route has no primary:\n%s", err, out)
	}
}
