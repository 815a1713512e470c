package vrrp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Lab addresses.
const (
	vipAddr    = "10.99.0.100"
	vipPrefix  = vipAddr + "/24"
	vipPort    = 7001 // the route clients use, on the VIP
	backendAdr = "127.0.0.1:9001"
	vrid       = 51
)

// labSeq makes namespace names unique within this test process; the
// process ID makes them unique across runs.
var labSeq atomic.Int64

// requireLab stops the test unless it can build a lab: it must run as
// root (skipped outside CI, failed in CI) and find ip and keepalived.
func requireLab(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the VRRP lab needs root (network namespaces, raw sockets); CI runs it as root")
		}
		t.Skip("the VRRP lab needs root (network namespaces, raw sockets)")
	}
	for _, prog := range []string{"ip", "keepalived"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("the VRRP lab needs %s: %v (apt-get install iproute2 keepalived)", prog, err)
		}
	}
}

// host is one network namespace of the lab.
type host struct {
	name string // namespace name, unique per run: hvr-PID-SEQ-r1
	id   string // r1, r2, client; also the responder's answer
	link string // the veth inside the namespace
	addr string // IPv4 address on link, without prefix
}

// lab is a bridge in a namespace of its own and three namespaces wired to
// it: two router hosts and a client.
type lab struct {
	t          testing.TB
	dir        string // per-lab files: configs, pid files, logs
	br         *host
	r1, r2, cl *host

	serving map[string]bool // responders started, by host and address
	routers []*router       // every router started, in order
}

// newLab builds a lab and registers its removal with t.Cleanup. Cleanups
// registered later (processes, listeners) run before the namespaces go.
func newLab(t testing.TB) *lab {
	t.Helper()
	requireLab(t)
	prefix := fmt.Sprintf("hvr-%d-%d-", os.Getpid(), labSeq.Add(1))
	l := &lab{
		t:   t,
		dir: t.TempDir(),
		br:  &host{name: prefix + "br", id: "br"},
		r1:  &host{name: prefix + "r1", id: "r1", link: "veth-r1", addr: "10.99.0.1"},
		r2:  &host{name: prefix + "r2", id: "r2", link: "veth-r2", addr: "10.99.0.2"},
		cl:  &host{name: prefix + "client", id: "client", link: "veth-cl", addr: "10.99.0.10"},
	}
	for _, h := range []*host{l.br, l.r1, l.r2, l.cl} {
		mustIP(t, "netns", "add", h.name)
		t.Cleanup(func() {
			if _, err := runIP("netns", "del", h.name); err != nil {
				t.Errorf("removing namespace: %v", err)
			}
		})
		mustIP(t, "-n", h.name, "link", "set", "lo", "up")
	}
	mustIP(t, "-n", l.br.name, "link", "add", "br0", "type", "bridge")
	mustIP(t, "-n", l.br.name, "link", "set", "br0", "up")
	for _, h := range []*host{l.r1, l.r2, l.cl} {
		port := "port-" + h.id
		// Created inside the bridge namespace, so names never clash with
		// the root namespace or with another run.
		mustIP(t, "-n", l.br.name, "link", "add", port, "type", "veth", "peer", "name", h.link, "netns", h.name)
		mustIP(t, "-n", l.br.name, "link", "set", port, "master", "br0", "up")
		mustIP(t, "-n", h.name, "addr", "add", h.addr+"/24", "dev", h.link)
		mustIP(t, "-n", h.name, "link", "set", h.link, "up")
	}
	return l
}

