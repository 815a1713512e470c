package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hamr-project/hamr/internal/loopback"
)

// TestReload checks configuration reloads: a broken file keeps the old
// configuration running and is reported as FILE:LINE; `hamr ctl reload`
// adds a route and changes another, while an unchanged route keeps its
// open sessions and its sticky primary.
func TestReload(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	cfg := hamrConfig{Admin: Addr(freePorts(t, 1)[0]), Routes: []routeConfig{rw, ro}}
	h := startHamr(t, cfg)
	rwAddr, roAddr := Addr(rw.Port), Addr(ro.Port)
	p0, p1, p2 := topo.Servers[0].Port, topo.Servers[1].Port, topo.Servers[2].Port

	open := stickyOnSecond(t, topo, h, "rw", rwAddr)

	t.Run("SIGHUP with a broken file keeps the old config", func(t *testing.T) {
		text := cfg.TOML()
		bad := fmt.Sprintf("bind_port = %d", ro.Port)
		line := 1 + strings.Count(text[:strings.Index(text, bad)], "\n")
		h.writeFile(strings.Replace(text, bad, "bind_port = 70000", 1))
		h.signal(syscall.SIGHUP)
		where := fmt.Sprintf("%s:%d", h.Config, line)
		waitFor(t, 5*time.Second, "hamr to log "+where, func() (bool, error) {
			return h.logContains(where), nil
		})
		if got := mustPortVia(t, rwAddr); got != p1 {
			t.Errorf("rw after a failed reload reaches %d, want %d", got, p1)
		}
		if got := mustPortVia(t, roAddr); got != p1 && got != p2 {
			t.Errorf("ro after a failed reload reaches %d, want a replica", got)
		}
		if got, err := open.port(ctx); err != nil || got != p1 {
			t.Errorf("open rw session after a failed reload: port %d, %v; want %d", got, err, p1)
		}
	})

	t.Run("ctl with a broken file still reaches hamr", func(t *testing.T) {
		// ctl reads only [admin]: the daemon, not ctl, judges the rest.
		before, err := h.metric("hamr_config_reload_failures_total")
		if err != nil {
			t.Fatal(err)
		}
		text := cfg.TOML()
		h.writeFile(strings.Replace(text, fmt.Sprintf("bind_port = %d", ro.Port), "bind_port = 70000", 1))
		if out, err := runCtl(nil, "-c", h.Config, "status"); err != nil || !strings.Contains(out, "rw") {
			t.Errorf("ctl -c with a broken file, status: %v; want the daemon's status:\n%s", err, out)
		}
		out, err := runCtl(nil, "-c", h.Config, "reload")
		if err == nil || !strings.Contains(out, "reload rejected") || !strings.Contains(out, "routing.ro.bind_port: 70000") {
			t.Errorf("ctl reload with a broken file: %v; want the daemon's rejection with the problem:\n%s", err, out)
		}
		if after, err := h.metric("hamr_config_reload_failures_total"); err != nil || after != before+1 {
			t.Errorf("hamr_config_reload_failures_total %v -> %v (%v); want +1: the reload reached hamr", before, after, err)
		}
		h.writeFile(text)
	})

	t.Run("ctl reload to a port in use keeps the old config", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		ro2 := ro
		ro2.Port = taken.Addr().(*net.TCPAddr).Port
		h.writeConfig(hamrConfig{Routes: []routeConfig{rw, ro2}})
		out, err := h.ctl("reload")
		if err == nil || !strings.Contains(out, "route ro") || !strings.Contains(out, "address already in use") {
			t.Errorf("reload to a port in use: %v; want it rejected, naming route ro and the busy address:\n%s", err, out)
		}
		if got := mustPortVia(t, roAddr); got != p1 && got != p2 {
			t.Errorf("ro after a rejected reload reaches %d, want a replica on its old port", got)
		}
		if got, err := open.port(ctx); err != nil || got != p1 {
			t.Errorf("open rw session after a rejected reload: port %d, %v; want %d", got, err, p1)
		}
	})

	t.Run("ctl reload adds and changes routes", func(t *testing.T) {
		extra := routeConfig{Name: "extra", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: []string{topo.Addr(0)}}
		ro2 := ro
		ro2.Dests = []string{topo.Addr(2)}
		h.reload(t, hamrConfig{Routes: []routeConfig{rw, ro2, extra}})
		if got, err := portVia(ctx, Addr(extra.Port)); err != nil || got != p0 {
			t.Errorf("new route after reload: port %d, %v; want %d", got, err, p0)
		}
		for range 4 {
			if got := mustPortVia(t, roAddr); got != p2 {
				t.Errorf("changed ro route after reload reaches %d, want only %d", got, p2)
			}
		}
		for range 3 {
			if got := mustPortVia(t, rwAddr); got != p1 {
				t.Errorf("unchanged rw route after reload reaches %d, want its sticky primary %d", got, p1)
			}
		}
		if got, err := open.port(ctx); err != nil || got != p1 {
			t.Errorf("open session on the unchanged rw route after reload: port %d, %v; want it kept on %d", got, err, p1)
		}

		// The replaced ro route keeps counting in the same series once
		// the old one has drained and its leftovers are cleaned up.
		time.Sleep(2 * time.Second) // longer than the drain timeout
		mustPortVia(t, roAddr)
		total, err := h.metric("hamr_route_sessions_total", "route", "ro", "destination", topo.Addr(2))
		if err != nil || total < 5 {
			t.Errorf("hamr_route_sessions_total for the replaced ro route = %v, %v; want >= 5", total, err)
		}
		if up, err := h.metric("hamr_destination_up", "route", "ro", "destination", topo.Addr(1)); err != nil {
			t.Error(err)
		} else if m, _ := h.metrics(); hasSeries(m, series("hamr_destination_up", "route", "ro", "destination", topo.Addr(1))) {
			t.Errorf("hamr_destination_up for a destination the ro route no longer has is still exported (%v)", up)
		}
		// The proxy's series stay for that destination: ro still falls
		// back to rw, which has it.

		// A destination taken out of a route that falls back to nothing
		// loses its series once the old route has drained.
		extra2 := extra
		extra2.Dests = []string{topo.Addr(2)}
		h.reload(t, hamrConfig{Routes: []routeConfig{rw, ro2, extra2}})
		if got, err := portVia(ctx, Addr(extra.Port)); err != nil || got != p2 {
			t.Errorf("changed extra route: port %d, %v; want %d", got, err, p2)
		}
		time.Sleep(2 * time.Second) // longer than the drain timeout
		m, err := h.metrics()
		if err != nil {
			t.Fatal(err)
		}
		if gone := series("hamr_route_sessions_total", "route", "extra", "destination", topo.Addr(0)); hasSeries(m, gone) {
			t.Errorf("%s is still exported after the destination left the route", gone)
		}
		if kept := series("hamr_route_sessions_total", "route", "extra", "destination", topo.Addr(2)); m[kept] != 1 {
			t.Errorf("%s = %v, want 1", kept, m[kept])
		}
	})

	t.Run("replacing the rw route keeps its sticky primary", func(t *testing.T) {
		// Any change but health replaces the route. Writes stay where
		// they were, and the session there is not cut.
		rw2 := rw
		rw2.Extra = "max_connections = 999\n"
		h.reload(t, hamrConfig{Routes: []routeConfig{rw2, ro}})
		if got := mustPortVia(t, rwAddr); got != p1 {
			t.Errorf("replaced rw route reaches %d, want its sticky primary %d", got, p1)
		}
		if got, err := open.port(ctx); err != nil || got != p1 {
			t.Errorf("open session on the replaced rw route: port %d, %v; want it kept on %d", got, err, p1)
		}
		// The primary leaves the list: the route's sessions there are
		// closed at once, not drained beside writes to the new primary.
		rw3 := rw2
		rw3.Dests = []string{topo.Addr(0), topo.Addr(2)}
		h.reload(t, hamrConfig{Routes: []routeConfig{rw3, ro}})
		if got := mustPortVia(t, rwAddr); got != p0 {
			t.Errorf("rw route without its old primary reaches %d, want %d", got, p0)
		}
		if got, err := open.port(ctx); err == nil {
			t.Errorf("session on the old primary %d still answers (port %d) while writes go to %d", p1, got, p0)
		}
	})
}

