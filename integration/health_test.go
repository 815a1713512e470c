package integration

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRoleHealth runs health level role: a replica whose replication stops
// leaves the read-only route and comes back when it restarts, and a
// switchover (old primary read-only, a replica made writable) moves the
// read-write route, closing the sessions left on the old primary, without
// ever having sessions on two destinations of the route at once.
func TestRoleHealth(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	h := startHamr(t, hamrConfig{Level: "role", Routes: []routeConfig{rw, ro}})
	rwAddr, roAddr := Addr(rw.Port), Addr(ro.Port)
	p0, p1, p2 := topo.Servers[0].Port, topo.Servers[1].Port, topo.Servers[2].Port
	if err := topo.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitDest("ro", topo.Addr(1), true, 10*time.Second)
	h.waitDest("ro", topo.Addr(2), true, 10*time.Second)

	t.Run("replica with replication stopped leaves ro", func(t *testing.T) {
		if err := topo.Exec(ctx, 2, "STOP SLAVE"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		h.waitDest("ro", topo.Addr(2), false, 10*time.Second)
		t.Logf("replica 2 marked down %v after STOP SLAVE (fall = %d, interval %v)", time.Since(start).Round(time.Millisecond), fall, checkInterval)
		for range 4 {
			if got := mustPortVia(t, roAddr); got != p1 {
				t.Fatalf("ro with replica 2 stopped reaches %d, want %d", got, p1)
			}
		}
		if err := topo.Exec(ctx, 2, "START SLAVE"); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		h.waitDest("ro", topo.Addr(2), true, 10*time.Second)
		t.Logf("replica 2 marked up %v after START SLAVE (rise = %d)", time.Since(start).Round(time.Millisecond), rise)
		seen := map[int]bool{}
		for range 4 {
			seen[mustPortVia(t, roAddr)] = true
		}
		if !seen[p1] || !seen[p2] {
			t.Fatalf("ro after START SLAVE reaches %v, want both replicas %d and %d", seen, p1, p2)
		}
	})

	t.Run("switchover moves rw and closes old sessions", func(t *testing.T) {
		old, err := connect(ctx, rwAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		if got, err := old.port(ctx); err != nil || got != p0 {
			t.Fatalf("session before switchover: port %d, %v; want %d", got, err, p0)
		}

		// Watch /status while clients come and go through rw.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var polls, violations atomic.Int64
		var mu sync.Mutex
		var firstViolation string
		seenOn := map[string]bool{} // destinations seen holding rw sessions
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := h.route("rw")
				if err != nil {
					continue
				}
				polls.Add(1)
				var with []string
				for _, d := range r.Destinations {
					if d.Sessions > 0 {
						with = append(with, fmt.Sprintf("%s=%d", d.Address, d.Sessions))
					}
				}
				mu.Lock()
				for _, d := range r.Destinations {
					if d.Sessions > 0 {
						seenOn[d.Address] = true
					}
				}
				if len(with) > 1 {
					if violations.Add(1) == 1 {
						firstViolation = strings.Join(with, " ")
					}
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					s, err := connect(ctx, rwAddr)
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue // refused while no destination is writable
					}
					s.port(ctx)
					time.Sleep(30 * time.Millisecond)
					s.Close()
				}
			}()
		}
		defer func() {
			select {
			case <-stop:
			default:
				close(stop)
			}
			wg.Wait()
		}()

		time.Sleep(300 * time.Millisecond)
		// The switchover an operator (or orchestrator) performs.
		if err := topo.Exec(ctx, 0, "SET GLOBAL read_only = ON"); err != nil {
			t.Fatal(err)
		}
		if err := topo.Exec(ctx, 1, "STOP SLAVE", "SET GLOBAL read_only = OFF"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, 10*time.Second, "rw to reach the new primary", func() (bool, error) {
			p, err := portVia(ctx, rwAddr)
			return err == nil && p == p1, err
		})
		t.Logf("rw moved to the writable server %v after the switchover", time.Since(start).Round(time.Millisecond))
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()

		// The old session is closed: its next query fails.
		if got, err := old.port(ctx); err == nil {
			t.Errorf("session opened to the old primary still works after the move (port %d); want it closed", got)
		}
		mu.Lock()
		defer mu.Unlock()
		t.Logf("/status polled %d times during the switchover; rw sessions seen on %v", polls.Load(), seenOn)
		if violations.Load() > 0 {
			t.Errorf("/status showed rw sessions on two destinations at once %d times (first: %s)", violations.Load(), firstViolation)
		}
		if polls.Load() < 20 || !seenOn[topo.Addr(0)] || !seenOn[topo.Addr(1)] {
			t.Errorf("the invariant check saw too little: %d polls, sessions seen on %v; want sessions on both %s and %s",
				polls.Load(), seenOn, topo.Addr(0), topo.Addr(1))
		}
		if r, err := h.route("rw"); err != nil || r.Primary != topo.Addr(1) {
			t.Errorf("/status rw primary = %q (%v), want %s", r.Primary, err, topo.Addr(1))
		}
	})
}

