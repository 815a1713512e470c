package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"weak"

	"github.com/hamr-project/hamr/internal/loopback"
	"github.com/hamr-project/hamr/routing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestStartRejectsBadConfig(t *testing.T) {
	rt := newRouting(t, routing.FirstAvailable, "127.0.0.1:1")
	good := Config{Name: "rw", Addr: "127.0.0.1:0", ConnectTimeout: time.Second, MaxConnections: 1}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"no name", func(c *Config) { c.Name = "" }},
		{"no addr", func(c *Config) { c.Addr = "" }},
		{"zero connect_timeout", func(c *Config) { c.ConnectTimeout = 0 }},
		{"zero max_connections", func(c *Config) { c.MaxConnections = 0 }},
		{"bad addr", func(c *Config) { c.Addr = "127.0.0.1:99999" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			p := New(cfg, rt, Options{})
			if err := p.Start(); err == nil {
				t.Error("Start succeeded")
				p.Shutdown(context.Background())
			}
		})
	}
}

// TestFreebind binds an address that is on no interface (TEST-NET-1). No
// traffic is sent to it.
func TestFreebind(t *testing.T) {
	const addr = "192.0.2.1:0"
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Skip("192.0.2.1 is bindable without IP_FREEBIND here (local address or ip_nonlocal_bind=1)")
	} else if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("plain bind: %v, want EADDRNOTAVAIL", err)
	}
	rt := newRouting(t, routing.FirstAvailable, "127.0.0.1:1")
	p := startRoute(t, Config{Addr: addr}, rt, Options{})
	if !p.Listening() {
		t.Fatal("not listening after Start")
	}
	if host, _, _ := net.SplitHostPort(p.Addr()); host != "192.0.2.1" {
		t.Errorf("Addr() = %s, want host 192.0.2.1", p.Addr())
	}
}

// TestDialLocalFailure: a dial that fails for lack of resources on this
// host (here EMFILE from socket(2)) refuses the client with a MySQL
// error, counted, and marks no destination down.
func TestDialLocalFailure(t *testing.T) {
	rt := newRouting(t, routing.FirstAvailable, "127.0.0.1:1")
	emfile := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("socket", syscall.EMFILE)}
	}
	m := NewMetrics(prometheus.NewRegistry())
	p := startRoute(t, Config{Name: "rw"}, rt, Options{Dial: emfile, Metrics: m})
	c := dialProxy(t, p)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || len(b) < 7 || b[4] != 0xff || b[5] != 0x10 || b[6] != 0x04 {
		t.Fatalf("client read %q (%v), want ERR 1040", b, err)
	}
	if v := testutil.ToFloat64(m.refusals.WithLabelValues("rw", reasonLocal)); v != 1 {
		t.Errorf("refusals{reason=local_resources} = %v, want 1", v)
	}
	if !rt.Available() {
		t.Error("destination marked down for this host's shortage")
	}
}

