package vip

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamr-project/hamr/conf"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lab is two fresh network namespaces joined by a veth pair:
// a (10.99.N.1/24 on ifA) and b (10.99.N.2/24 on ifB).
type lab struct {
	n        int
	nsA, nsB netns.NsHandle
	ifA, ifB string
	hA, hB   *netlink.Handle
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, raw sockets); CI runs as root")
		}
		t.Skip("needs root (network namespaces, raw sockets)")
	}
}

func (l *lab) addrA() netip.Addr { return netip.AddrFrom4([4]byte{10, 99, byte(l.n), 1}) }
func (l *lab) addrB() netip.Addr { return netip.AddrFrom4([4]byte{10, 99, byte(l.n), 2}) }
func (l *lab) vip() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(l.n), 100}), 24)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requireRoot(t)
	tag := fmt.Sprintf("%06x", rand.IntN(1<<24))
	l := &lab{n: 1 + rand.IntN(250), ifA: "hvt" + tag + "a", ifB: "hvt" + tag + "b"}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	defer netns.Set(orig)
	for _, side := range []struct {
		name string
		ns   *netns.NsHandle
	}{{"hamrvt-" + tag + "-a", &l.nsA}, {"hamrvt-" + tag + "-b", &l.nsB}} {
		ns, err := netns.NewNamed(side.name) // switches this thread into it
		if err != nil {
			t.Fatalf("create namespace: %v", err)
		}
		*side.ns = ns
		name := side.name
		t.Cleanup(func() {
			ns.Close()
			netns.DeleteNamed(name)
		})
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	if l.hA, err = netlink.NewHandleAt(l.nsA); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.hA.Close)
	if l.hB, err = netlink.NewHandleAt(l.nsB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.hB.Close)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.ifA},
		PeerName:      l.ifB,
		PeerNamespace: netlink.NsFd(int(l.nsB)),
	}
	if err := l.hA.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, s := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Addr
	}{{l.hA, l.ifA, l.addrA()}, {l.hB, l.ifB, l.addrB()}} {
		if lo, err := s.h.LinkByName("lo"); err == nil {
			s.h.LinkSetUp(lo)
		}
		link, err := s.h.LinkByName(s.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.h.AddrAdd(link, prefixAddr(netip.PrefixFrom(s.addr, 24))); err != nil {
			t.Fatal(err)
		}
		if err := s.h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// in runs fn on a thread inside ns and waits for it.
func in(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// running is an Instance started inside a namespace.
type running struct {
	*Instance
	cancel context.CancelFunc
	once   sync.Once
}

// start creates and starts an instance inside ns; the test's cleanup
// stops it if the test did not.
func start(t *testing.T, ns netns.NsHandle, cfg *conf.VRRP, reg prometheus.Registerer, with ...func(*Options)) *running {
	t.Helper()
	var inst *Instance
	var err error
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", cfg.Name)
	opts := Options{Logger: log, Metrics: NewMetrics(reg)}
	for _, f := range with {
		f(&opts)
	}
	in(t, ns, func() { inst, err = New(cfg, opts) })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in(t, ns, func() { err = inst.Start(ctx) })
	if err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	r := &running{Instance: inst, cancel: cancel}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the instance and waits for it; later calls do nothing.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		done := make(chan struct{})
		go func() { r.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("the instance did not stop")
		}
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 1000 { // 10s
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func hasAddr(t *testing.T, h *netlink.Handle, ifname string, ip netip.Addr) bool {
	t.Helper()
	held, err := addrHeld(h, ifname, ip)
	if err != nil {
		t.Fatal(err)
	}
	return held
}

// addrHeld reports whether ifname has ip, for any goroutine.
func addrHeld(h *netlink.Handle, ifname string, ip netip.Addr) (bool, error) {
	link, err := h.LinkByName(ifname)
	if err != nil {
		return false, err
	}
	list, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, a := range list {
		if got, _ := netip.AddrFromSlice(a.IP.To4()); got == ip {
			return true, nil
		}
	}
	return false, nil
}

func testConfig(name, ifname string, prio int, vip netip.Prefix) *conf.VRRP {
	return &conf.VRRP{
		Name:             name,
		Interface:        ifname,
		VirtualRouterID:  51,
		Priority:         prio,
		AdvertInt:        100 * time.Millisecond,
		Version:          3,
		State:            "BACKUP",
		VirtualIPAddress: []netip.Prefix{vip},
		GarpMasterRepeat: 5,
		GarpMasterDelay:  0,
		NotifyTimeout:    5 * time.Second,
	}
}

// notifyScript writes a script that appends its arguments to a file.
func notifyScript(t *testing.T) (script, out string) {
	dir := t.TempDir()
	script = filepath.Join(dir, "notify.sh")
	out = filepath.Join(dir, "out")
	body := "#!/bin/sh\necho \"$*\" >> " + out + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, out
}

// TestInstanceFailover runs a master and a backup in two namespaces: the
// higher priority takes the VIP, sends GARP, and on graceful stop the
// backup takes over.
func TestInstanceFailover(t *testing.T) {
	l := newLab(t)
	vip := l.vip()

	// A stale VIP on b, as a killed predecessor leaves it.
	linkB, err := l.hB.LinkByName(l.ifB)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.hB.AddrAdd(linkB, prefixAddr(vip)); err != nil {
		t.Fatal(err)
	}

	// Capture ARP on b before a starts.
	var capture *packet.Conn
	in(t, l.nsB, func() {
		ifi, err := net.InterfaceByName(l.ifB)
		if err != nil {
			t.Error(err)
			return
		}
		if capture, err = packet.Listen(ifi, packet.Raw, etherTypeARP, nil); err != nil {
			t.Error(err)
		}
	})
	if capture == nil {
		t.FailNow()
	}
	defer capture.Close()

	script, outA := notifyScript(t)
	cfgA := testConfig("VI_A", l.ifA, 150, vip)
	cfgA.NotifyMaster = []string{script, "master"}
	cfgA.NotifyBackup = []string{script, "backup"}
	cfgA.NotifyStop = []string{script, "stop"}
	cfgA.Notify = []string{script}
	cfgB := testConfig("VI_B", l.ifB, 100, vip)

	regA := prometheus.NewRegistry()
	var (
		left     atomic.Int32 // calls of OnLeaveMaster
		heldVIP  atomic.Int32 // calls that found the VIP still on a's interface
		misorder atomic.Int32 // calls whose removed flag disagreed with the interface
	)
	a := start(t, l.nsA, cfgA, regA, func(o *Options) {
		o.OnLeaveMaster = func(removed bool) {
			left.Add(1)
			// Its own handle: the callback runs on the instance's goroutine.
			h, err := netlink.NewHandleAt(l.nsA)
			if err != nil {
				misorder.Add(1)
				return
			}
			defer h.Close()
			held, err := addrHeld(h, l.ifA, vip.Addr())
			if held {
				heldVIP.Add(1)
			}
			if err != nil || held == removed {
				misorder.Add(1)
			}
		}
	})
	b := start(t, l.nsB, cfgB, prometheus.NewRegistry())

	waitFor(t, "a MASTER and b BACKUP", func() bool {
		return a.Status().State == "MASTER" && b.Status().State == "BACKUP" && b.Status().Master == l.addrA().String()
	})
	if !hasAddr(t, l.hA, l.ifA, vip.Addr()) {
		t.Fatal("master a does not hold the VIP")
	}
	waitFor(t, "stale VIP removed from b", func() bool { return !hasAddr(t, l.hB, l.ifB, vip.Addr()) })

	// The GARP from a, seen on b.
	linkA, err := l.hA.LinkByName(l.ifA)
	if err != nil {
		t.Fatal(err)
	}
	want := garpFrame(linkA.Attrs().HardwareAddr, vip.Addr())
	buf := make([]byte, 1500)
	capture.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := capture.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no gratuitous ARP from a seen on b: %v", err)
		}
		if n >= len(want) && bytes.Equal(buf[:len(want)], want) {
			break
		}
	}

	st := a.Status()
	if st.EffectivePriority != 150 || st.AdvertsSent == 0 || st.VRID != 51 || st.Version != 3 {
		t.Errorf("a status: %+v", st)
	}
	if got := b.Status().AdvertsReceived; got == 0 {
		t.Error("b received no adverts")
	}
	if v := testutil.ToFloat64(a.Instance.met.state.WithLabelValues("VI_A")); v != 2 {
		t.Errorf("hamr_vrrp_state{instance=VI_A} = %v, want 2", v)
	}

	// Graceful stop of a: b takes over and the VIP moves.
	if n := left.Load(); n != 0 {
		t.Fatalf("OnLeaveMaster called %d times while a is master", n)
	}
	a.stop(t)
	if n, held := left.Load(), heldVIP.Load(); n != 2 || held != 1 {
		t.Errorf("OnLeaveMaster called %d times on a graceful stop of the master, %d with the VIP still held; want 2, once before and once after its removal", n, held)
	}
	if n := misorder.Load(); n != 0 {
		t.Errorf("OnLeaveMaster's removed flag disagreed with the interface %d times", n)
	}
	if st := a.Status().State; st != "STOPPED" {
		t.Errorf("a state after Start = %s", st)
	}
	if hasAddr(t, l.hA, l.ifA, vip.Addr()) {
		t.Error("a left the VIP behind after a graceful stop")
	}
	waitFor(t, "b MASTER", func() bool { return b.Status().State == "MASTER" })
	waitFor(t, "VIP on b", func() bool { return hasAddr(t, l.hB, l.ifB, vip.Addr()) })
	if d := b.Status().Dropped; len(d) != 0 {
		t.Errorf("b dropped adverts: %v", d)
	}

	got, err := os.ReadFile(outA)
	if err != nil {
		t.Fatal(err)
	}
	wantLines := []string{
		"backup", "INSTANCE VI_A BACKUP 150",
		"master", "INSTANCE VI_A MASTER 150",
		"stop", "INSTANCE VI_A STOP 150",
	}
	if lines := strings.Split(strings.TrimSpace(string(got)), "\n"); strings.Join(lines, "|") != strings.Join(wantLines, "|") {
		t.Errorf("notify calls:\n got %q\nwant %q", lines, wantLines)
	}
}

// TestInstanceTracking checks track_routes weights, weight-0 Fault and
// track_interface Fault, with a peer taking over each time.
func TestInstanceTracking(t *testing.T) {
	l := newLab(t)
	vip := l.vip()
	dummy := l.ifA[:len(l.ifA)-1] + "d"
	// A second veth pair inside a (dummy links may be unavailable).
	peerName := l.ifA[:len(l.ifA)-1] + "e"
	if err := l.hA.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dummy}, PeerName: peerName}); err != nil {
		t.Fatal(err)
	}
	var dl netlink.Link
	for _, name := range []string{peerName, dummy} {
		link, err := l.hA.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.hA.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
		dl = link
	}

	cfgA := testConfig("VI_A", l.ifA, 150, vip)
	cfgA.TrackInterface = []string{dummy}
	cfgA.TrackRoutes = map[string]int{"rw": -100, "crit": 0}
	a := start(t, l.nsA, cfgA, nil)
	b := start(t, l.nsB, testConfig("VI_B", l.ifB, 100, vip), nil)

	master := func(want, other *running) func() bool {
		return func() bool { return want.Status().State == "MASTER" && other.Status().State != "MASTER" }
	}
	waitFor(t, "a MASTER", master(a, b))

	a.SetRouteHealthy("rw", false)
	waitFor(t, "b MASTER after a's weight", master(b, a))
	if st := a.Status(); st.State != "BACKUP" || st.EffectivePriority != 50 {
		t.Errorf("a: state %s priority %d, want BACKUP 50", st.State, st.EffectivePriority)
	}
	waitFor(t, "VIP only on b", func() bool {
		return hasAddr(t, l.hB, l.ifB, vip.Addr()) && !hasAddr(t, l.hA, l.ifA, vip.Addr())
	})
	a.SetRouteHealthy("rw", true)
	a.SetRouteHealthy("untracked", false) // ignored
	waitFor(t, "a MASTER again (preempt)", master(a, b))

	if err := l.hA.LinkSetDown(dl); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a FAULT on tracked interface down", func() bool { return a.Status().State == "FAULT" })
	waitFor(t, "b MASTER", master(b, a))
	if hasAddr(t, l.hA, l.ifA, vip.Addr()) {
		t.Error("a holds the VIP in FAULT")
	}
	if err := l.hA.LinkSetUp(dl); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a MASTER after the interface came back", master(a, b))

	a.SetRouteHealthy("crit", false)
	waitFor(t, "a FAULT on weight-0 route", func() bool { return a.Status().State == "FAULT" })
	waitFor(t, "b MASTER", master(b, a))
}