// TestLoginChecksDoNotBlockHost runs login-level health checks every 50 ms
// for 3 s against a server with max_connect_errors = 2. Each check must log
// in and quit: the server counts no aborted connect, and a new client can
// still log in (no error 1129, host blocked).
func TestLoginChecksDoNotBlockHost(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{ServerArgs: []string{"--max-connect-errors=2"}})

	// Control: a bare TCP connect is an aborted connect to MariaDB, which
	// is what a tcp-level check would cost on every interval.
	aborted := func() int64 {
		t.Helper()
		n, err := topo.GlobalStatus(ctx, 0, "Aborted_connects")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := aborted()
	c, err := net.Dial("tcp", topo.Addr(0))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, 5*time.Second, "a bare TCP connect to count as an aborted connect", func() (bool, error) {
		return aborted() > before, nil
	})

	before = aborted()
	clientsBefore, err := topo.GlobalStatus(ctx, 0, "Aborted_clients")
	if err != nil {
		t.Fatal(err)
	}
	connsBefore, err := topo.GlobalStatus(ctx, 0, "Connections")
	if err != nil {
		t.Fatal(err)
	}
	r := routeConfig{Name: "rw", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: []string{topo.Addr(0)}}
	h := startHamr(t, hamrConfig{Level: "login", Interval: 50 * time.Millisecond, Routes: []routeConfig{r}})
	time.Sleep(3 * time.Second)
	after := aborted()
	conns, err := topo.GlobalStatus(ctx, 0, "Connections")
	if err != nil {
		t.Fatal(err)
	}
	clients, err := topo.GlobalStatus(ctx, 0, "Aborted_clients")
	if err != nil {
		t.Fatal(err)
	}
	checks := conns - connsBefore
	t.Logf("3 s of login checks: %d connections, Aborted_connects %d -> %d, Aborted_clients %d -> %d",
		checks, before, after, clientsBefore, clients)
	if checks < 20 {
		t.Errorf("only %d connections reached the server in 3 s of checks every 50 ms; are the checks running?", checks)
	}
	if after != before {
		t.Errorf("Aborted_connects grew from %d to %d during login-level checks; want no aborted connect", before, after)
	}
	// A check that logs in and then drops the connection without COM_QUIT
	// is an aborted client: a warning in the server's error log each time.
	if clients != clientsBefore {
		t.Errorf("Aborted_clients grew from %d to %d during login-level checks; want each check to end with COM_QUIT", clientsBefore, clients)
	}
	if up, err := h.destUp("rw", topo.Addr(0)); err != nil || !up {
		t.Errorf("/status: destination up = %v (%v), want up", up, err)
	}
	for _, addr := range []string{topo.Addr(0), Addr(r.Port)} {
		if _, err := portVia(ctx, addr); err != nil {
			t.Errorf("new client login via %s after the checks: %v", addr, err)
		}
	}
}