// TestLocalErrors: what counts as this host's shortage, including the
// resolver's, which keeps only the text of its socket error.
func TestLocalErrors(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{os.NewSyscallError("socket", syscall.EMFILE), true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}, true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "dial udp 127.0.0.53:53: socket: too many open files", Name: "db"}}, true},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "db", IsNotFound: true}}, false},
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "server misbehaving", Name: "db", IsTemporary: true}}, false},
	} {
		if got := local(tt.err); got != tt.want {
			t.Errorf("local(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestAcceptSurvivesEMFILE fails accept(2) with EMFILE, as when the
// process is out of file descriptors: the loops back off and retry, log
// the burst and the recovery once each, and Shutdown during the back-off
// returns. (TestAcceptSurvivesRealEMFILE runs out of descriptors for
// real, in a child process.)
func TestAcceptSurvivesEMFILE(t *testing.T) {
	var fails, calls atomic.Int32
	acceptFn = func(fd int) (int, error) {
		calls.Add(1)
		if fails.Add(-1) >= 0 {
			return -1, syscall.EMFILE
		}
		return rawAccept4(fd)
	}
	t.Cleanup(func() { acceptFn = rawAccept4 })
	fails.Store(5)

	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	var logs logBuffer
	p := startRoute(t, Config{}, rt, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c := dialProxy(t, p)
	if err := roundTrip(c, "hello"); err != nil {
		t.Fatalf("after EMFILE burst: %v", err)
	}
	if n := calls.Load(); n < 6 {
		t.Errorf("accept called %d times, want the 5 failures retried", n)
	}
	if n := logs.count("accept failed"); n != 1 {
		t.Errorf("logged %d accept failures for one burst, want 1:\n%s", n, logs.String())
	}
	if n := logs.count("accept recovered"); n != 1 {
		t.Errorf("logged %d recoveries, want 1", n)
	}

	// Shutdown while the loops are backing off ends them.
	c.Close()
	fails.Store(1 << 30)
	d := dialProxy(t, p) // wakes a loop; every accept fails from now on
	d.Close()
	eventually(t, "a failing accept", func() bool { return calls.Load() > 8 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown during back-off: %v", err)
	}
}

// TestAcceptBurstBeyondBudget has more clients waiting than the loops
// accept in one wake-up (acceptsPerWake each) and nothing else that
// would wake them: every client must still be answered. Each is refused,
// because one idle session holds the only slot, so the refusals cause no
// further events either.
func TestAcceptBurstBeyondBudget(t *testing.T) {
	// Two loops: the burst below must stay within the listen backlog.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	var gated atomic.Bool
	release := make(chan struct{})
	acceptFn = func(fd int) (int, error) {
		if gated.Load() {
			<-release
		}
		return rawAccept4(fd)
	}
	t.Cleanup(func() { acceptFn = rawAccept4 })
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }

	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	// A long connect timeout: the held session's dial leaves a timer
	// that would wake the loops at its deadline and hide a stall.
	p := startRoute(t, Config{MaxConnections: 1, ConnectTimeout: time.Minute}, rt, Options{})
	t.Cleanup(open) // before Shutdown, which needs the loops out of accept
	held := dialProxy(t, p)
	if err := roundTrip(held, "hold"); err != nil {
		t.Fatal(err)
	}

	// The first of these blocks the loops in accept until all are queued.
	gated.Store(true)
	n := 2*len(p.loops)*acceptsPerWake + 10
	clients := make([]net.Conn, n)
	for i := range clients {
		clients[i] = dialProxy(t, p)
	}
	open()
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("client %d of %d: %v (read %d bytes)", i, n, err, len(b))
		}
		if len(b) < 5 || b[4] != 0xff {
			t.Fatalf("client %d of %d: got %q, want an ERR packet", i, n, b)
		}
	}
}

// TestBytesCountedDuringSession checks that hamr_route_bytes_total, as
// a scrape shows it, moves while a session is open, as it must for long
// pooled connections.
func TestBytesCountedDuringSession(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	reg := prometheus.NewRegistry()
	p := startRoute(t, Config{Name: "rw"}, rt, Options{Metrics: NewMetrics(reg)})
	c := dialProxy(t, p)
	counted := func(dir string) float64 {
		return scraped(t, reg, "hamr_route_bytes_total", map[string]string{"route": "rw", "destination": be.addr(), "direction": dir})
	}
	for i, msg := range []string{"hello", "world!"} {
		if err := roundTrip(c, msg); err != nil {
			t.Fatal(err)
		}
		want := float64(len("hello") + i*len("world!"))
		eventually(t, "bytes counted in both directions", func() bool {
			return counted("client_to_server") == want && counted("server_to_client") == want
		})
	}
}

func TestFailoverOnDialError(t *testing.T) {
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context) (net.Conn, error)
	}{
		{"refuse", func(context.Context) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
		}},
		{"reset", func(context.Context) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNRESET)}
		}},
		{"hang", func(ctx context.Context) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t, named("b"))
			const bad = "127.0.0.1:9" // never dialed: the fault is injected
			rt := newRouting(t, routing.FirstAvailable, bad, be.addr())
			m := NewMetrics(prometheus.NewRegistry())
			var (
				mu     sync.Mutex
				picks  []routing.Pick
				downOK bool
			)
			var d net.Dialer
			p := startRoute(t, Config{Name: "rw", ReadWrite: true, ConnectTimeout: 100 * time.Millisecond}, rt, Options{
				Metrics: m,
				Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
					if addr == bad {
						return tc.dial(ctx)
					}
					return d.DialContext(ctx, network, addr)
				},
				OnDialError: func(p routing.Pick, err error) {
					mu.Lock()
					defer mu.Unlock()
					picks = append(picks, p)
					downOK = !p.Route.State()[p.Index].Up
				},
			})
			wantFailedOver(t, p, rt, m, bad)
			eventually(t, "OnDialError called", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(picks) > 0
			})
			mu.Lock()
			if len(picks) != 1 || picks[0].Index != 0 || picks[0].Route != rt {
				t.Errorf("OnDialError picks = %+v, want one for index 0", picks)
			}
			if !downOK {
				t.Error("OnDialError ran before the destination was marked down")
			}
			mu.Unlock()
		})
	}
}