// TestInstanceV2AuthMismatch runs two VRRPv2 instances whose passwords
// differ: each drops the other's adverts (reason auth) and both end up
// MASTER, as keepalived would.
func TestInstanceV2AuthMismatch(t *testing.T) {
	l := newLab(t)
	vip := l.vip()
	cfgA := testConfig("VI_A", l.ifA, 150, vip)
	cfgA.Version, cfgA.AdvertInt, cfgA.AuthPass = 2, time.Second, "secret"
	cfgB := testConfig("VI_B", l.ifB, 100, vip)
	cfgB.Version, cfgB.AdvertInt, cfgB.AuthPass = 2, time.Second, "other"
	reg := prometheus.NewRegistry()
	a := start(t, l.nsA, cfgA, reg)
	b := start(t, l.nsB, cfgB, reg) // same registry: collectors are shared
	waitFor(t, "both MASTER", func() bool {
		return a.Status().State == "MASTER" && b.Status().State == "MASTER"
	})
	waitFor(t, "auth drops counted", func() bool { return b.Status().Dropped[ReasonAuth] > 0 })
	if got := b.Status().AdvertsReceived; got != 0 {
		t.Errorf("b accepted %d adverts", got)
	}
	if v := testutil.ToFloat64(b.met.dropped.WithLabelValues("VI_B", ReasonAuth)); v == 0 {
		t.Error("hamr_vrrp_adverts_dropped_total{instance=VI_B,reason=auth} = 0")
	}
}