func hasSeries(m map[string]float64, s string) bool {
	_, ok := m[s]
	return ok
}

// TestReloadWhileStopping checks the admin API while hamr drains its
// sessions after SIGTERM: the status answers, with the route no longer
// listening and its session still there; a reload is refused, rather than
// starting routes that nothing would stop again.
func TestReloadWhileStopping(t *testing.T) {
	dest, release := holdServer(t)
	ports := freePorts(t, 2)
	r := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{dest}}
	cfg := hamrConfig{Level: "tcp", Drain: 20 * time.Second, Routes: []routeConfig{r}}
	h := startHamr(t, cfg)
	c, err := net.DialTimeout("tcp", Addr(r.Port), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 5*time.Second, "the session to reach the destination", func() (bool, error) {
		rs, err := h.route("rw")
		return err == nil && rs.Sessions == 1, err
	})

	h.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "hamr to close its listener and drain", func() (bool, error) {
		return h.logContains("draining sessions"), nil // logged once the listener is closed
	})
	rs, err := h.route("rw")
	if err != nil {
		t.Fatalf("status during the drain: %v", err)
	}
	if rs.Listening || rs.Sessions != 1 {
		t.Errorf("status during the drain: listening %v, %d sessions; want not listening, 1 session", rs.Listening, rs.Sessions)
	}
	if out, err := h.ctl("reset-primary", "rw"); err != nil || !strings.Contains(out, "primary stays "+dest) {
		t.Errorf("reset-primary during the drain: %v; want it answered, the primary staying %s:\n%s", err, dest, out)
	}
	extra := routeConfig{Name: "extra", Port: ports[1], Mode: "read-write", Dests: []string{dest}}
	cfg.Routes = append(cfg.Routes, extra)
	h.writeConfig(cfg)
	out, err := h.ctl("reload")
	if err == nil || !strings.Contains(out, "shutting down") {
		t.Errorf("reload during the drain: %v; want it refused because hamr is shutting down:\n%s", err, out)
	}
	if h.waitExit(0) {
		t.Errorf("hamr had exited before the reload was answered: the drain of %v was not under way", cfg.Drain)
	}
	if h.logContains(`route started" route=extra`) {
		t.Errorf("a reload during the drain started a route:\n%s", h.log.tail(10))
	}
	// SIGHUP (systemctl reload) is refused too; it is not the second
	// signal that would cut the drain short.
	h.signal(syscall.SIGHUP)
	waitFor(t, 5*time.Second, "the SIGHUP to be refused", func() (bool, error) {
		return h.logContains("reload refused"), nil
	})
	if rs, err := h.route("rw"); err != nil || rs.Sessions != 1 || h.waitExit(0) {
		t.Errorf("after a SIGHUP during the drain: %d sessions (%v), exited %v; want the session draining",
			rs.Sessions, err, h.waitExit(0))
	}
	c.Close() // the last session ends, and with it the drain
	release()
	if !h.waitExit(10 * time.Second) {
		t.Fatalf("hamr did not exit once its last session ended:\n%s", h.log.tail(10))
	}
	if code := h.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("hamr exited with status %d after its drain, want 0:\n%s", code, h.log.tail(10))
	}
}