// TestDialErrorReportedOffLoop: what follows a failed dial beyond the
// routing state (the routing watchers, then OnDialError: the daemon's
// checker, logs, VRRP tracking) does not hold up the client, which goes
// on to the next destination while the first watcher is still blocked;
// once released, the watcher and then OnDialError have run, once each.
func TestDialErrorReportedOffLoop(t *testing.T) {
	be := newBackend(t, named("b"))
	bad := loopback.Refused(t)
	rt := newRouting(t, routing.FirstAvailable, bad, be.addr())
	release := make(chan struct{})
	var (
		mu    sync.Mutex
		calls []string
	)
	record := func(what string) {
		mu.Lock()
		calls = append(calls, what)
		mu.Unlock()
	}
	rt.Watch(func() {
		record("watcher")
		<-release
	})
	m := NewMetrics(prometheus.NewRegistry())
	p := startRoute(t, Config{Name: "rw", ReadWrite: true, ConnectTimeout: time.Second}, rt, Options{
		Metrics: m,
		OnDialError: func(routing.Pick, error) {
			record("OnDialError")
			<-release
		},
	})
	released := false
	defer func() {
		if !released {
			close(release) // let Shutdown end the reporter
		}
	}()
	wantFailedOver(t, p, rt, m, bad)
	close(release)
	released = true
	eventually(t, "watcher and OnDialError called", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= 2
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(calls, []string{"watcher", "OnDialError"}) {
		t.Errorf("calls = %q, want the watcher, then OnDialError, once each", calls)
	}
}

// wantFailedOver checks that a client of p, route "rw" over [bad, b],
// reaches b (a named("b") backend) and stays there: b is the primary,
// the session is counted on b, and bad has one failed dial.
func wantFailedOver(t *testing.T, p *Route, rt *routing.Route, m *Metrics, bad string) {
	t.Helper()
	c := dialProxy(t, p)
	if name, err := readLine(c); err != nil || name != "b" {
		t.Fatalf("client reached %q (%v), want b", name, err)
	}
	if err := roundTrip(c, "ping"); err != nil {
		t.Fatal(err)
	}
	if got := rt.Primary(); got != 1 {
		t.Errorf("primary = %d, want 1", got)
	}
	if got := p.Sessions(); !equalInts(got, []int{0, 1}) {
		t.Errorf("Sessions() = %v, want [0 1]", got)
	}
	if v := testutil.ToFloat64(m.dialErrs.WithLabelValues("rw", bad)); v != 1 {
		t.Errorf("dial errors for %s = %v, want 1", bad, v)
	}
}

// TestServerClosesBeforeGreeting: a server that accepts and closes
// without a byte (a SIGKILLed mariadbd still completes handshakes in the
// kernel until its sockets close) fails over like a refused connect,
// while the client has seen nothing: the client reaches the next
// destination, and the silent one is marked down.
func TestServerClosesBeforeGreeting(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(net.Conn)
	}{
		{"fin", func(c net.Conn) { c.Close() }},
		{"reset", func(c net.Conn) { c.(*net.TCPConn).SetLinger(0); c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newBackend(t, tc.close)
			b := newBackend(t, named("b"))
			rt := newRouting(t, routing.FirstAvailable, a.addr(), b.addr())
			m := NewMetrics(prometheus.NewRegistry())
			p := startRoute(t, Config{Name: "rw", ReadWrite: true}, rt, Options{Metrics: m})
			wantFailedOver(t, p, rt, m, a.addr())
			if rt.State()[0].Up {
				t.Error("the silent destination is still up")
			}
		})
	}
}

// TestClientResetAfterGreeting: a client that resets while the server's
// greeting is on its way makes the write of the greeting fail. That is
// the client's doing: the server is not marked down, and nothing is
// dialed for the gone client.
func TestClientResetAfterGreeting(t *testing.T) {
	speak := make(chan struct{})
	a := newBackend(t, func(c net.Conn) {
		<-speak
		io.WriteString(c, "a\n")
		io.Copy(io.Discard, c)
	})
	b := newBackend(t, named("b"))
	rt := newRouting(t, routing.FirstAvailable, a.addr(), b.addr())
	p := startRoute(t, Config{ReadWrite: true, Loops: 1}, rt, Options{})
	c := dialProxy(t, p)
	eventually(t, "the session on a", func() bool { return equalInts(p.Sessions(), []int{1, 0}) })

	// Hold the loop while the greeting arrives and the client resets, so
	// that it reads the greeting before it sees the reset.
	l := p.loops[0]
	held, release := make(chan struct{}), make(chan struct{})
	l.post(func(*loop) {
		close(held)
		<-release
	})
	<-held
	close(speak)
	time.Sleep(50 * time.Millisecond) // the greeting crosses loopback
	c.SetLinger(0)
	c.Close()
	time.Sleep(50 * time.Millisecond) // and the reset
	close(release)
	eventually(t, "the session closed", func() bool { return equalInts(p.Sessions(), []int{0, 0}) })
	l.call(func(*loop) {}) // whatever the loop would do next is done

	if !rt.State()[0].Up || rt.Primary() != 0 {
		t.Errorf("a client's reset marked the server down: up=%v, primary=%d", rt.State()[0].Up, rt.Primary())
	}
	if !rt.State()[1].Up {
		t.Error("the next destination was dialed for a gone client, and marked down")
	}
}

// TestServerClosesAfterSpeech: once anything has passed, a server's
// close is the session's end: the client sees it, and the destination
// stays up (a server may close a session it has greeted, or one whose
// client spoke out of turn, and what the client sent cannot be replayed).
func TestServerClosesAfterSpeech(t *testing.T) {
	for _, tc := range []struct {
		name   string
		server func(net.Conn)
		client string // sent before reading
	}{
		{"greeted", func(c net.Conn) { io.WriteString(c, "a\n"); c.Close() }, ""},
		{"client first", func(c net.Conn) { readLine(c); c.Close() }, "early\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newBackend(t, tc.server)
			b := newBackend(t, named("b"))
			rt := newRouting(t, routing.FirstAvailable, a.addr(), b.addr())
			p := startRoute(t, Config{ReadWrite: true}, rt, Options{})
			c := dialProxy(t, p)
			if tc.client != "" {
				if _, err := io.WriteString(c, tc.client); err != nil {
					t.Fatal(err)
				}
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if tc.client == "" && string(got) != "a\n" {
				t.Errorf("client read %q (%v), want the greeting, then the end", got, err)
			}
			if tc.client != "" && len(got) != 0 {
				t.Errorf("client read %q (%v), want the end", got, err)
			}
			if got := rt.Primary(); got != 0 {
				t.Errorf("primary = %d, want 0", got)
			}
			if !rt.State()[0].Up {
				t.Error("a server that spoke was marked down")
			}
		})
	}
}

