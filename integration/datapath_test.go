package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestDataPath checks what a client sees on a healthy topology: the
// read-write port reaches the primary, the read-only port alternates over
// the replicas, max_connections refuses with 1040, and `hamr ctl status`
// shows it all.
func TestDataPath(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	limited := routeConfig{Name: "limited", Port: freePorts(t, 1)[0], Mode: "read-write",
		Dests: []string{topo.Addr(0)}, Extra: "max_connections = 2"}
	h := startHamr(t, hamrConfig{Routes: []routeConfig{rw, ro, limited}})

	t.Run("rw reaches the primary", func(t *testing.T) {
		for range 4 {
			if got := mustPortVia(t, Addr(rw.Port)); got != topo.Servers[0].Port {
				t.Fatalf("rw: @@port = %d, want the primary's %d", got, topo.Servers[0].Port)
			}
		}
	})

	t.Run("ro alternates over the replicas", func(t *testing.T) {
		var got []int
		for range 6 {
			got = append(got, mustPortVia(t, Addr(ro.Port)))
		}
		replicas := map[int]bool{topo.Servers[1].Port: true, topo.Servers[2].Port: true}
		for i, p := range got {
			if !replicas[p] {
				t.Fatalf("ro: ports %v: %d is not a replica (%v)", got, p, topo.Ports()[1:])
			}
			if i > 0 && p == got[i-1] {
				t.Fatalf("ro: ports %v do not alternate over the replicas", got)
			}
		}
	})

	t.Run("max_connections", func(t *testing.T) {
		addr := Addr(limited.Port)
		var open []*session
		defer func() {
			for _, s := range open {
				s.Close()
			}
		}()
		for i := range 2 {
			s, err := connect(ctx, addr)
			if err != nil {
				t.Fatalf("client %d of 2: %v", i+1, err)
			}
			open = append(open, s)
			if _, err := s.port(ctx); err != nil {
				t.Fatalf("client %d of 2: %v", i+1, err)
			}
		}
		_, err := portVia(ctx, addr)
		if err == nil {
			t.Fatal("third concurrent client connected; want error 1040")
		}
		if me := mysqlError(t, err); me.Number != 1040 || !strings.Contains(me.Message, "Too many connections") {
			t.Fatalf("third client: error %d %q; want 1040 Too many connections", me.Number, me.Message)
		}
		open[0].Close()
		open = open[1:]
		// The slot is released once hamr sees the session end.
		waitFor(t, 5*time.Second, "a client to connect after one left", func() (bool, error) {
			_, err := portVia(ctx, addr)
			return err == nil, err
		})
	})

	t.Run("ctl status", func(t *testing.T) {
		out, err := h.ctl("status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"rw", "ro", "limited", topo.Addr(0), topo.Addr(1), topo.Addr(2), "up"} {
			if !strings.Contains(out, want) {
				t.Errorf("hamr ctl status: missing %q in:\n%s", want, out)
			}
		}
		// The rw route's line names its primary; its destinations are all up.
		if strings.Contains(out, "down") {
			t.Errorf("hamr ctl status shows a destination down on a healthy topology:\n%s", out)
		}
		r, err := h.route("rw")
		if err != nil {
			t.Fatal(err)
		}
		if r.Primary != topo.Addr(0) || !r.Listening || r.Bind != Addr(rw.Port) {
			t.Errorf("/status rw: primary %q listening %v bind %q; want %s, true, %s", r.Primary, r.Listening, r.Bind, topo.Addr(0), Addr(rw.Port))
		}
	})
}

// TestNoDestination checks that a client of a route whose destinations are
// all down gets a MySQL error naming the route, both from go-sql-driver
// and from the mariadb command-line client, on the first connection
// (found by dialing) and once the health checks have marked them down.
func TestNoDestination(t *testing.T) {
	// Both destinations pass their first check, then go away: the first
	// client finds them gone by dialing, before any check does (the next
	// one is 30 s away).
	var dests []string
	var stops []func()
	for range 2 {
		addr, stop := closingServer(t, "127.0.0.1:0")
		dests, stops = append(dests, addr), append(stops, stop)
	}
	r := routeConfig{Name: "orders", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: dests}
	h := startHamr(t, hamrConfig{Level: "tcp", Interval: 30 * time.Second, Routes: []routeConfig{r}})
	for _, d := range dests {
		if up, err := h.destUp(r.Name, d); err != nil || !up {
			t.Fatalf("%s before the first connection: up %v (%v); want up", d, up, err)
		}
	}
	for _, stop := range stops {
		stop()
	}
	want := "hamr: no destination available for route orders"

	check := func(when string) {
		t.Helper()
		_, err := portVia(context.Background(), Addr(r.Port))
		if err == nil {
			t.Fatalf("%s: connected through a route with no destination", when)
		}
		if me := mysqlError(t, err); me.Number != 1105 || !strings.Contains(me.Message, want) {
			t.Fatalf("%s: go-sql-driver got error %d %q; want 1105 %q", when, me.Number, me.Message, want)
		}
		_, stderr, err := mariadbCLI(r.Port, "SELECT @@port")
		if err == nil {
			t.Fatalf("%s: mariadb client succeeded through a route with no destination", when)
		}
		if !strings.Contains(stderr, want) || !strings.Contains(stderr, "1105") {
			t.Fatalf("%s: mariadb client stderr %q; want ERROR 1105 ... %q", when, stderr, want)
		}
	}
	check("first connection")
	// Logged off the event loop, by the route's reporter: soon after.
	waitFor(t, 5*time.Second, "both destinations marked down by the first connection's dials", func() (bool, error) {
		n := strings.Count(h.log.String(), "dial failed; destination marked down")
		return n == 2, fmt.Errorf("%d logged, want 2:\n%s", n, h.log.tail(10))
	})
	for _, d := range r.Dests {
		h.waitDest(r.Name, d, false, 5*time.Second)
	}
	check("once marked down")
	if out, err := h.ctl("status"); err != nil || !strings.Contains(out, "down") {
		t.Errorf("hamr ctl status (err %v) does not show the destinations down:\n%s", err, out)
	}
}
