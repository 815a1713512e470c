package vrrp

import (
	"strings"
	"testing"
	"time"
)

func TestDebugGraceful(t *testing.T) {
	l := newLab(t)
	r1, r2, p := l.pairUp(kindHamr, kindHamr, fast)
	_ = r2
	start := time.Now()
	r1.terminate()
	last := ""
	for time.Since(start) < 400*time.Millisecond {
		out, _ := runIP("-n", l.cl.name, "neigh", "show", vipAddr)
		v2, _ := runIP("-n", l.r2.name, "-4", "-o", "addr", "show", "dev", "veth-r2")
		s := strings.TrimSpace(out) + " r2vip=" + map[bool]string{true: "y", false: "n"}[strings.Contains(v2, vipAddr)]
		if s != last {
			t.Logf("%4dms %s", time.Since(start).Milliseconds(), s)
			last = s
		}
		time.Sleep(3 * time.Millisecond)
	}
	p.mu.Lock()
	for _, a := range p.changes {
		t.Logf("answer %s at %dms", a.host, a.at.Sub(start).Milliseconds())
	}
	p.mu.Unlock()
	t.Logf("signal at %s", start.UTC().Format("15:04:05.000000"))
	for _, r := range []*router{r1, r2} {
		for _, line := range strings.Split(r.log(), "\n") {
			if strings.Contains(line, "state change") || strings.Contains(line, "shutting") || strings.Contains(line, "arp") || strings.Contains(line, "address") {
				t.Logf("%s: %s", r.h.id, line)
			}
		}
	}
}