// TestSecondSignalCutsRemovedRouteDrain: the sessions of a route that a
// reload removed drain in the background; a second SIGTERM during the
// stop closes them at once, as it does the others', rather than after
// drain_timeout.
func TestSecondSignalCutsRemovedRouteDrain(t *testing.T) {
	h, cfg, rw, c := sessionOnGone(t)
	cfg.Routes = []routeConfig{rw}
	h.reload(t, cfg)
	if rs, err := h.route("gone"); err != nil || !rs.Draining || rs.Listening || rs.Sessions != 1 {
		t.Errorf("removed route in /status: %+v, %v; want it draining, not listening, with its 1 session", rs, err)
	}
	if out, err := h.ctl("status"); err != nil || !strings.Contains(out, "(draining)") {
		t.Errorf("ctl status: %v; want the removed route marked draining:\n%s", err, out)
	}

	h.signal(syscall.SIGTERM)
	waitFor(t, 5*time.Second, "hamr to begin its stop", func() (bool, error) {
		return h.logContains("shutting down"), nil
	})
	if h.waitExit(time.Second) {
		t.Fatalf("hamr exited before the removed route's drain ended:\n%s", h.log.tail(10))
	}
	h.signal(syscall.SIGTERM)
	if !h.waitExit(10 * time.Second) {
		t.Fatalf("hamr still running 10s after the second signal (drain_timeout %v):\n%s", cfg.Drain, h.log.tail(10))
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("the removed route's session after the stop: read %d bytes, %v; want it closed", n, err)
	}
}

