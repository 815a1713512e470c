package integration

import (
	"context"
	"testing"
	"time"
)

// TestSplitBrain makes a replica writable while the primary stays writable
// (a split brain on the database side) under role checks: hamr counts and
// logs it, and keeps the read-write primary where it is, open session
// included. When the replica is read-only again, the gauge goes back to 1.
func TestSplitBrain(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	h := startHamr(t, hamrConfig{Level: "role", Routes: []routeConfig{rw, ro}})
	rwAddr := Addr(rw.Port)
	p0 := topo.Servers[0].Port
	const (
		writable = "hamr_route_writable_destinations"
		splits   = "hamr_route_split_brain_total"
		moves    = "hamr_route_primary_moves_total"
	)

	// The replicas are read-only: down for rw, one writer.
	h.waitDest("rw", topo.Addr(1), false, 10*time.Second)
	h.waitDest("rw", topo.Addr(2), false, 10*time.Second)
	h.waitMetric(1, 10*time.Second, writable, "route", "rw")
	movesBefore, err := h.metric(moves, "route", "rw")
	if err != nil {
		t.Fatal(err)
	}
	open, err := connect(ctx, rwAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if got, err := open.port(ctx); err != nil || got != p0 {
		t.Fatalf("rw session before the split brain: port %d, %v; want the primary %d", got, err, p0)
	}

	if err := topo.Exec(ctx, 1, "SET GLOBAL read_only = OFF"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	h.waitMetric(2, 10*time.Second, writable, "route", "rw")
	h.waitMetric(1, 5*time.Second, splits, "route", "rw")
	t.Logf("split brain seen %v after SET GLOBAL read_only = OFF on replica 1", time.Since(start).Round(time.Millisecond))
	waitFor(t, 5*time.Second, `a "split brain" line in hamr's log`, func() (bool, error) {
		return h.logContains("split brain"), nil
	})
	// Replica 1 is up for rw now (writable), but the primary stays.
	if up, err := h.destUp("rw", topo.Addr(1)); err != nil || !up {
		t.Errorf("/status: writable replica 1 up for rw = %v (%v); want up", up, err)
	}
	for range 5 {
		if got := mustPortVia(t, rwAddr); got != p0 {
			t.Fatalf("rw during the split brain reaches %d, want it to stay on the primary %d", got, p0)
		}
	}
	if r, err := h.route("rw"); err != nil || r.Primary != topo.Addr(0) {
		t.Errorf("/status rw primary during the split brain = %q (%v), want %s", r.Primary, err, topo.Addr(0))
	}
	if got, err := open.port(ctx); err != nil || got != p0 {
		t.Errorf("rw session opened before the split brain: port %d, %v; want it kept on %d", got, err, p0)
	}

	if err := topo.Exec(ctx, 1, "SET GLOBAL read_only = ON"); err != nil {
		t.Fatal(err)
	}
	h.waitMetric(1, 10*time.Second, writable, "route", "rw")
	h.waitDest("rw", topo.Addr(1), false, 10*time.Second)
	m, err := h.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if got := m[series(splits, "route", "rw")]; got != 1 {
		t.Errorf("%s = %v after the split brain ended; want 1 (one episode)", series(splits, "route", "rw"), got)
	}
	if got := m[series(moves, "route", "rw")]; got != movesBefore {
		t.Errorf("%s went from %v to %v across the split brain; want no primary move", series(moves, "route", "rw"), movesBefore, got)
	}
	if got := mustPortVia(t, rwAddr); got != p0 {
		t.Errorf("rw after the split brain reaches %d, want the primary %d", got, p0)
	}
	if got, err := open.port(ctx); err != nil || got != p0 {
		t.Errorf("rw session opened before the split brain, after it: port %d, %v; want %d", got, err, p0)
	}

	// Another split brain, then a reload from role to login checks: with
	// no role checks the gauge goes, rather than report 2 (and keep a
	// split-brain alert firing) for ever.
	if err := topo.Exec(ctx, 1, "SET GLOBAL read_only = OFF"); err != nil {
		t.Fatal(err)
	}
	defer topo.Exec(ctx, 1, "SET GLOBAL read_only = ON")
	h.waitMetric(2, 10*time.Second, writable, "route", "rw")
	h.reload(t, hamrConfig{Level: "login", Routes: []routeConfig{rw, ro}})
	waitFor(t, 5*time.Second, writable+" gone after the reload to login checks", func() (bool, error) {
		m, err := h.metrics()
		return err == nil && !hasSeries(m, series(writable, "route", "rw")), err
	})
}

// TestReplicaBlip checks the read-only side of role checks with fall = 3:
// a replica that fails fewer than fall checks stays up, in rotation and
// with its sessions; a replica that is marked down keeps its open sessions
// (hamr does not cut reads) while new sessions avoid it.
func TestReplicaBlip(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	const roFall = 3
	ro.Extra += "\n[routing.ro.health]\nfall = 3\ninterval = \"200ms\"\n"
	h := startHamr(t, hamrConfig{Level: "role", Routes: []routeConfig{rw, ro}})
	roAddr := Addr(ro.Port)
	if err := topo.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitDest("ro", topo.Addr(1), true, 10*time.Second)
	h.waitDest("ro", topo.Addr(2), true, 10*time.Second)

	// A session through ro decides which replica the test disturbs.
	sess, err := connect(ctx, roAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	target, err := sess.port(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, other := 1, 2
	if target == topo.Servers[2].Port {
		k, other = 2, 1
	} else if target != topo.Servers[1].Port {
		t.Fatalf("ro session reaches %d, not a replica (%v)", target, topo.Ports()[1:])
	}
	addrK := topo.Addr(k)
	pOther := topo.Servers[other].Port

	t.Run("one failed check keeps the replica and its session", func(t *testing.T) {
		const checks, transitions = "hamr_health_checks_total", "hamr_destination_transitions_total"
		m, err := h.metrics()
		if err != nil {
			t.Fatal(err)
		}
		failedKey := series(checks, "route", "ro", "destination", addrK, "reason", "replication")
		transKey := series(transitions, "route", "ro", "destination", addrK)
		failedBefore, transBefore := m[failedKey], m[transKey]

		// Stop replication until exactly one check has seen it stopped,
		// then start it again before the next (200 ms later).
		if err := topo.Exec(ctx, k, "STOP SLAVE"); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		var failedAt float64
		waitFor(t, 5*time.Second, "a health check of replica "+addrK+" to fail on replication", func() (bool, error) {
			v, err := h.metric(checks, "route", "ro", "destination", addrK, "reason", "replication")
			failedAt = v
			return err == nil && v > failedBefore, err
		})
		if err := topo.Exec(ctx, k, "START SLAVE"); err != nil {
			t.Fatal(err)
		}
		t.Logf("replication stopped for %v on replica %d", time.Since(stopped).Round(time.Millisecond), k)
		// The next good check clears the reason.
		waitFor(t, 5*time.Second, "a good check of replica "+addrK, func() (bool, error) {
			r, err := h.route("ro")
			if err != nil {
				return false, err
			}
			for _, d := range r.Destinations {
				if d.Address == addrK {
					return d.Reason == "ok", nil
				}
			}
			return false, nil
		})

		m, err = h.metrics()
		if err != nil {
			t.Fatal(err)
		}
		failed := m[failedKey] - failedBefore
		t.Logf("replica %d failed %v check(s) in a row (%v when START SLAVE was sent); fall = %d", k, failed, failedAt-failedBefore, roFall)
		if failed < 1 || failed >= roFall {
			t.Fatalf("replica %d failed %v checks; the test needs 1..%d (fewer than fall)", k, failed, roFall-1)
		}
		if got := m[transKey]; got != transBefore {
			t.Errorf("%s went from %v to %v; want no transition for fewer than fall failed checks", transKey, transBefore, got)
		}
		if up, err := h.destUp("ro", addrK); err != nil || !up {
			t.Errorf("/status: replica %s up = %v (%v); want up", addrK, up, err)
		}
		if got, err := sess.port(ctx); err != nil || got != target {
			t.Errorf("ro session after the blip: port %d, %v; want it still on %d", got, err, target)
		}
		seen := map[int]bool{}
		for range 4 {
			seen[mustPortVia(t, roAddr)] = true
		}
		if !seen[target] || !seen[pOther] {
			t.Errorf("new ro sessions after the blip reach %v; want both replicas %d and %d", seen, target, pOther)
		}
	})

	t.Run("a replica marked down keeps its open sessions", func(t *testing.T) {
		if err := topo.Exec(ctx, k, "STOP SLAVE"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		h.waitDest("ro", addrK, false, 10*time.Second)
		t.Logf("replica %d marked down %v after STOP SLAVE (fall = %d, interval 200ms)", k, time.Since(start).Round(time.Millisecond), roFall)
		for range 3 {
			if got, err := sess.port(ctx); err != nil || got != target {
				t.Fatalf("ro session on the replica marked down: port %d, %v; want it to keep answering from %d", got, err, target)
			}
		}
		if r, err := h.route("ro"); err == nil {
			for _, d := range r.Destinations {
				if d.Address == addrK && d.Sessions != 1 {
					t.Errorf("/status: replica %s marked down shows %d sessions; want the open one (1)", addrK, d.Sessions)
				}
			}
		}
		for range 4 {
			if got := mustPortVia(t, roAddr); got != pOther {
				t.Fatalf("new ro session with replica %d down reaches %d, want %d", k, got, pOther)
			}
		}
		if err := topo.Exec(ctx, k, "START SLAVE"); err != nil {
			t.Fatal(err)
		}
		h.waitDest("ro", addrK, true, 10*time.Second)
		if got, err := sess.port(ctx); err != nil || got != target {
			t.Errorf("ro session after the replica came back: port %d, %v; want %d", got, err, target)
		}
	})
}
