package vrrp

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestDebugGraceful(t *testing.T) {
	l := newLab(t)
	r1, r2, p := l.pairUp(kindHamr, kindHamr, fast)
	ns, _ := netns.GetFromName(l.cl.name)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	var pc *packet.Conn
	if err := l.cl.do(func() error {
		ifi, err := net.InterfaceByName("veth-cl")
		if err != nil {
			return err
		}
		pc, err = packet.Listen(ifi, packet.Raw, 0x0806, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	go func() {
		b := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			if n >= 42 {
				t.Logf("%4dms ARP op=%d from %s sip=%v tip=%v", time.Since(start).Milliseconds(), b[21], net.HardwareAddr(b[6:12]), net.IP(b[28:32]), net.IP(b[38:42]))
			}
		}
	}()
	r1.terminate()
	last := ""
	for time.Since(start) < 400*time.Millisecond {
		ns, _ := h.NeighList(0, netlink.FAMILY_V4)
		s := ""
		for _, n := range ns {
			if n.IP.Equal(net.ParseIP(vipAddr)) {
				s = n.HardwareAddr.String() + " " + strconv.Itoa(n.State)
			}
		}
		if s != last {
			t.Logf("%4dms %s", time.Since(start).Milliseconds(), s)
			last = s
		}
		time.Sleep(time.Millisecond)
	}
	p.mu.Lock()
	for _, a := range p.changes {
		t.Logf("answer %s at %dms", a.host, a.at.Sub(start).Milliseconds())
	}
	p.mu.Unlock()
	t.Logf("signal at %s", start.UTC().Format("15:04:05.000000"))
	for _, r := range []*router{r1, r2} {
		for _, line := range strings.Split(r.log(), "\n") {
			if r.h.id == "r2" || strings.Contains(line, "shutting") || strings.Contains(line, "arp") || strings.Contains(line, "address") {
				t.Logf("%s: %s", r.h.id, line)
			}
		}
	}
}