// TestReloadHealthKeepsHysteresis: a reload that changes only a route's
// health settings keeps its destinations' state, and their hysteresis
// applies from there: a destination that was down and answers again comes
// back after rise good checks of the new checkers, not at their first
// (the good checks counted before the reload start again from zero).
func TestReloadHealthKeepsHysteresis(t *testing.T) {
	b, release := holdServer(t)
	defer release()
	ports := freePorts(t, 2)
	a := Addr(ports[1])
	slow := "[routing.rw.health]\nrise = 50\n" // 5 s at the tests' 100 ms
	rw := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{a, b}, Extra: slow}
	cfg := hamrConfig{Level: "tcp", Routes: []routeConfig{rw}}
	h := startHamr(t, cfg)
	h.waitDest("rw", a, false, 5*time.Second)

	closingServer(t, a)
	cfg.Routes[0].Extra = slow + "timeout = \"900ms\"\n"
	h.reload(t, cfg)
	if !h.logContains("route health settings changed") {
		t.Fatalf("the reload did not restart the checks:\n%s", h.log.tail(10))
	}
	time.Sleep(time.Second) // 10 checks: far from rise, far past the first
	if up, err := h.destUp("rw", a); err != nil || up {
		t.Errorf("%s up=%v (%v) 1s after the reload; want still down, 50 good checks not yet made", a, up, err)
	}
	h.waitDest("rw", a, true, 20*time.Second)
}

// TestReloadFallbackReplaced: a reload that changes only the read-write
// route keeps the read-only route that falls back to it, with its
// listener and open sessions (they used to be cut after drain_timeout),
// and that route then falls back to the new read-write route.
func TestReloadFallbackReplaced(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	p0, p1, p2 := topo.Servers[0].Port, topo.Servers[1].Port, topo.Servers[2].Port
	ports := freePorts(t, 2)
	rw := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{topo.Addr(0)}}
	ro := routeConfig{Name: "ro", Port: ports[1], Mode: "read-only", Dests: []string{topo.Addr(1)}, Extra: `fallback = "rw"`}
	cfg := hamrConfig{Routes: []routeConfig{rw, ro}}
	h := startHamr(t, cfg)
	roAddr := Addr(ro.Port)
	open, err := connect(ctx, roAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if got, err := open.port(ctx); err != nil || got != p1 {
		t.Fatalf("session on ro: port %d, %v; want %d", got, err, p1)
	}

	cfg.Routes[0].Dests = []string{topo.Addr(2), topo.Addr(0)} // rw replaced; its primary stays server 0
	h.reload(t, cfg)
	time.Sleep(2 * time.Second) // past the replaced rw route's drain_timeout (1s)
	if got, err := open.port(ctx); err != nil || got != p1 {
		t.Errorf("open ro session after rw was replaced: port %d, %v; want it kept on %d", got, err, p1)
	}
	if !h.logContains("route kept; it falls back to the new route") {
		t.Errorf("no log line for the kept ro route:\n%s", h.log.tail(10))
	}
	if rs, err := h.route("ro"); err != nil || !rs.Listening || rs.Sessions != 1 {
		t.Errorf("ro in /status: %+v, %v; want listening with its 1 session", rs, err)
	}

	// ro's own destination goes: reads fall back to the new rw route's
	// primary, server 0 (sticky across the replacement) while it is up,
	// then server 2.
	if err := topo.Kill(1); err != nil {
		t.Fatal(err)
	}
	h.waitDest("ro", topo.Addr(1), false, 10*time.Second)
	if got := mustPortVia(t, roAddr); got != p0 {
		t.Errorf("ro with its replica down reaches %d, want the new rw route's primary %d", got, p0)
	}
	if err := topo.Kill(0); err != nil {
		t.Fatal(err)
	}
	h.waitDest("rw", topo.Addr(0), false, 10*time.Second)
	if got := mustPortVia(t, roAddr); got != p2 {
		t.Errorf("ro with its replica and server 0 down reaches %d, want the new rw route's next primary %d", got, p2)
	}
}

