package vrrp

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fast is the advert interval of the functional tests: short, so a lab
// settles in about a second, yet long enough that a master stalled for a
// moment on a loaded 2-core CI machine (the other test packages run
// alongside) is not taken for dead (3 × 200 ms + skew).
var fast = routerConf{advert: 200 * time.Millisecond}

func TestHamrTakeover(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		t.Run(scenario(graceful), func(t *testing.T) {
			t.Parallel()
			requireHamr(t)
			l := newLab(t)
			d := l.takeover(kindHamr, kindHamr, fast, graceful)
			t.Logf("hamr→hamr %s takeover at advert %v: %v (RFC timer %v)",
				scenario(graceful), fast.advert, d.Round(time.Millisecond), rfcTimer(fast.advert, 100, graceful))
		})
	}
}

// TestHamrPreempt: after r2 took over, r1 comes back with a higher
// priority. With preemption it takes the VIP back; with nopreempt it
// stays backup and r2 keeps the VIP.
func TestHamrPreempt(t *testing.T) {
	for _, nopreempt := range []bool{false, true} {
		t.Run(fmt.Sprintf("nopreempt=%v", nopreempt), func(t *testing.T) {
			t.Parallel()
			requireHamr(t)
			l := newLab(t)
			r1, r2, p := l.pairUp(kindHamr, kindHamr, fast)
			r1.terminate()
			r2.waitState("MASTER", 5*time.Second)
			if _, err := p.waitHost("r2", time.Time{}, 5*time.Second); err != nil {
				t.Fatalf("after r1 stopped: %v", err)
			}
			if !r1.waitExit(stopWait) {
				t.Fatal("hamr in r1 did not exit after SIGTERM")
			}

			c := fast
			c.priority = 150
			c.nopreempt = nopreempt
			back := time.Now()
			r1 = l.router(kindHamr, l.r1, c)
			if !nopreempt {
				r1.waitState("MASTER", startTimeout(c))
				r2.waitState("BACKUP", 5*time.Second)
				l.r1.waitVIP(t, true, 2*time.Second)
				l.r2.waitVIP(t, false, 2*time.Second)
				at, err := p.waitHost("r1", back, 5*time.Second)
				if err != nil {
					t.Fatalf("after r1 came back: %v", err)
				}
				t.Logf("r1 preempted: client answered by r1 %v after its restart", at.Sub(back).Round(time.Millisecond))
				return
			}
			r1.waitState("BACKUP", startTimeout(c))
			// Long past r1's master down interval: it must still be backup.
			time.Sleep(5*c.advert + time.Second)
			if st, err := r1.state(); err != nil || st != "BACKUP" {
				t.Fatalf("nopreempt r1 is %q (%v), want BACKUP", st, err)
			}
			if st, err := r2.state(); err != nil || st != "MASTER" {
				t.Fatalf("r2 is %q (%v), want MASTER", st, err)
			}
			if l.r1.hasVIP(t) || !l.r2.hasVIP(t) {
				t.Fatalf("VIP on r1 %v, on r2 %v; want only on r2", l.r1.hasVIP(t), l.r2.hasVIP(t))
			}
			if got := p.current(); got != "r2" {
				t.Fatalf("client answered by %q, want r2", got)
			}
		})
	}
}

// TestHamrStaleVIP: a killed master leaves the VIP on its interface; the
// next hamr on that host removes it at start-up, before anything else.
func TestHamrStaleVIP(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	r1, r2, p := l.pairUp(kindHamr, kindHamr, fast)
	r1.crash()
	if !r1.waitExit(5 * time.Second) {
		t.Fatal("hamr in r1 survived SIGKILL")
	}
	r2.waitState("MASTER", 5*time.Second)
	if !l.r1.hasVIP(t) {
		t.Fatal("after SIGKILL the VIP is gone from r1: the lab no longer shows the stale-VIP problem")
	}
	if _, err := p.waitHost("r2", time.Time{}, 5*time.Second); err != nil {
		t.Fatalf("after r1 crashed: %v", err)
	}

	// nopreempt keeps r1 backup, so the VIP must go and stay gone.
	c := fast
	c.priority = 150
	c.nopreempt = true
	r1 = l.router(kindHamr, l.r1, c)
	l.r1.waitVIP(t, false, 3*time.Second)
	r1.waitState("BACKUP", startTimeout(c))
	if l.r1.hasVIP(t) {
		t.Fatal("hamr restarted on r1 as backup and the stale VIP is back")
	}
	if st, err := r2.state(); err != nil || st != "MASTER" {
		t.Fatalf("r2 is %q (%v), want MASTER", st, err)
	}
}