func TestPrimaryMoveClosesOldSessions(t *testing.T) {
	a := newBackend(t, named("a"))
	b := newBackend(t, named("b"))
	rt := newRouting(t, routing.FirstAvailable, a.addr(), b.addr())
	p := startRoute(t, Config{ReadWrite: true}, rt, Options{})

	var onA []net.Conn
	for range 2 {
		c := dialProxy(t, p)
		if name, err := readLine(c); err != nil || name != "a" {
			t.Fatalf("reached %q (%v), want a", name, err)
		}
		onA = append(onA, c)
	}
	if got := p.Sessions(); !equalInts(got, []int{2, 0}) {
		t.Fatalf("Sessions() = %v, want [2 0]", got)
	}

	rt.SetUp(0, false) // primary moves to b; the watcher runs before SetUp returns
	if got := p.Sessions(); !equalInts(got, []int{0, 0}) {
		t.Fatalf("after the move Sessions() = %v, want [0 0]", got)
	}
	for _, c := range onA {
		wantClosed(t, c)
	}

	c := dialProxy(t, p)
	if name, err := readLine(c); err != nil || name != "b" {
		t.Fatalf("reached %q (%v), want b", name, err)
	}
	// a comes back: the primary is sticky, b's session lives on.
	rt.SetUp(0, true)
	if err := roundTrip(c, "still here"); err != nil {
		t.Fatalf("session on the new primary: %v", err)
	}
	if got := p.Sessions(); !equalInts(got, []int{0, 1}) {
		t.Fatalf("Sessions() = %v, want [0 1]", got)
	}
	// An operator reset moves the primary back to a and closes b's session.
	if !rt.Reset() {
		t.Fatal("Reset did not move the primary")
	}
	wantClosed(t, c)
	if got := p.Sessions(); !equalInts(got, []int{0, 0}) {
		t.Fatalf("after reset Sessions() = %v, want [0 0]", got)
	}
}

// TestReadWriteOneDestination hammers a read-write route while the primary
// moves back and forth, and checks from a watcher and a poller that the
// route never has sessions to two destinations.
func TestReadWriteOneDestination(t *testing.T) {
	a := newBackend(t, echo)
	b := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, a.addr(), b.addr())
	p := startRoute(t, Config{ReadWrite: true}, rt, Options{})

	var bad, stale atomic.Int32
	check := func() {
		n := 0
		for _, s := range p.Sessions() {
			if s > 0 {
				n++
			}
		}
		if n > 1 {
			bad.Add(1)
		}
	}
	rt.Watch(check)

	var wg sync.WaitGroup
	var served atomic.Int32
	for range 4 {
		wg.Go(func() {
			for range 100 {
				c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if roundTrip(c, "x") == nil { // fails when a move closes the session
					served.Add(1)
				}
				check()
				c.Close()
			}
		})
	}
	clients := make(chan struct{})
	go func() {
		wg.Wait()
		close(clients)
	}()
	flips := 0
flip:
	for ; flips < 1e6; flips++ {
		select {
		case <-clients:
			break flip
		default:
		}
		down := flips % 2
		rt.SetUp(down, false)
		check()
		// Sessions only on the current primary: none is left, nor kept
		// from a dial that began before the move, on the one just down.
		if p.Sessions()[down] > 0 {
			stale.Add(1)
		}
		rt.SetUp(down, true)
		check()
		// A pause, or back-to-back moves close every session before its
		// round trip and none is served.
		time.Sleep(100 * time.Microsecond)
	}
	<-clients
	t.Logf("%d sessions served during %d primary moves", served.Load(), flips)
	if served.Load() == 0 || flips == 0 {
		t.Fatal("test did not overlap sessions with primary moves")
	}
	if n := bad.Load(); n > 0 {
		t.Fatalf("saw sessions to two destinations %d times", n)
	}
	if n := stale.Load(); n > 0 {
		t.Fatalf("saw sessions on a destination just marked down %d times", n)
	}
}

func TestReadOnlyRotation(t *testing.T) {
	var dests []string
	for _, n := range []string{"a", "b", "c"} {
		dests = append(dests, newBackend(t, named(n)).addr())
	}
	rt := newRouting(t, routing.RoundRobin, dests...)
	p := startRoute(t, Config{Name: "ro"}, rt, Options{})

	var conns []net.Conn
	connect := func(want string) {
		t.Helper()
		c := dialProxy(t, p)
		if name, err := readLine(c); err != nil || name != want {
			t.Fatalf("reached %q (%v), want %s", name, err, want)
		}
		conns = append(conns, c)
	}
	for _, want := range []string{"a", "b", "c", "a", "b", "c"} {
		connect(want)
	}
	if got := p.Sessions(); !equalInts(got, []int{2, 2, 2}) {
		t.Fatalf("Sessions() = %v, want [2 2 2]", got)
	}
	// A read-only route keeps sessions when a destination goes down.
	rt.SetUp(1, false)
	if got := p.Sessions(); !equalInts(got, []int{2, 2, 2}) {
		t.Fatalf("after b down Sessions() = %v, want [2 2 2]", got)
	}
	if err := roundTrip(conns[1], "long read"); err != nil {
		t.Fatalf("session on b: %v", err)
	}
	connect("a")
	connect("c")
}

