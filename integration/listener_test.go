package integration

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCloseListenerWhenDown checks close_listener_when_down: while the only
// destination is down the route's port refuses connections and /status
// says it is not listening; when the destination is back, the port accepts
// clients again.
func TestCloseListenerWhenDown(t *testing.T) {
	ctx := context.Background()
	topo := Start(t, Options{Ports: freePorts(t, 1)})
	r := routeConfig{Name: "solo", Port: freePorts(t, 1)[0], Mode: "read-write",
		Dests: []string{topo.Addr(0)}, Extra: "close_listener_when_down = true"}
	h := startHamr(t, hamrConfig{Routes: []routeConfig{r}})
	addr := Addr(r.Port)
	p0 := topo.Servers[0].Port

	listening := func(want bool) func() (bool, error) {
		return func() (bool, error) {
			rs, err := h.route("solo")
			return err == nil && rs.Listening == want, err
		}
	}
	waitFor(t, 5*time.Second, "solo listening in /status", listening(true))
	if got := mustPortVia(t, addr); got != p0 {
		t.Fatalf("solo reaches %d, want %d", got, p0)
	}

	if err := topo.Kill(0); err != nil {
		t.Fatal(err)
	}
	h.waitDest("solo", topo.Addr(0), false, 10*time.Second)
	waitFor(t, 5*time.Second, `"listening": false in /status`, listening(false))
	// A connect to a closed port on loopback can connect to itself
	// (source port = destination port): that is no listener; try again.
	for try := 0; ; try++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil && c.LocalAddr().String() == c.RemoteAddr().String() && try < 3 {
			c.Close()
			continue
		}
		if err == nil {
			c.Close()
			t.Fatalf("connect to %s succeeded with the only destination down; want connection refused", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to %s with the only destination down: %v; want ECONNREFUSED", addr, err)
		}
		break
	}
	if out, err := h.ctl("status"); err != nil || !strings.Contains(out, addr+" (closed)") {
		t.Errorf("hamr ctl status (err %v) does not show %s (closed):\n%s", err, addr, out)
	}

	if err := topo.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 10*time.Second, `"listening": true in /status after the restart`, listening(true))
	t.Logf("listening again %v after the destination restarted", time.Since(start).Round(time.Millisecond))
	if up, err := h.destUp("solo", topo.Addr(0)); err != nil || !up {
		t.Errorf("/status: destination up = %v (%v) while listening again; want up", up, err)
	}
	if got, err := portVia(ctx, addr); err != nil || got != p0 {
		t.Fatalf("solo after the restart: port %d, %v; want %d", got, err, p0)
	}
}