// TestNewNeedsSourceAddress: an interface with no IPv4 address of its
// own (the VIP does not count) has nothing to send adverts from, so New
// refuses it up front, unless unicast_src_ip names the source.
func TestNewNeedsSourceAddress(t *testing.T) {
	l := newLab(t)
	link, err := l.hA.LinkByName(l.ifA)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.hA.AddrDel(link, prefixAddr(netip.PrefixFrom(l.addrA(), 24))); err != nil {
		t.Fatal(err)
	}
	if err := l.hA.AddrAdd(link, prefixAddr(netip.PrefixFrom(l.vip().Addr(), 32))); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("VI_src", l.ifA, 100, l.vip())
	in(t, l.nsA, func() { _, err = New(cfg, Options{}) })
	if err == nil || !strings.Contains(err.Error(), "no IPv4 address") {
		t.Errorf("New on %s with only the VIP on it: %v; want it refused for having no IPv4 address", l.ifA, err)
	}
	cfg.UnicastSrcIP = l.addrA()
	in(t, l.nsA, func() { _, err = New(cfg, Options{}) })
	if err != nil {
		t.Errorf("New with unicast_src_ip = %v: %v", cfg.UnicastSrcIP, err)
	}
}

// TestStartAfterInterfaceGone: the interface disappears between New and
// Start. Start returns the reason and has started nothing: Wait returns
// at once and the instance never left Init.
func TestStartAfterInterfaceGone(t *testing.T) {
	l := newLab(t)
	name := "hvtgone" + l.ifA[len(l.ifA)-3:]
	if err := l.hA.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	link, err := l.hA.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.hA.AddrAdd(link, prefixAddr(netip.MustParsePrefix("10.99.7.1/24"))); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("VI_gone", name, 100, netip.MustParsePrefix("10.99.7.100/32"))
	var inst *Instance
	in(t, l.nsA, func() { inst, err = New(cfg, Options{}) })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := l.hA.LinkDel(link); err != nil {
		t.Fatal(err)
	}
	in(t, l.nsA, func() { err = inst.Start(t.Context()) })
	if err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("Start after %s was deleted: %v; want an error naming it", name, err)
	}
	done := make(chan struct{})
	go func() { inst.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait after a failed Start did not return")
	}
	if st := inst.Status().State; st != StateInit.String() {
		t.Errorf("state after a failed Start = %s, want %s", st, StateInit)
	}
	if err := inst.Start(t.Context()); err == nil {
		t.Error("a second Start succeeded")
	}
}