func TestReadOnlyFallback(t *testing.T) {
	primary := newBackend(t, named("primary"))
	rw := newRouting(t, routing.FirstAvailable, primary.addr())
	rt, err := routing.New("ro", routing.RoundRobinWithFallback, []string{loopback.Refused(t)}, rw)
	if err != nil {
		t.Fatal(err)
	}
	p := startRoute(t, Config{Name: "ro"}, rt, Options{})
	for range 2 { // the first dial fails and marks the replica down
		c := dialProxy(t, p)
		if name, err := readLine(c); err != nil || name != "primary" {
			t.Fatalf("reached %q (%v), want primary", name, err)
		}
		c.Close()
	}
	if got := p.Sessions(); got[0] != 0 {
		t.Errorf("Sessions() = %v: fallback sessions counted", got)
	}
}

// fallenBack starts a read-only route "ro" over one refused replica,
// marked down, that falls back to a primary answering "old", and opens one
// session through that fallback. It returns the routing.Route, the proxy
// Route, the session and the old primary's and the replica's addresses.
func fallenBack(t *testing.T, opts Options) (rt *routing.Route, p *Route, c net.Conn, old, replica string) {
	t.Helper()
	oldPrimary := newBackend(t, named("old"))
	replica = loopback.Refused(t)
	rt, err := routing.New("ro", routing.RoundRobinWithFallback, []string{replica}, newRouting(t, routing.FirstAvailable, oldPrimary.addr()))
	if err != nil {
		t.Fatal(err)
	}
	rt.SetUp(0, false) // every client falls back
	p = startRoute(t, Config{Name: "ro"}, rt, opts)
	c = dialProxy(t, p)
	if name, err := readLine(c); err != nil || name != "old" {
		t.Fatalf("reached %q (%v), want old", name, err)
	}
	return rt, p, c, oldPrimary.addr(), replica
}

// TestFallbackChanged: a read-only route whose fallback is replaced keeps
// the sessions open through the old one (counted, and closed by
// CloseSessions), and sends new clients to the new one.
func TestFallbackChanged(t *testing.T) {
	rt, p, c, _, _ := fallenBack(t, Options{})
	newPrimary := newBackend(t, named("new"))
	if err := rt.SetFallback(newRouting(t, routing.FirstAvailable, newPrimary.addr())); err != nil {
		t.Fatal(err)
	}
	p.FallbackChanged()
	if err := roundTrip(c, "still here"); err != nil {
		t.Fatalf("session through the old fallback after the change: %v", err)
	}
	c2 := dialProxy(t, p)
	if name, err := readLine(c2); err != nil || name != "new" {
		t.Fatalf("new client reached %q (%v), want new", name, err)
	}
	// A second change: the sessions of both earlier fallbacks still count.
	if err := rt.SetFallback(newRouting(t, routing.FirstAvailable, loopback.Refused(t))); err != nil {
		t.Fatal(err)
	}
	p.FallbackChanged()
	if n := p.FallbackSessions(); n != 2 {
		t.Errorf("FallbackSessions = %d, want 2 (through the first fallback and the second)", n)
	}
	if n := p.CloseSessions(); n != 2 {
		t.Errorf("CloseSessions = %d, want 2", n)
	}
	wantClosed(t, c)
	wantClosed(t, c2)
}

// TestFallbackDropped: a read-only route whose fallback is taken away
// (the new fallback route did not start) refuses new clients while its
// replicas are down, and still counts and closes the sessions it opened
// through the old fallback.
func TestFallbackDropped(t *testing.T) {
	rt, p, c, _, _ := fallenBack(t, Options{})
	if err := rt.SetFallback(nil); err != nil {
		t.Fatal(err)
	}
	p.FallbackChanged()
	refused := dialProxy(t, p)
	refused.SetReadDeadline(time.Now().Add(10 * time.Second))
	if pkt, err := io.ReadAll(refused); err != nil || len(pkt) < 5 || pkt[4] != 0xff {
		t.Fatalf("client without fallback read %q (%v), want an ERR packet", pkt, err)
	}
	if err := roundTrip(c, "still here"); err != nil {
		t.Fatalf("session through the old fallback: %v", err)
	}
	if n := p.FallbackSessions(); n != 1 {
		t.Errorf("FallbackSessions = %d, want 1", n)
	}
	if n := p.CloseSessions(); n != 1 {
		t.Errorf("CloseSessions = %d, want 1", n)
	}
	wantClosed(t, c)
}

// TestFallbackChangedSeries: the series of a replaced fallback's
// destinations go once its last session ends, so that /metrics does not
// list a gone destination at 0 until a restart.
func TestFallbackChangedSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	rt, p, c, old, replica := fallenBack(t, Options{Metrics: NewMetrics(reg)})
	newPrimary := newBackend(t, named("new"))
	if err := rt.SetFallback(newRouting(t, routing.FirstAvailable, newPrimary.addr())); err != nil {
		t.Fatal(err)
	}
	p.FallbackChanged()
	want := []string{newPrimary.addr(), old, replica}
	slices.Sort(want)
	if got := seriesDests(t, reg); !slices.Equal(got, want) {
		t.Errorf("with a session through the old fallback: series for %v, want %v", got, want)
	}
	c.Close()
	want = slices.DeleteFunc(want, func(a string) bool { return a == old })
	eventually(t, "old fallback's series gone", func() bool { return slices.Equal(seriesDests(t, reg), want) })
}