// TestReloadWildcardBeside: a route moving from 127.0.0.1:P to 0.0.0.0:P
// while another process listens on 127.0.0.2:P is rejected before the
// route stops (it used to stop, fail to bind and be gone).
func TestReloadWildcardBeside(t *testing.T) {
	dest, release := holdServer(t)
	defer release()
	other, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	port := other.Addr().(*net.TCPAddr).Port
	cfg := hamrConfig{Level: "tcp", Routes: []routeConfig{{Name: "rw", Port: port, Mode: "read-write", Dests: []string{dest}}}}
	h := startHamr(t, cfg)

	cfg.Routes[0].Bind = "0.0.0.0"
	h.writeConfig(cfg)
	out, err := h.ctl("reload")
	if err == nil || !strings.Contains(out, "route rw") || !strings.Contains(out, other.Addr().String()+" is listening") {
		t.Errorf("reload to 0.0.0.0:%d: %v; want it rejected, naming route rw and the other listener:\n%s", port, err, out)
	}
	if rs, err := h.route("rw"); err != nil || !rs.Listening || rs.Bind != Addr(port) {
		t.Errorf("rw after the rejected reload: %+v, %v; want it listening on %s", rs, err, Addr(port))
	}
	c, err := net.DialTimeout("tcp", Addr(port), 2*time.Second)
	if err != nil {
		t.Fatalf("connect to rw after the rejected reload: %v", err)
	}
	c.Close()
}

// TestRemovedRouteStaysQuiet: a route that a reload replaced keeps
// draining, and its state may still change (a dial of a client it was
// connecting fails). That must not be published under the route's name,
// which now belongs to the new route: only the new route's own primary
// move is logged and counted.
func TestRemovedRouteStaysQuiet(t *testing.T) {
	hang := loopback.Hanging(t, 1)
	b, release := holdServer(t)
	defer release()
	rw := routeConfig{Name: "rw", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: []string{hang, b}}
	cfg := hamrConfig{Level: "tcp", Drain: 30 * time.Second, Routes: []routeConfig{rw}}
	h := startHamr(t, cfg)
	c, err := net.DialTimeout("tcp", Addr(rw.Port), 2*time.Second) // dialed to hang: never answers
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// rw replaced; the new one keeps the primary (hang), and the old one
	// drains with the client, whose dial goes on.
	cfg.Routes[0].Extra = "max_connections = 99\n"
	h.reload(t, cfg)
	before, err := h.metric("hamr_route_primary_moves_total", "route", "rw")
	if err != nil {
		t.Fatal(err)
	}
	// The old route's dial to hang times out (connect_timeout 1s) and
	// marks it down there, which moves that route's primary; the new
	// route's checks of hang time out too, and move its own.
	waitFor(t, 10*time.Second, "the old route's dial to time out", func() (bool, error) {
		return h.logContains("dial failed; destination marked down"), nil
	})
	waitFor(t, 10*time.Second, "the new route's primary to move", func() (bool, error) {
		return h.logContains(`"primary moved" route=rw`), nil
	})
	time.Sleep(200 * time.Millisecond) // any second publication would be out by now
	if after, err := h.metric("hamr_route_primary_moves_total", "route", "rw"); err != nil || after != before+1 {
		t.Errorf("hamr_route_primary_moves_total{route=rw} %v -> %v (%v): want the new route's one move only", before, after, err)
	}
	if n := strings.Count(h.log.String(), `"primary moved" route=rw`); n != 1 {
		t.Errorf("%d \"primary moved\" lines for rw, want the new route's 1:\n%s", n, h.log.tail(20))
	}
}

// TestReloadNewDrainTimeout: a reload that removes a route and shortens
// drain_timeout drains that route for the new timeout, as it says.
func TestReloadNewDrainTimeout(t *testing.T) {
	h, cfg, rw, c := sessionOnGone(t)
	cfg.Routes, cfg.Drain = []routeConfig{rw}, time.Second
	h.reload(t, cfg)
	if rs, err := h.route("gone"); err != nil || !rs.Draining || rs.Sessions != 1 {
		t.Fatalf("removed route right after the reload: %+v, %v; want it draining its 1 session", rs, err)
	}
	waitFor(t, 5*time.Second, "the removed route's drain to end after the new 1s", func() (bool, error) {
		return h.logContains(`msg="route removed" route=gone`), nil
	})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("client of the removed route: read %d bytes, %v; want its session cut", n, err)
	}
}