// runIP runs ip(8) with a deadline and returns its combined output.
func runIP(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func mustIP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := runIP(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hasVIP reports whether the VIP is configured on h's interface.
func (h *host) hasVIP(t testing.TB) bool {
	t.Helper()
	out := mustIP(t, "-n", h.name, "-4", "-o", "addr", "show", "dev", h.link)
	return strings.Contains(out, " "+vipPrefix+" ")
}

// waitVIP waits until the VIP is (want true) or is not on h's interface.
func (h *host) waitVIP(t testing.TB, want bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if h.hasVIP(t) == want {
			return
		}
		if time.Now().After(deadline) {
			out, _ := runIP("-n", h.name, "-4", "addr", "show", "dev", h.link)
			t.Fatalf("%s: VIP present = %v after %v, want %v:\n%s", h.id, !want, timeout, want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do runs fn on an OS thread switched into h's namespace. Sockets created
// by fn stay in that namespace whichever thread uses them later. The
// thread is never unlocked, so the runtime discards it when fn returns
// instead of reusing a thread in the wrong namespace.
func (h *host) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromName(h.name)
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", h.name, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", h.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dial opens a TCP connection from inside h's namespace.
func (h *host) dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// listen accepts connections on addr inside h's namespace, and closes
// each at once, or with hold keeps them all open, until stop or the end
// of the test.
func (h *host) listen(t testing.TB, addr string, hold bool) (stop func()) {
	t.Helper()
	var ln net.Listener
	if err := h.do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("%s: listen %s: %v", h.id, addr, err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if hold {
				held = append(held, c)
			} else {
				c.Close()
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			<-done
			for _, c := range held {
				c.Close()
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// respond serves h.id+"\n" to every connection on addr inside h's
// namespace until the test ends.
func (h *host) respond(t testing.TB, addr string) {
	t.Helper()
	var ln net.Listener
	err := h.do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: responder: %v", h.id, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by cleanup
			}
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprintf(c, "%s\n", h.id)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// answer is one host that answered the client's probe.
type answer struct {
	at   time.Time
	host string
}

// probe opens new TCP connections to addr from the client's namespace in
// a loop and records every change of the host that answers.
type probe struct {
	mu      sync.Mutex
	changes []answer // one entry each time the answering host changes
	last    string
	tries   int
	fails   int
}

// Probe pacing: a new connection starts every probeEvery, on one of
// probeWorkers threads in the client's namespace, whether or not earlier
// ones are still waiting out their 50 ms connect timeout. So a takeover is
// seen within about probeEvery of the moment the VIP answers again, not
// one connect timeout later.
const (
	probeEvery   = 5 * time.Millisecond
	probeWorkers = 16 // > connect timeout / probeEvery
)

// startProbe starts the client; it stops when the test ends.
func (l *lab) startProbe(addr string) *probe {
	p := &probe{}
	ctx, cancel := context.WithCancel(context.Background())
	tokens := make(chan struct{})
	var wg sync.WaitGroup
	for range probeWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // never unlocked: see host.do
			ns, err := netns.GetFromName(l.cl.name)
			if err != nil {
				l.t.Errorf("probe: %v", err)
				return
			}
			defer ns.Close()
			if err := netns.Set(ns); err != nil {
				l.t.Errorf("probe: entering %s: %v", l.cl.name, err)
				return
			}
			for {
				select {
				case <-ctx.Done():
					return
				case <-tokens:
				}
				host, err := ask(ctx, addr)
				p.record(host, err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case tokens <- struct{}{}:
			default: // every worker busy: skip this tick
			}
		}
	}()
	l.t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return p
}

// ask opens one connection (50 ms connect timeout) and reads the host name.
func ask(ctx context.Context, addr string) (string, error) {
	d := net.Dialer{Timeout: 50 * time.Millisecond}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

func (p *probe) record(host string, err error) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tries++
	if err != nil {
		p.fails++
		return
	}
	if host != p.last {
		p.changes = append(p.changes, answer{at: now, host: host})
		p.last = host
	}
}

// errNoAnswer is returned by waitHost when the host never answered.
var errNoAnswer = errors.New("no answer from host")

// waitHost returns the time host first answered at or after since (the
// latest change to host), waiting up to timeout.
func (p *probe) waitHost(host string, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		for _, a := range p.changes {
			if a.host == host && !a.at.Before(since) {
				p.mu.Unlock()
				return a.at, nil
			}
		}
		// Already answering before since, and still the current host.
		if n := len(p.changes); n > 0 && p.changes[n-1].host == host {
			at := p.changes[n-1].at
			p.mu.Unlock()
			if at.Before(since) {
				return since, nil
			}
			return at, nil
		}
		tries, fails := p.tries, p.fails
		p.mu.Unlock()
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%w %s within %v (%d tries, %d failed)", errNoAnswer, host, timeout, tries, fails)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// current is the host that answered last, "" if none yet.
func (p *probe) current() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// adverts reports the arrival, seen from the client's interface, of every
// VRRP advert src sends, until the test ends.
func (l *lab) adverts(src string) <-chan time.Time {
	l.t.Helper()
	var c *packet.Conn
	err := l.cl.do(func() error {
		ifi, err := net.InterfaceByName(l.cl.link)
		if err != nil {
			return err
		}
		c, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_IP, nil)
		return err
	})
	if err != nil {
		l.t.Fatalf("capturing adverts in the client: %v", err)
	}
	want := net.ParseIP(src).To4()
	ch := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 1600)
		for {
			n, _, err := c.ReadFrom(b)
			if err != nil {
				return // closed by cleanup
			}
			// Ethernet (14) + IPv4: protocol at 9, source at 12.
			if n < 34 || b[14+9] != 112 || !net.IP(b[26:30]).Equal(want) {
				continue
			}
			select {
			case ch <- time.Now():
			default: // nobody waiting: keep only the oldest unread
			}
		}
	}()
	l.t.Cleanup(func() {
		c.Close()
		<-done
	})
	return ch
}