// TestSeriesSharedWithSuccessor: a route that a reload replaced, while it
// drains a session through an earlier fallback, does not delete the
// series of a destination its successor (same name) uses; and once both
// are gone, nothing of the route is left, its fallbacks' series included.
func TestSeriesSharedWithSuccessor(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	rt, a, c, old, _ := fallenBack(t, Options{Metrics: m})
	newPrimary := newBackend(t, named("new"))
	if err := rt.SetFallback(newRouting(t, routing.FirstAvailable, newPrimary.addr())); err != nil {
		t.Fatal(err)
	}
	a.FallbackChanged() // old now only drains c's session
	b := startRoute(t, Config{Name: "ro"}, newRouting(t, routing.RoundRobin, old), Options{Metrics: m})
	cb := dialProxy(t, b)
	if name, err := readLine(cb); err != nil || name != "old" {
		t.Fatalf("successor reached %q (%v), want old", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Shutdown(context.Background()) }()
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := seriesDests(t, reg); !slices.Equal(got, []string{old}) {
		t.Errorf("after the replaced route's end: series for %v, want only the successor's %s", got, old)
	}
	cb.Close()
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("%d series (%v) left after both routes ended", n, err)
	}
}

// seriesDests returns the destinations that hamr_route_sessions_active
// has a series for, sorted.
func seriesDests(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ds []string
	for _, mf := range mfs {
		if mf.GetName() != "hamr_route_sessions_active" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "destination" {
					ds = append(ds, l.GetValue())
				}
			}
		}
	}
	slices.Sort(ds)
	return ds
}

// TestShutdownForgetsFallback: a read-only Route that is shut down while
// its fallback route lives on (a reload replaced only the read-only
// route) is not kept alive by the fallback's watchers.
func TestShutdownForgetsFallback(t *testing.T) {
	rw := newRouting(t, routing.FirstAvailable, loopback.Refused(t))
	var gone []weak.Pointer[Route]
	for range 3 {
		rt, err := routing.New("ro", routing.RoundRobinWithFallback, []string{loopback.Refused(t)}, rw)
		if err != nil {
			t.Fatal(err)
		}
		p := New(Config{Name: "ro", Addr: "127.0.0.1:0", ConnectTimeout: time.Second, MaxConnections: 10}, rt, Options{})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if err := p.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		gone = append(gone, weak.Make(p))
	}
	for range 5 {
		runtime.GC()
	}
	for i, w := range gone {
		if w.Value() != nil {
			t.Errorf("route %d is still reachable after Shutdown: the fallback route keeps it", i)
		}
	}
	rw.SetUp(0, false) // the fallback's watchers run: none of a shut-down route
}

func TestCloseListenerWhenDown(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	var logs logBuffer
	p := startRoute(t, Config{CloseListenerWhenDown: true}, rt, Options{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	addr := p.Addr()
	if !p.Listening() {
		t.Fatal("not listening while available")
	}
	rt.SetUp(0, false)
	eventually(t, "listener closed", func() bool { return !p.Listening() })
	if err := dialClosed(addr); err != nil {
		t.Fatalf("connect while down: %v", err)
	}
	rt.SetUp(0, true)
	eventually(t, "listener reopened", func() bool { return p.Listening() })
	if p.Addr() != addr {
		t.Fatalf("re-bound on %s, want %s", p.Addr(), addr)
	}
	if err := roundTrip(dialProxy(t, p), "back"); err != nil {
		t.Fatal(err)
	}
	if logs.count("listener closed") != 1 || logs.count("listening again") != 1 {
		t.Errorf("close/reopen not logged once each:\n%s", logs.String())
	}
}

func TestShutdownDrains(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := New(Config{Name: "rw", Addr: "127.0.0.1:0", ConnectTimeout: time.Second, MaxConnections: 10}, rt, Options{Logger: testLogger(t)})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	c := dialProxy(t, p)
	if err := roundTrip(c, "a"); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res <- p.Shutdown(ctx)
	}()
	eventually(t, "listener closed", func() bool { return !p.Listening() })
	if err := dialClosed(p.Addr()); err != nil {
		t.Fatalf("new client while draining: %v", err)
	}
	if err := roundTrip(c, "still served while draining"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		t.Fatalf("Shutdown returned %v with a session open", err)
	default:
	}
	c.CloseWrite() // the client ends its session
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last session ended")
	}
}

func TestShutdownDeadlineClosesSessions(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := New(Config{Name: "rw", Addr: "127.0.0.1:0", ConnectTimeout: time.Second, MaxConnections: 10}, rt, Options{Logger: testLogger(t)})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	c := dialProxy(t, p)
	if err := roundTrip(c, "a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	wantClosed(t, c)
	if got := p.Sessions(); !equalInts(got, []int{0}) {
		t.Errorf("Sessions() = %v after Shutdown", got)
	}
	if err := p.Start(); err == nil {
		t.Error("Start after Shutdown succeeded")
	}
}

func TestMetrics(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	if NewMetrics(reg).active != m.active {
		t.Fatal("second NewMetrics on one registry did not reuse the collectors")
	}
	p := startRoute(t, Config{Name: "rw", MaxConnections: 1}, rt, Options{Metrics: m})
	c := dialProxy(t, p)
	if err := roundTrip(c, "12345"); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.active.WithLabelValues("rw", be.addr())); v != 1 {
		t.Errorf("sessions_active = %v, want 1", v)
	}
	refused := dialProxy(t, p) // over max_connections
	if pkt, err := io.ReadAll(refused); err != nil || len(pkt) < 5 || pkt[4] != 0xff {
		t.Fatalf("refused client read %q (%v), want an ERR packet", pkt, err)
	}
	c.CloseWrite()
	wantClosed(t, c)
	eventually(t, "session end", func() bool { return testutil.ToFloat64(m.active.WithLabelValues("rw", be.addr())) == 0 })
	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.total.WithLabelValues("rw", be.addr()), 1},
		{m.bytes.WithLabelValues("rw", be.addr(), "client_to_server"), 5},
		{m.bytes.WithLabelValues("rw", be.addr(), "server_to_client"), 5},
		{m.refusals.WithLabelValues("rw", "max_connections"), 1},
		{m.refusals.WithLabelValues("rw", "no_destination"), 0},
	} {
		if v := testutil.ToFloat64(tc.c); v != tc.want {
			t.Errorf("%v = %v, want %v", tc.c.(prometheus.Metric).Desc(), v, tc.want)
		}
	}
	// A successor of the same name (a reload replaced the route) keeps
	// counting in the same series; when the last one is gone, so are they.
	next := startRoute(t, Config{Name: "rw"}, newRouting(t, routing.FirstAvailable, be.addr()), Options{Metrics: m})
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.total.WithLabelValues("rw", be.addr())); v != 1 {
		t.Errorf("sessions_total after the first route's Shutdown = %v, want 1 (kept for its successor)", v)
	}
	if err := next.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d series left after both routes' Shutdown", n)
	}
}

