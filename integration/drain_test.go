package integration

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMDrain checks the shutdown: on SIGTERM the route's port refuses
// new clients at once, an open session may go on until drain_timeout and
// is closed then, and hamr exits 0; when the last session ends earlier,
// hamr exits without waiting out drain_timeout.
func TestSIGTERMDrain(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{Ports: freePorts(t, 1)})
	const drain = 3 * time.Second
	p0 := topo.Servers[0].Port

	// start runs hamr with one read-write route and opens an idle session.
	start := func(t *testing.T) (*hamrProc, string, *session) {
		r := routeConfig{Name: "rw", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: []string{topo.Addr(0)}}
		h := startHamr(t, hamrConfig{Drain: drain, Routes: []routeConfig{r}})
		addr := Addr(r.Port)
		s, err := connect(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if got, err := s.port(ctx); err != nil || got != p0 {
			t.Fatalf("rw session: port %d, %v; want %d", got, err, p0)
		}
		return h, addr, s
	}
	// refusedSoon waits until a connect to addr is refused.
	refusedSoon := func(t *testing.T, addr string, since time.Time) {
		t.Helper()
		waitFor(t, time.Second, "connects to "+addr+" to be refused after SIGTERM", func() (bool, error) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				return false, errors.New("connect succeeded")
			}
			return errors.Is(err, syscall.ECONNREFUSED), err
		})
		t.Logf("new connections refused %v after SIGTERM", time.Since(since).Round(time.Millisecond))
	}
	exited := func(t *testing.T, h *hamrProc, since time.Time, within time.Duration) time.Duration {
		t.Helper()
		if !h.waitExit(within - time.Since(since)) {
			t.Fatalf("hamr still running %v after SIGTERM", within)
		}
		took := time.Since(since)
		if !h.cmd.ProcessState.Success() {
			t.Errorf("hamr exited with %v after SIGTERM; want exit 0\n%s", h.cmd.ProcessState, h.log.tail(20))
		}
		return took
	}

	t.Run("idle session closed at the deadline", func(t *testing.T) {
		h, addr, s := start(t)
		appSessions := func() string {
			n, err := topo.QueryValue(ctx, 0, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'")
			if err != nil {
				return "?"
			}
			return n
		}
		if n := appSessions(); n != "1" {
			t.Fatalf("app sessions on the server before SIGTERM: %s; want 1", n)
		}

		sigterm := time.Now()
		h.signal(syscall.SIGTERM)
		refusedSoon(t, addr, sigterm)

		// Well inside the drain, the open session still works.
		time.Sleep(time.Second - time.Since(sigterm))
		if got, err := s.port(ctx); err != nil || got != p0 {
			t.Fatalf("open session 1 s into the drain: port %d, %v; want it still on %d", got, err, p0)
		}

		// Watch the server side for the moment the session goes away.
		var closedAfter time.Duration
		for closedAfter == 0 && time.Since(sigterm) < drain+2*time.Second {
			if appSessions() == "0" {
				closedAfter = time.Since(sigterm)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := exited(t, h, sigterm, drain+2*time.Second)
		t.Logf("drain_timeout %v: session closed on the server %v after SIGTERM, hamr exited after %v",
			drain, closedAfter.Round(time.Millisecond), took.Round(time.Millisecond))
		if closedAfter == 0 {
			t.Errorf("the session was still open on the server %v after SIGTERM", drain+2*time.Second)
		} else if closedAfter < drain-100*time.Millisecond {
			t.Errorf("the session was closed %v after SIGTERM; want it kept until drain_timeout %v", closedAfter, drain)
		}
		if took < drain-100*time.Millisecond {
			t.Errorf("hamr exited %v after SIGTERM with a session open; want it to wait for drain_timeout %v", took, drain)
		}
		if _, err := s.port(ctx); err == nil {
			t.Error("the session still works after hamr exited")
		}
		if !h.logContains("drain deadline reached") {
			t.Errorf("hamr's log does not say the drain deadline closed sessions:\n%s", h.log.tail(10))
		}
	})

	t.Run("exits when the last session ends", func(t *testing.T) {
		h, addr, s := start(t)
		sigterm := time.Now()
		h.signal(syscall.SIGTERM)
		refusedSoon(t, addr, sigterm)
		time.Sleep(300*time.Millisecond - time.Since(sigterm))
		if h.waitExit(0) {
			t.Fatalf("hamr exited %v after SIGTERM with a session open; want it to drain", time.Since(sigterm))
		}
		if got, err := s.port(ctx); err != nil || got != p0 {
			t.Fatalf("open session during the drain: port %d, %v; want %d", got, err, p0)
		}
		closed := time.Now()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		took := exited(t, h, sigterm, drain)
		t.Logf("hamr exited %v after the client closed its session (%v after SIGTERM; drain_timeout %v)",
			time.Since(closed).Round(time.Millisecond), took.Round(time.Millisecond), drain)
		if after := time.Since(closed); after > time.Second {
			t.Errorf("hamr exited %v after the last session ended; want promptly", after)
		}
		if h.logContains("drain deadline reached") {
			t.Errorf("hamr says the drain deadline was reached although the session ended first:\n%s", h.log.tail(10))
		}
	})
}
