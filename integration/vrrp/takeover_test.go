package vrrp

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// Router kinds.
const (
	kindKeepalived = "keepalived"
	kindHamr       = "hamr"
)

var vipService = net.JoinHostPort(vipAddr, strconv.Itoa(vipPort))

// router starts a router of the given kind on h, with what answers the
// client behind it: for keepalived a responder on port 7001 of every
// address, for hamr a responder on loopback behind hamr's own route.
func (l *lab) router(kind string, h *host, c routerConf) *router {
	l.t.Helper()
	c = c.withDefaults()
	if c.unicast {
		peer := l.r1
		if h == l.r1 {
			peer = l.r2
		}
		c.peers = []string{peer.addr}
	}
	switch kind {
	case kindKeepalived:
		l.serve(h, fmt.Sprintf(":%d", vipPort))
		return l.startKeepalived(h, c)
	case kindHamr:
		l.serve(h, backendAdr)
		return l.startHamr(h, c)
	}
	l.t.Fatalf("unknown router kind %q", kind)
	return nil
}

// serve starts h's responder on addr once per lab.
func (l *lab) serve(h *host, addr string) {
	l.t.Helper()
	key := h.id + " " + addr
	if l.serving[key] {
		return
	}
	if l.serving == nil {
		l.serving = map[string]bool{}
	}
	l.serving[key] = true
	h.respond(l.t, addr)
}

// startTimeout bounds how long a router may take to settle in a state:
// master down interval plus generous slack for a loaded machine.
func startTimeout(c routerConf) time.Duration {
	return 4*c.withDefaults().advert + 10*time.Second
}

// pairUp starts r1 (priority 120) and waits for it to be master, then r2
// (priority 100) as backup, and a client probe answered by r1.
func (l *lab) pairUp(kind1, kind2 string, c routerConf) (r1, r2 *router, p *probe) {
	l.t.Helper()
	c = c.withDefaults()
	c1, c2 := c, c
	c1.priority, c2.priority = 120, 100
	r1 = l.router(kind1, l.r1, c1)
	r1.waitState("MASTER", startTimeout(c))
	l.r1.waitVIP(l.t, true, 2*time.Second)
	r2 = l.router(kind2, l.r2, c2)
	r2.waitState("BACKUP", startTimeout(c))
	p = l.startProbe(vipService)
	if _, err := p.waitHost("r1", time.Time{}, 5*time.Second); err != nil {
		l.t.Fatalf("client before takeover: %v", err)
	}
	// Wait past the backup's master down interval (3.61 adverts at
	// priority 100): it stays backup only if it accepts r1's adverts.
	time.Sleep(c.advert*37/10 + 100*time.Millisecond)
	if st, err := r2.state(); err != nil || st != "BACKUP" {
		l.t.Fatalf("r2 is %q (%v) before takeover, want BACKUP", st, err)
	}
	if l.r2.hasVIP(l.t) {
		l.t.Fatal("r2 holds the VIP while backup")
	}
	return r1, r2, p
}

// takeover stops master r1 (a crash or a graceful stop) and returns the
// time from the signal until the client's first answer from r2.
func (l *lab) takeover(kind1, kind2 string, c routerConf, graceful bool) time.Duration {
	l.t.Helper()
	c = c.withDefaults()
	var adverts <-chan time.Time
	if !c.unicast { // the client sees only multicast adverts
		adverts = l.adverts(l.r1.addr)
	}
	r1, r2, p := l.pairUp(kind1, kind2, c)
	// Signal r1 just after one of its adverts went by, so that a crash
	// always measures the whole Master_Down_Interval (the RFC timer)
	// instead of a random part of the last advert interval.
	for i := 0; adverts != nil && i < 2; i++ { // the first may have waited in the channel
		select {
		case <-adverts:
		case <-time.After(3 * c.advert):
			l.t.Fatalf("the client saw no advert from r1 for %v", 3*c.advert)
		}
	}
	start := time.Now()
	if graceful {
		r1.terminate()
	} else {
		r1.crash()
	}
	at, err := p.waitHost("r2", start, 5*c.advert+10*time.Second)
	if err != nil {
		l.t.Fatalf("takeover: %v", err)
	}
	r2.waitState("MASTER", 5*time.Second)
	l.r2.waitVIP(l.t, true, time.Second)
	if !r1.waitExit(stopWait) {
		l.t.Errorf("%s in r1 still running %v after %s", kind1, time.Since(start).Round(time.Millisecond),
			map[bool]string{true: "SIGTERM", false: "SIGKILL"}[graceful])
	}
	if graceful && l.r1.hasVIP(l.t) {
		l.t.Errorf("%s in r1 left the VIP behind after a graceful stop", kind1)
	}
	return at.Sub(start)
}

// rfcTimer is how long RFC 5798 lets the backup wait: the skew time after
// a priority 0 advert, the master down interval after a crash.
func rfcTimer(advert time.Duration, backupPriority int, graceful bool) time.Duration {
	skew := time.Duration(256-backupPriority) * advert / 256
	if graceful {
		return skew
	}
	return 3*advert + skew
}

func scenario(graceful bool) string {
	if graceful {
		return "graceful"
	}
	return "crash"
}

func TestKeepalivedTakeover(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		t.Run(scenario(graceful), func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			c := routerConf{advert: 100 * time.Millisecond}
			d := l.takeover(kindKeepalived, kindKeepalived, c, graceful)
			t.Logf("keepalived→keepalived %s takeover at advert %v: %v (RFC timer %v)",
				scenario(graceful), c.advert, d.Round(time.Millisecond), rfcTimer(c.advert, 100, graceful))
		})
	}
}