// TestRebindKeepsZone: with close_listener_when_down, a route on a
// link-local IPv6 address binds again with its zone.
func TestRebindKeepsZone(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{Addr: "[fe80::1%lo]:0", CloseListenerWhenDown: true}, rt, Options{})
	if a := p.Addr(); !strings.HasPrefix(a, "[fe80::1%lo]:") {
		t.Errorf("Addr() = %s, want [fe80::1%%lo]:PORT", a)
	}
	rt.SetUp(0, false)
	eventually(t, "listener closed", func() bool { return !p.Listening() })
	rt.SetUp(0, true)
	eventually(t, "listener bound again", func() bool { return p.Listening() })
}

// TestCloseSessionsTo: on a route bound to all addresses, only the
// sessions that came in through the given address are closed.
func TestCloseSessionsTo(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.RoundRobin, be.addr())
	p := startRoute(t, Config{Addr: "0.0.0.0:0"}, rt, Options{})
	_, port, _ := net.SplitHostPort(p.Addr())
	dial := func(host string) net.Conn {
		c := dialAt(t, net.JoinHostPort(host, port))
		if err := roundTrip(c, "hello"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	viaVIP, other := dial("127.0.0.2"), dial("127.0.0.1")
	if n := p.CloseSessionsTo([]netip.Addr{netip.MustParseAddr("127.0.0.2")}); n != 1 {
		t.Errorf("CloseSessionsTo = %d, want 1", n)
	}
	wantClosed(t, viaVIP)
	if err := roundTrip(other, "still here"); err != nil {
		t.Errorf("session through another address: %v", err)
	}
	if got := p.Sessions(); !equalInts(got, []int{1}) {
		t.Errorf("Sessions() = %v, want [1]", got)
	}
}

// TestCloseSessions checks that CloseSessions closes every open session,
// idle or not, and that the route keeps accepting.
func TestCloseSessions(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.RoundRobin, be.addr())
	p := startRoute(t, Config{}, rt, Options{})
	conns := make([]*net.TCPConn, 3)
	for i := range conns {
		conns[i] = dialProxy(t, p)
		if err := roundTrip(conns[i], "hello"); err != nil {
			t.Fatal(err)
		}
	}
	if n := p.CloseSessions(); n != len(conns) {
		t.Fatalf("CloseSessions = %d, want %d", n, len(conns))
	}
	for _, c := range conns {
		wantClosed(t, c)
	}
	c := dialProxy(t, p)
	if err := roundTrip(c, "again"); err != nil {
		t.Fatalf("new session after CloseSessions: %v", err)
	}
}

// TestCloseSessionsDuringDial checks that a client whose destination is
// being dialed when CloseSessions runs is dropped too, not connected
// afterwards.
func TestCloseSessionsDuringDial(t *testing.T) {
	be := newBackend(t, echo)
	rt := newRouting(t, routing.RoundRobin, be.addr())
	dialing, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		once.Do(func() {
			close(dialing)
			select { // ctx ends at Shutdown, should the test fail first
			case <-release:
			case <-ctx.Done():
			}
		})
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	p := startRoute(t, Config{}, rt, Options{Dial: dial})
	c := dialProxy(t, p)
	select {
	case <-dialing:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy never dialed")
	}
	if n := p.CloseSessions(); n != 0 {
		t.Fatalf("CloseSessions = %d, want 0 (the only client is still being connected)", n)
	}
	close(release)
	wantClosed(t, c)
	if n := p.Sessions()[0]; n != 0 {
		t.Fatalf("%d sessions after the dial finished, want 0", n)
	}
	c2 := dialProxy(t, p)
	if err := roundTrip(c2, "later"); err != nil {
		t.Fatalf("a client after CloseSessions: %v", err)
	}
}