// TestReloadRemoveReAdd: a read-write route that one reload removes and
// the next adds back starts again at its first destination, and the
// removed route's sessions still draining to its sticky primary, another
// server, are closed: writes never go to two servers.
func TestReloadRemoveReAdd(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{})
	rw, ro := rwRO(t, topo)
	cfg := hamrConfig{Drain: time.Minute, Routes: []routeConfig{rw, ro}}
	h := startHamr(t, cfg)
	rwAddr := Addr(rw.Port)
	p0, p1 := topo.Servers[0].Port, topo.Servers[1].Port
	open := stickyOnSecond(t, topo, h, "rw", rwAddr)

	ro.Extra = "" // no fallback while rw is gone
	h.reload(t, hamrConfig{Drain: time.Minute, Routes: []routeConfig{ro}})
	if got, err := open.port(ctx); err != nil || got != p1 {
		t.Fatalf("draining session: port %d, %v; want it still on %d", got, err, p1)
	}
	h.reload(t, hamrConfig{Drain: time.Minute, Routes: []routeConfig{rw, ro}})
	if got := mustPortVia(t, rwAddr); got != p0 {
		t.Errorf("rw added back reaches %d, want its first destination %d", got, p0)
	}
	if got, err := open.port(ctx); err == nil {
		t.Errorf("the removed route's session still answers on %d while writes go to %d", got, p0)
	}
}

// stickyOnSecond makes the primary of the read-write route at addr
// sticky on server 1, away from the first choice: server 0 is killed,
// then back and up, and the primary stays. It returns a session opened
// there, closed at the end of the test.
func stickyOnSecond(t *testing.T, topo *Topology, h *hamrProc, route, addr string) *session {
	t.Helper()
	ctx := context.Background()
	p1 := topo.Servers[1].Port
	if err := topo.Kill(0); err != nil {
		t.Fatal(err)
	}
	if got := mustPortVia(t, addr); got != p1 {
		t.Fatalf("after killing the primary %s reaches %d, want %d", route, got, p1)
	}
	if err := topo.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	h.waitDest(route, topo.Addr(0), true, 10*time.Second)
	open, err := connect(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { open.Close() })
	if got, err := open.port(ctx); err != nil || got != p1 {
		t.Fatalf("session on %s: port %d, %v; want %d", route, got, err, p1)
	}
	return open
}

// sessionOnGone starts hamr with two read-write routes, rw and gone, to a
// destination that holds every connection (drain_timeout 1 min), and opens
// one session through gone, closed at the end of the test.
func sessionOnGone(t *testing.T) (*hamrProc, hamrConfig, routeConfig, net.Conn) {
	t.Helper()
	dest, release := holdServer(t)
	t.Cleanup(release)
	ports := freePorts(t, 2)
	rw := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{dest}}
	gone := routeConfig{Name: "gone", Port: ports[1], Mode: "read-write", Dests: []string{dest}}
	cfg := hamrConfig{Level: "tcp", Drain: time.Minute, Routes: []routeConfig{rw, gone}}
	h := startHamr(t, cfg)
	c, err := net.DialTimeout("tcp", Addr(gone.Port), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	waitFor(t, 5*time.Second, "the session to reach the destination", func() (bool, error) {
		rs, err := h.route("gone")
		return err == nil && rs.Sessions == 1, err
	})
	return h, cfg, rw, c
}

// TestIOThreads: [io] threads sets the routes' event loops at start; a
// reload that changes it keeps the running routes as they are and says
// that the change needs a restart.
func TestIOThreads(t *testing.T) {
	topo := Start(t, Options{Ports: freePorts(t, 1)})
	ports := freePorts(t, 2)
	r := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{topo.Addr(0)}}
	cfg := hamrConfig{Admin: Addr(ports[1]), Threads: 1, Routes: []routeConfig{r}}
	h := startHamr(t, cfg)
	if got := mustPortVia(t, Addr(r.Port)); got != topo.Servers[0].Port {
		t.Fatalf("rw reaches %d, want %d", got, topo.Servers[0].Port)
	}

	cfg.Threads = 2
	h.reload(t, cfg)
	if !h.logContains("[io] threads changed: it takes effect when hamr restarts") {
		t.Errorf("no notice that the new [io] threads needs a restart:\n%s", h.log.tail(10))
	}
	if got := mustPortVia(t, Addr(r.Port)); got != topo.Servers[0].Port {
		t.Fatalf("after the reload rw reaches %d, want %d", got, topo.Servers[0].Port)
	}
}
