package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamr-project/hamr/internal/logbuf"
	"github.com/hamr-project/hamr/routing"
	"github.com/prometheus/client_golang/prometheus"
)

// backend is a TCP server (newBackend: on 127.0.0.1) that runs handle for each
// connection. Cleanup closes the listener and every connection and waits
// for the handlers.
type backend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newBackend(t testing.TB, handle func(net.Conn)) *backend {
	t.Helper()
	return newBackendAt(t, "127.0.0.1:0", handle)
}

// newBackendAt is newBackend listening on addr.
func newBackendAt(t testing.TB, addr string, handle func(net.Conn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, conns: make(map[net.Conn]struct{})}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns[c] = struct{}{}
			b.mu.Unlock()
			b.wg.Go(func() {
				defer func() {
					b.mu.Lock()
					delete(b.conns, c)
					b.mu.Unlock()
					c.Close()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// echo copies everything back, then half-closes.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// named writes name and a newline, then echoes.
func named(name string) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := io.WriteString(c, name+"\n"); err != nil {
			return
		}
		echo(c)
	}
}

func newRouting(t testing.TB, s routing.Strategy, dests ...string) *routing.Route {
	t.Helper()
	rt, err := routing.New("test", s, dests, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// kernelRelayTests runs the tests that use startRoute with the kernel
// relay on, handing each session over at the server's first reply.
var kernelRelayTests = os.Getenv("HAMR_TEST_KERNEL_RELAY") != ""

func init() {
	if kernelRelayTests {
		joinAfter = 0
	}
}

// startRoute starts a proxy route on 127.0.0.1 with test defaults for the
// fields left zero, and shuts it down at cleanup.
func startRoute(t testing.TB, cfg Config, rt *routing.Route, opts Options) *Route {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 1000
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	cfg.KernelRelay = cfg.KernelRelay || kernelRelayTests
	p := New(cfg, rt, opts)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if kernelRelayTests && p.redir == nil && os.Geteuid() == 0 {
		t.Fatal("HAMR_TEST_KERNEL_RELAY is set but the kernel refused the relay (see the route's log)")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return p
}

func testLogger(t testing.TB) *slog.Logger {
	if tt, ok := t.(*testing.T); ok {
		return slog.New(slog.NewTextHandler(tt.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// logBuffer is a log sink the tests count lines in.
type logBuffer struct{ logbuf.Buffer }

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

// dialProxy connects to p with a deadline so that no test can hang.
func dialProxy(t testing.TB, p *Route) *net.TCPConn {
	t.Helper()
	return dialAt(t, p.Addr())
}

// dialAt is dialProxy to addr: a route's port on a given address.
func dialAt(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// wantRelayed opens n sessions through p, one after another, and
// round-trips msg on each.
func wantRelayed(t testing.TB, p *Route, n int, msg string) {
	t.Helper()
	for i := range n {
		c := dialProxy(t, p)
		if err := roundTrip(c, msg); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		c.Close()
	}
}

// roundTrip writes msg and reads it back.
func roundTrip(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return &mismatch{got: string(got), want: msg}
	}
	return nil
}

type mismatch struct{ got, want string }

func (m *mismatch) Error() string { return "got " + m.got + ", want " + m.want }

// readLine reads up to and including '\n' one byte at a time (so nothing
// after it is consumed).
func readLine(c net.Conn) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 256 {
		if _, err := io.ReadFull(c, one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
	return string(b), io.ErrShortBuffer
}

// eventually polls cond until it holds or 10 s pass. It checks behaviour
// that happens on another goroutine; it is not a timing assertion.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 10000 {
		if cond() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// wantClosed checks that the proxy closed c: a read ends with EOF or an
// error instead of data or a timeout.
func wantClosed(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n > 0 {
		t.Fatalf("read %d bytes from a session that should be closed", n)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("session still open: read timed out")
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// dialClosed checks that nothing listens on addr: a connect is refused.
// On loopback a connect to a closed port in the ephemeral range can pick
// that same port as its source and connect to itself; that counts as
// refused, and is tried again.
func dialClosed(addr string) error {
	for range 3 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%v, want ECONNREFUSED", err)
		}
		self := c.LocalAddr().String() == c.RemoteAddr().String()
		c.Close()
		if !self {
			return errors.New("accepted, want ECONNREFUSED")
		}
	}
	return errors.New("connected to itself 3 times")
}

// scraped returns the value of the counter name{labels} in a scrape of
// reg, 0 if there is none.
func scraped(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