// TestUnicast: adverts sent to unicast_peers work where multicast cannot
// pass (the bridge floods no multicast between the routers' ports).
func TestUnicast(t *testing.T) {
	t.Run("multicast-blocked", func(t *testing.T) {
		// Proof that the lab blocks multicast: two keepalived in multicast
		// mode cannot hear each other and both become master.
		t.Parallel()
		l := newLab(t)
		l.blockMulticast()
		c := fast
		c.priority = 120
		r1 := l.router(kindKeepalived, l.r1, c)
		c.priority = 100
		r2 := l.router(kindKeepalived, l.r2, c)
		r1.waitState("MASTER", startTimeout(c))
		r2.waitState("MASTER", startTimeout(c))
	})
	for _, kind := range []string{kindKeepalived, kindHamr} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			l.blockMulticast()
			c := fast
			c.unicast = true
			d := l.takeover(kind, kind, c, false)
			t.Logf("%s unicast crash takeover at advert %v: %v", kind, c.advert, d.Round(time.Millisecond))
		})
	}
}

// blockMulticast stops the bridge flooding multicast to the routers'
// ports; broadcast (ARP) and unicast still pass.
func (l *lab) blockMulticast() {
	for _, h := range []*host{l.r1, l.r2} {
		mustIP(l.t, "-n", l.br.name, "link", "set", "port-"+h.id, "type", "bridge_slave", "mcast_flood", "off")
	}
}

// TestInterop: hamr and keepalived in the same virtual router, either one
// master; killing the master lets the other take over. Version 3 at
// 100 ms and version 2 with PASS authentication at 1 s.
func TestInterop(t *testing.T) {
	versions := []routerConf{
		{version: 3, advert: 100 * time.Millisecond},
		{version: 2, advert: time.Second},
	}
	for _, c := range versions {
		for _, master := range []string{kindHamr, kindKeepalived} {
			backup := kindKeepalived
			if master == kindKeepalived {
				backup = kindHamr
			}
			t.Run(fmt.Sprintf("v%d/%s-master", c.version, master), func(t *testing.T) {
				t.Parallel()
				requireHamr(t)
				l := newLab(t)
				d := l.takeover(master, backup, c, false)
				t.Logf("v%d %s→%s crash takeover at advert %v: %v", c.version, master, backup, c.advert, d.Round(time.Millisecond))
			})
		}
	}
}

// TestHamrTrackRoute: the VIP follows the database path. r1 has the higher
// priority but its route's only destination does not answer; with
// track_routes = ["rw"] it stays in FAULT, and r2, whose route is
// healthy, holds the VIP and answers the client.
func TestHamrTrackRoute(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	c1 := fast
	c1.priority, c1.track, c1.backend = 120, true, "127.0.0.1:9" // nothing listens there
	c2 := fast
	c2.priority, c2.track = 100, true
	r1 := l.router(kindHamr, l.r1, c1)
	r2 := l.router(kindHamr, l.r2, c2)
	r1.waitState("FAULT", startTimeout(c1))
	r2.waitState("MASTER", startTimeout(c2))
	l.r2.waitVIP(t, true, 2*time.Second)
	p := l.startProbe(vipService)
	if _, err := p.waitHost("r2", time.Time{}, 5*time.Second); err != nil {
		t.Fatalf("client through the VIP: %v", err)
	}
	// Long past r2's master down interval: r1 must not have taken over.
	time.Sleep(5*c1.advert + time.Second)
	if st, err := r1.state(); err != nil || st != "FAULT" {
		t.Fatalf("r1, whose route is down, is %q (%v), want FAULT", st, err)
	}
	if l.r1.hasVIP(t) {
		t.Fatal("r1 holds the VIP while its route is down")
	}
}