// TestCloseSessionsToDuringDial: a client that came through the address
// being released and is still being connected is dropped too, at once,
// not after connect_timeout; one that came through another address is
// not.
func TestCloseSessionsToDuringDial(t *testing.T) {
	hang := loopback.Hanging(t, 0)
	rt := newRouting(t, routing.RoundRobin, hang)
	p := startRoute(t, Config{Addr: "0.0.0.0:0", ConnectTimeout: time.Minute}, rt, Options{})
	_, port, _ := net.SplitHostPort(p.Addr())
	viaVIP, other := dialAt(t, net.JoinHostPort("127.0.0.2", port)), dialAt(t, net.JoinHostPort("127.0.0.1", port))
	waitSynSent(t, hang, 2)
	if n := p.CloseSessionsTo([]netip.Addr{netip.MustParseAddr("127.0.0.2")}); n != 0 {
		t.Fatalf("CloseSessionsTo = %d, want 0 (both clients are still being connected)", n)
	}
	wantClosed(t, viaVIP) // within 10 s, against a minute of connect_timeout
	waitSynSent(t, hang, 1)
	other.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := other.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the client through another address: %v, want it still waiting for its server", err)
	}
	p.CloseSessions() // it would wait a minute, and hold the shutdown
}

// TestCloseSessionsDuringLoopDial: a client whose destination is being
// dialed by the loop itself (here one that never answers the SYN) is
// closed by CloseSessions at once, not when connect_timeout ends the
// dial, and the destination is not marked down for a dial given up.
func TestCloseSessionsDuringLoopDial(t *testing.T) {
	hang := loopback.Hanging(t, 0)
	be := newBackend(t, named("b"))
	rt := newRouting(t, routing.FirstAvailable, hang, be.addr())
	p := startRoute(t, Config{Name: "rw", ReadWrite: true, ConnectTimeout: time.Minute}, rt, Options{})
	c := dialProxy(t, p)
	waitSynSent(t, hang, 1)
	if n := p.CloseSessions(); n != 0 {
		t.Fatalf("CloseSessions = %d, want 0 (the only client is still being connected)", n)
	}
	wantClosed(t, c) // within 10 s, against a minute of connect_timeout
	waitSynSent(t, hang, 0)
	if !rt.State()[0].Up {
		t.Error("the destination whose dial was given up is marked down")
	}
}

// waitSynSent waits until n sockets are connecting to addr (state
// SYN_SENT in /proc/net/tcp).
func waitSynSent(t *testing.T, addr string, n int) {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	// /proc/net/tcp: "sl local rem st ...", rem as HEX_IP:HEX_PORT, the
	// IP in host (little-endian) order; SYN_SENT is state 02.
	a := ap.Addr().As4()
	rem := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], ap.Port())
	var got int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		got = 0
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 3 && f[2] == rem && f[3] == "02" {
				got++
			}
		}
		if got == n {
			return
		}
	}
	t.Fatalf("%d sockets connecting to %s, want %d", got, addr, n)
}

// TestFailoverOnConnectTimeout checks the loops' own dial: a destination
// that does not answer the SYN is given connect_timeout, then marked
// down, and the client is served by the next one.
func TestFailoverOnConnectTimeout(t *testing.T) {
	hang := loopback.Hanging(t, 0)
	be := newBackend(t, named("b"))
	rt := newRouting(t, routing.FirstAvailable, hang, be.addr())
	m := NewMetrics(prometheus.NewRegistry())
	p := startRoute(t, Config{Name: "rw", ReadWrite: true, ConnectTimeout: 200 * time.Millisecond}, rt, Options{Metrics: m})
	start := time.Now()
	c := dialProxy(t, p)
	if name, err := readLine(c); err != nil || name != "b" {
		t.Fatalf("client reached %q (%v), want b", name, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("served after %v: the hanging destination was not given connect_timeout", d)
	}
	if rt.State()[0].Up {
		t.Error("the destination that timed out is still up")
	}
	if v := testutil.ToFloat64(m.dialErrs.WithLabelValues("rw", hang)); v != 1 {
		t.Errorf("dial errors for %s = %v, want 1", hang, v)
	}
}

// TestHostnameDestination checks destinations given by name: they are
// resolved and dialed off the loop, then relayed by it like any other.
func TestHostnameDestination(t *testing.T) {
	be := newBackend(t, echo)
	_, port, _ := net.SplitHostPort(be.addr())
	rt := newRouting(t, routing.FirstAvailable, net.JoinHostPort("localhost", port))
	p := startRoute(t, Config{}, rt, Options{})
	wantRelayed(t, p, 3, "by name")
}

// TestLoops: Config.Loops sets how many event loops serve the route (0:
// one per P), and the sessions are spread over them.
func TestLoops(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	be := newBackend(t, echo)
	for _, tc := range []struct{ loops, want int }{{0, 3}, {1, 1}, {2, 2}} {
		rt := newRouting(t, routing.FirstAvailable, be.addr())
		p := startRoute(t, Config{Loops: tc.loops}, rt, Options{})
		if got := len(p.loops); got != tc.want {
			t.Errorf("Loops %d: %d loops, want %d", tc.loops, got, tc.want)
		}
		for i := range 6 { // held open: a loop two sessions ahead hands the next one over
			c := dialProxy(t, p)
			if err := roundTrip(c, fmt.Sprint("session ", i)); err != nil {
				t.Fatalf("Loops %d, session %d: %v", tc.loops, i, err)
			}
			defer c.Close()
		}
		busy := 0
		for _, l := range p.loops {
			if l.load.Load() > 0 {
				busy++
			}
		}
		if want := min(tc.want, 2); busy < want {
			t.Errorf("Loops %d: %d loops serve the 6 sessions, want at least %d", tc.loops, busy, want)
		}
	}
}