// TestHamrReloadBadInterface: a reload whose VRRP instance names an
// interface it cannot run on (one that is not there, or lo, which has no
// Ethernet address for gratuitous ARP) is rejected before the running
// instance stops, so the master keeps the VIP (it used to resign, and the
// backup took over; with lo, hamr then exited).
func TestHamrReloadBadInterface(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	r1, r2, p := l.pairUp(kindHamr, kindHamr, fast)
	good, err := os.ReadFile(r1.conf)
	if err != nil {
		t.Fatal(err)
	}
	iface := fmt.Sprintf("interface = %q", l.r1.link)
	for n, c := range []struct{ iface, why string }{
		{"hamr-nosuch0", "hamr-nosuch0"},
		{"lo", "no Ethernet address"},
	} {
		bad := strings.Replace(string(good), iface, fmt.Sprintf("interface = %q", c.iface), 1)
		if bad == string(good) {
			t.Fatalf("no %s in r1's configuration:\n%s", iface, good)
		}
		if err := os.WriteFile(r1.conf, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		before, err := r1.status()
		if err != nil {
			t.Fatal(err)
		}
		r1.signal(syscall.SIGHUP)
		for deadline := time.Now().Add(5 * time.Second); strings.Count(r1.log(), "reload rejected") <= n; {
			if time.Now().After(deadline) {
				t.Fatalf("interface %s: hamr in r1 did not reject the reload within 5s", c.iface)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Long past r2's master down interval: r1 must still be master.
		time.Sleep(5*fast.advert + time.Second)
		if !r1.running() {
			t.Fatalf("interface %s: hamr in r1 exited after the rejected reload: %v", c.iface, r1.waitErr)
		}
		// Still master, and never left it meanwhile (a resign and a
		// preemption back would end in the same state).
		if st, err := r1.status(); err != nil || st.State != "MASTER" || st.Transitions != before.Transitions {
			t.Fatalf("interface %s: r1 after the rejected reload: %q with %d transitions (%v), want MASTER with %d as before",
				c.iface, st.State, st.Transitions, err, before.Transitions)
		}
		if st, err := r2.state(); err != nil || st != "BACKUP" {
			t.Fatalf("interface %s: r2 is %q (%v), want BACKUP", c.iface, st, err)
		}
		if !l.r1.hasVIP(t) || l.r2.hasVIP(t) {
			t.Fatalf("interface %s: VIP on r1 %v, on r2 %v; want only on r1", c.iface, l.r1.hasVIP(t), l.r2.hasVIP(t))
		}
		if got := p.current(); got != "r1" {
			t.Fatalf("interface %s: client answered by %q, want r1", c.iface, got)
		}
		if log := r1.log(); !strings.Contains(log, c.why) {
			t.Errorf("the rejection of interface %s does not say %q:\n%s", c.iface, c.why, log)
		}
	}
}

// TestHamrTrackFallbackRoute: a tracked read-only route whose own
// destination is down serves through its fallback, and is as healthy as
// that fallback's primary. When the read-write route's database goes
// away the instance enters FAULT (hamr used to miss the change, since it
// happened on the other route), and it comes back when the database does.
func TestHamrTrackFallbackRoute(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	h := l.r1
	const db = "127.0.0.1:9101" // the read-write route's database, on h's loopback
	stop := h.listen(t, db, false)
	defer func() { stop() }()

	r := l.startConf(h, "fallback", labConf{prio: 100, health: fastChecks, vrrp: `track_routes = ["ro"]`,
		routes: fmt.Sprintf("[routing.rw]\nbind_port = 7001\nmode = \"read-write\"\ndestinations = [%q]\n\n", db) +
			"[routing.ro]\nbind_port = 7002\nmode = \"read-only\"\ndestinations = [\"127.0.0.1:9\"]\nfallback = \"rw\"\n"})

	r.waitState("MASTER", startTimeout(fast))
	stop()
	r.waitState("FAULT", 10*time.Second)
	if l.r1.hasVIP(t) {
		t.Error("the VIP stayed on r1 in FAULT")
	}
	stop = h.listen(t, db, false)
	r.waitState("MASTER", startTimeout(fast))
}

// TestHamrStopClosesRemovedRouteOnVIP: a route on the VIP that a reload
// removed drains in the background. When hamr stops and gives the VIP up,
// that route's sessions are closed with the others' (their clients'
// packets now go to the other router), so hamr exits at once instead of
// waiting out drain_timeout for them.
func TestHamrStopClosesRemovedRouteOnVIP(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	h := l.r1
	const db = "127.0.0.1:9201" // holds every connection, inside r1
	h.listen(t, db, true)

	conf := func(route string) labConf {
		return labConf{prio: 100, routes: fmt.Sprintf("[routing.%s]\nbind_address = %q\nbind_port = %d\nmode = \"read-write\"\ndestinations = [%q]\n",
			route, vipAddr, vipPort, db)}
	}
	r := l.startConf(h, "removed", conf("old"))
	r.waitState("MASTER", startTimeout(fast))
	l.r1.waitVIP(t, true, 2*time.Second)

	c, err := l.cl.dial(t.Context(), fmt.Sprintf("%s:%d", vipAddr, vipPort), 5*time.Second)
	if err != nil {
		t.Fatalf("client through the VIP: %v", err)
	}
	defer c.Close()
	waitSessions := func(route string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if n, err := r.sessions(route); err == nil && n == 1 {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("route %s: %d sessions (%v) after 5s, want the client's 1", route, n, err)
			}
		}
	}
	waitSessions("old")
	l.writeConf(h, "removed", conf("new")) // same VIP and port, another name: "old" is removed
	r.signal(syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(r.log(), "configuration reloaded"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("hamr did not reload within 5s")
		}
	}
	waitSessions("old") // draining now

	start := time.Now()
	r.terminate()
	if !r.waitExit(stopWait) {
		t.Fatalf("hamr still running %v after SIGTERM: the removed route's session on the VIP kept it (drain_timeout %v)",
			time.Since(start).Round(time.Millisecond), drainTimeout)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("client of the removed route after the stop: read %d bytes, %v; want the session closed", n, err)
	}
}

// TestHamrWildcardRouteLosesVIP: a route bound to 0.0.0.0 takes clients
// through the VIP and through the host's own address. When the VIP goes
// (here: a tracked route's database stops, so the instance enters FAULT),
// the sessions that came through the VIP are closed, since their packets
// now reach the other router, and the others go on.
func TestHamrWildcardRouteLosesVIP(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	h := l.r1
	const db, tracked = "127.0.0.1:9301", "127.0.0.1:9302"
	h.listen(t, db, true)
	stopTracked := h.listen(t, tracked, false)

	r := l.startConf(h, "wildcard", labConf{prio: 100, health: fastChecks, vrrp: `track_routes = ["tracked"]`,
		routes: fmt.Sprintf("[routing.rw]\nbind_address = \"0.0.0.0\"\nbind_port = %d\nmode = \"read-write\"\ndestinations = [%q]\n\n", vipPort, db) +
			fmt.Sprintf("[routing.tracked]\nbind_port = 7009\nmode = \"read-write\"\ndestinations = [%q]\n", tracked)})
	r.waitState("MASTER", startTimeout(fast))
	h.waitVIP(t, true, 2*time.Second)

	dial := func(addr string) net.Conn {
		c, err := l.cl.dial(t.Context(), fmt.Sprintf("%s:%d", addr, vipPort), 5*time.Second)
		if err != nil {
			t.Fatalf("client to %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	viaVIP, direct := dial(vipAddr), dial(h.addr)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if n, err := r.sessions("rw"); err == nil && n == 2 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("route rw: %d sessions (%v), want 2", n, err)
		}
	}

	stopTracked()
	r.waitState("FAULT", 10*time.Second)
	viaVIP.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := viaVIP.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Errorf("client through the VIP after it went: read %d bytes, %v; want the session closed", n, err)
	}
	if n, err := r.sessions("rw"); err != nil || n != 1 {
		t.Errorf("route rw: %d sessions (%v) after the VIP went, want the direct client's 1", n, err)
	}
	direct.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := direct.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Errorf("client through the host's own address: %v; want its session open", err)
	}
}

// TestHamrFailedStartTakesNoVIP: hamr whose route cannot bind exits with
// an error before any VRRP instance starts. As the address owner
// (priority 255) it would otherwise take the VIP and run notify_master on
// its way out, and under Restart=always do so again every second.
func TestHamrFailedStartTakesNoVIP(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	h := l.r1
	const busy = "127.0.0.1:9401" // another process holds the route's port
	h.listen(t, busy, true)
	marker := filepath.Join(l.dir, "notified")
	script := filepath.Join(l.dir, "notify.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$@\" >> "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := l.startConf(h, "busy", labConf{prio: 255, vrrp: fmt.Sprintf("notify = %q", script),
		routes: "[routing.rw]\nbind_address = \"127.0.0.1\"\nbind_port = 9401\nmode = \"read-write\"\ndestinations = [\"127.0.0.1:9402\"]\n"})
	if !r.waitExit(10 * time.Second) {
		t.Fatal("hamr with a route it cannot bind is still running after 10s")
	}
	if r.waitErr == nil || !strings.Contains(r.log(), "address already in use") {
		t.Errorf("hamr exited with %v; want an error naming the busy address:\n%s", r.waitErr, r.log())
	}
	if b, err := os.ReadFile(marker); err == nil {
		t.Errorf("notify ran although hamr could not start: %q", b)
	}
	if strings.Contains(r.log(), "vrrp") {
		t.Errorf("a VRRP instance started although hamr could not:\n%s", r.log())
	}
	if h.hasVIP(t) {
		t.Error("the VIP is on r1 after a failed start")
	}
}

// TestHamrSlowNotifyScripts: notify scripts that take their time (here
// 1.5 s each) hold neither a reload that restarts their instance nor the
// stop: the reload is applied at once, and on SIGTERM the listener
// closes at once, while the scripts still run to their end.
func TestHamrSlowNotifyScripts(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	h := l.r1
	const db = "127.0.0.1:9502"
	h.listen(t, db, false) // a probe's session ends at once: no drain
	marker := filepath.Join(l.dir, "notified")
	script := filepath.Join(l.dir, "slow.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nsleep 1.5\necho \"$@\" >> "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := func(prio int) labConf {
		return labConf{prio: prio, vrrp: fmt.Sprintf("notify = %q", script),
			routes: fmt.Sprintf("[routing.rw]\nbind_address = \"127.0.0.1\"\nbind_port = 9501\nmode = \"read-write\"\ndestinations = [%q]\n", db)}
	}
	r := l.startConf(h, "slow", conf(100))
	r.waitState("MASTER", startTimeout(fast))

	l.writeConf(h, "slow", conf(110)) // restarts the instance: notify STOP, then BACKUP, MASTER
	start := time.Now()
	r.signal(syscall.SIGHUP)
	for !strings.Contains(r.log(), "configuration reloaded") {
		if time.Since(start) > 1200*time.Millisecond {
			t.Fatalf("reload not applied within 1.2s while notify scripts run:\n%s", r.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.waitState("MASTER", startTimeout(fast))

	r.terminate()
	closed := false
	for deadline := time.Now().Add(1200 * time.Millisecond); !closed && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		err := h.do(func() error {
			c, err := net.DialTimeout("tcp", "127.0.0.1:9501", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		closed = err != nil
	}
	if !closed {
		t.Errorf("the listener still accepts 1.2s after SIGTERM: the stop waits for notify scripts")
	}
	if !r.waitExit(30 * time.Second) {
		t.Fatal("hamr did not exit within 30s of SIGTERM")
	}
	// Every script ran to its end, one at a time in the order of the
	// transitions: the restarted instance's waited for the old one's.
	got, _ := os.ReadFile(marker)
	var states []string
	for _, l := range strings.Split(strings.TrimSpace(string(got)), "\n") {
		if f := strings.Fields(l); len(f) == 4 {
			states = append(states, f[2]+"/"+f[3])
		}
	}
	want := []string{"BACKUP/100", "MASTER/100", "STOP/100", "BACKUP/110", "MASTER/110", "STOP/110"}
	if !slices.Equal(states, want) {
		t.Errorf("notify ran %v, want %v", states, want)
	}
}

// TestHamrTrackUncheckedRoute: a tracked route whose only database does
// not answer at all (its checks time out after 1 s, longer than the
// master down interval of 100 ms adverts) keeps the instance from ever
// becoming master: VRRP starts from what the first checks found, not from
// a new route's "every destination up".
func TestHamrTrackUncheckedRoute(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	c := routerConf{advert: 100 * time.Millisecond, priority: 100, track: true, backend: "10.99.0.77:3306"} // no such host in the lab
	r := l.router(kindHamr, l.r1, c)
	r.waitState("FAULT", 10*time.Second)
	time.Sleep(time.Second)
	if log := r.log(); strings.Contains(log, "to=MASTER") {
		t.Errorf("the instance became master before its tracked route's first check failed:\n%s", log)
	}
	if l.r1.hasVIP(t) {
		t.Error("r1 holds the VIP while its tracked route's database does not answer")
	}
}
