package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamr-project/hamr/routing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const halfCloseSize = 10 << 20

// payload returns n pseudo-random bytes, the same for the same seed.
func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	return b
}

// halfCloseServer reads until EOF, checks what it read, then sends reply
// and closes: it only answers after the client's half-close reached it.
func halfCloseServer(t testing.TB, want, reply []byte) func(net.Conn) {
	return func(c net.Conn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil || n != int64(len(want)) || !bytes.Equal(h.Sum(nil), sum(want)) {
			t.Errorf("server read %d bytes (%v), hash match %v; want %d", n, err, bytes.Equal(h.Sum(nil), sum(want)), len(want))
			return
		}
		if _, err := c.Write(reply); err != nil {
			t.Errorf("server write: %v", err)
		}
	}
}

func sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// halfCloseExchange sends up through the proxy, half-closes, then reads
// until EOF and checks it got down intact.
func halfCloseExchange(t testing.TB, addr string, up, down []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(up); err != nil {
		t.Fatalf("client write: %v", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("client read after %d bytes: %v", n, err)
	}
	if n != int64(len(down)) || !bytes.Equal(h.Sum(nil), sum(down)) {
		t.Fatalf("client read %d bytes, want %d; hash match %v", n, len(down), bytes.Equal(h.Sum(nil), sum(down)))
	}
}

func TestHalfCloseIntegrity(t *testing.T) {
	up, down := payload(1, halfCloseSize), payload(2, halfCloseSize)
	be := newBackend(t, halfCloseServer(t, up, down))
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	m := NewMetrics(prometheus.NewRegistry())
	p := startRoute(t, Config{Name: "rw"}, rt, Options{Metrics: m})

	halfCloseExchange(t, p.Addr(), up, down)

	// Both directions add their bytes before half-closing, so they are
	// counted by the time the client saw EOF.
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("rw", be.addr(), "client_to_server")); v != halfCloseSize {
		t.Errorf("client_to_server bytes = %v, want %d", v, halfCloseSize)
	}
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("rw", be.addr(), "server_to_client")); v != halfCloseSize {
		t.Errorf("server_to_client bytes = %v, want %d", v, halfCloseSize)
	}
}

// ioChars returns this process's rchar + wchar from /proc/self/io: the
// bytes that went through read(2)/write(2)-family system calls, sockets
// included. Bytes moved with splice(2) are not counted there.
func ioChars(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no per-process I/O accounting: %v", err)
	}
	var n int64
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		k, v, _ := strings.Cut(s.Text(), ": ")
		if k == "rchar" || k == "wchar" {
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("/proc/self/io: %q: %v", s.Text(), err)
			}
			n += x
		}
	}
	return n
}

// userspaceRelay is what the proxy must not become: a copy whose reader
// is wrapped, so Go reads into a buffer and writes it out again.
func userspaceRelay(t testing.TB, to string) string {
	b := newBackend(t, func(c net.Conn) {
		s, err := net.Dial("tcp", to)
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		done := make(chan struct{})
		go func() {
			io.Copy(s, struct{ io.Reader }{c})
			s.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(c, struct{ io.Reader }{s})
		c.(*net.TCPConn).CloseWrite()
		<-done
	})
	return b.addr()
}

// TestCopySplices fails if the proxy's copy path stops using splice(2).
//
// Method: the kernel counts, per process, the bytes passed through
// read(2)- and write(2)-family calls (rchar, wchar in /proc/self/io) but
// not the bytes moved by splice(2), which never enter user space. The test
// endpoints live in this process and use plain reads and writes: sending N
// bytes each way costs them exactly 4N (client writes N and reads N,
// server reads N and writes N). A splicing proxy adds next to nothing; a
// userspace copy adds another 4N (it reads and writes every byte in both
// directions). The relay copies the first 16 KiB of each burst with
// read/write before it switches to splice, so the proxy may add up to 1%
// of the traffic, no more. The test first measures a deliberately wrapped relay to
// prove the kernel counts what we expect, so it cannot pass vacuously.
func TestCopySplices(t *testing.T) {
	const n = halfCloseSize
	up, down := payload(3, n), payload(4, n)
	be := newBackend(t, halfCloseServer(t, up, down))

	measure := func(addr string) int64 {
		before := ioChars(t)
		halfCloseExchange(t, addr, up, down)
		return ioChars(t) - before - 4*n // what the middle added
	}

	if extra := measure(userspaceRelay(t, be.addr())); extra < 3*n {
		t.Fatalf("control: a userspace relay added only %d bytes of read/write accounting, want about %d; "+
			"this kernel's /proc/self/io cannot tell splice from copy", extra, 4*n)
	}

	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{}, rt, Options{})
	// The relay reads the first buffer of a burst (16 KiB) before it
	// switches to splice: a few buffers per direction are expected, and
	// less than 1% of the traffic in all.
	if extra := measure(p.Addr()); extra > 2*n/100 {
		t.Fatalf("the proxy moved %d bytes through read/write for %d bytes of traffic (limit 1%%): it is not splicing", extra, 2*n)
	} else {
		t.Logf("proxy added %d bytes of read/write accounting for %d bytes spliced", extra, 2*n)
	}
}

// pipeFDCount returns how many of this process's descriptors are pipes.
func pipeFDCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list descriptors: %v", err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			n++
		}
	}
	return n
}

// pooledPipeFDs returns the descriptors held by the relay's pipe pool.
func pooledPipeFDs() int {
	pipePool.mu.Lock()
	defer pipePool.mu.Unlock()
	return 2 * len(pipePool.free)
}

// TestIdleSessionsHoldNoPipes checks that an idle session holds no pipe:
// sessions that have just spliced a bulk transfer each way and then gone
// quiet leave no pipe descriptor open beyond the relay's small pool.
// (io.Copy's splice would hold one pipe per direction for the session's
// whole life: 4 descriptors per idle session.)
func TestIdleSessionsHoldNoPipes(t *testing.T) {
	const (
		sessions = 32
		size     = 256 << 10 // well over one relay buffer: spliced
	)
	before := pipeFDCount(t)
	// An echo server that copies in user space: the backend lives in this
	// process, and io.Copy between its own sockets would splice through
	// pipes of its own.
	be := newBackend(t, func(c net.Conn) {
		io.Copy(c, struct{ io.Reader }{c})
		c.(*net.TCPConn).CloseWrite()
	})
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{}, rt, Options{})

	msg := payload(5, size)
	conns := make([]*net.TCPConn, sessions)
	for i := range conns {
		c := dialProxy(t, p)
		conns[i] = c
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(msg)
			errc <- err
		}()
		got := make([]byte, size)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("session %d: read echo: %v", i, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("session %d: write: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("session %d: echo differs", i)
		}
	}
	if got := p.Sessions(); got[0] != sessions {
		t.Fatalf("open sessions = %v, want %d", got, sessions)
	}

	// Now every session is idle.
	var extra, pooled int
	eventually(t, "idle sessions to hold no pipes", func() bool {
		pooled = pooledPipeFDs()
		extra = pipeFDCount(t) - before
		return extra <= pooled
	})
	if pooled > 2*maxIdlePipes {
		t.Fatalf("pipe pool holds %d descriptors, cap is %d pipes", pooled, maxIdlePipes)
	}
	t.Logf("%d idle sessions: %d pipe descriptors open, all %d in the pool", sessions, extra, pooled)

	// The sessions still work.
	for i, c := range conns {
		if err := roundTrip(c, "still here"); err != nil {
			t.Fatalf("session %d after idling: %v", i, err)
		}
	}
}

// TestIdleSessionsCostNoGoroutine checks that sessions run on the
// Route's loops: open sessions add no goroutine, come back to life on
// data, propagate a half-close, and are closed by a Shutdown deadline.
func TestIdleSessionsCostNoGoroutine(t *testing.T) {
	const sessions = 40
	be := newBackend(t, echo) // a goroutine per connection, in this process
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{}, rt, Options{})
	base := runtime.NumGoroutine()

	conns := make([]*net.TCPConn, sessions)
	for i := range conns {
		conns[i] = dialProxy(t, p)
		conns[i].SetDeadline(time.Now().Add(30 * time.Second))
		if err := roundTrip(conns[i], "hello"); err != nil {
			t.Fatal(err)
		}
	}
	// The backend's goroutines, one per session, are the only new ones.
	if g := runtime.NumGoroutine() - base; g > sessions+2 {
		t.Errorf("%d sessions added %d goroutines, want about %d (the test backend's)", sessions, g, sessions)
	}

	for round := range 3 {
		for i, c := range conns {
			if err := roundTrip(c, "wake up"); err != nil {
				t.Fatalf("round %d, session %d: %v", round, i, err)
			}
		}
	}

	// A half-close reaches the backend, whose echo half-closes back: the
	// client sees EOF, the session ends.
	c := conns[0]
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after half-closing a session: read %d, %v; want EOF", n, err)
	}
	eventually(t, "session end", func() bool { return p.Sessions()[0] == sessions-1 })

	// A Shutdown deadline closes idle sessions and returns.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	if n := p.Sessions()[0]; n != 0 {
		t.Fatalf("%d sessions left after Shutdown", n)
	}
	for _, c := range conns[1:] {
		wantClosed(t, c)
	}
}

// TestLoopsShareSessions checks that long sessions spread over the
// route's loops, whichever loop happens to accept them.
func TestLoopsShareSessions(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // four loops
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{}, rt, Options{})
	if len(p.loops) != 4 {
		t.Fatalf("%d loops, want one per P (4)", len(p.loops))
	}
	const sessions = 12
	for i := range sessions {
		c := dialProxy(t, p)
		if err := roundTrip(c, "hello"); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	// A loop serves a client itself only while no loop has two sessions
	// fewer: the spread stays within 2.
	var loads []int64
	for _, l := range p.loops {
		loads = append(loads, l.load.Load())
	}
	if lo, hi := slices.Min(loads), slices.Max(loads); hi-lo > 2 {
		t.Errorf("sessions per loop %v: spread %d, want at most 2", loads, hi-lo)
	}
}

// TestHandOverDuringShutdown checks that a client one loop accepted and
// handed to another is still served when Shutdown takes the listener
// away before the other loop has admitted it, and that Shutdown waits
// for it. The loops are held at the points where that race opens.
func TestHandOverDuringShutdown(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // two loops
	// The first client accepted once armed stops the accepting loop right
	// after accept(2), until resume is closed.
	var armed atomic.Bool
	accepted, resumeC := make(chan struct{}), make(chan struct{})
	resume := sync.OnceFunc(func() { close(resumeC) })
	var once sync.Once
	acceptFn = func(fd int) (int, error) {
		nfd, err := rawAccept4(fd)
		if err == nil && armed.Load() {
			once.Do(func() {
				close(accepted)
				<-resumeC
			})
		}
		return nfd, err
	}
	t.Cleanup(func() { acceptFn = rawAccept4 })

	var logs logBuffer
	be := newBackend(t, echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	log := slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &logs), nil))
	p := startRoute(t, Config{}, rt, Options{Logger: log})
	if len(p.loops) != 2 {
		t.Fatalf("%d loops, want one per P (2)", len(p.loops))
	}
	recv, acc := p.loops[0], p.loops[1]
	p.mu.Lock()
	lnfd := p.ln.fd
	p.mu.Unlock()

	// Should the test fail, the loops are let go before Shutdown's
	// cleanup, which needs them.
	releases := []func(){resume}
	t.Cleanup(func() {
		for _, release := range releases {
			release()
		}
	})
	// hold blocks l in a posted command until the returned func is called.
	hold := func(l *loop) func() {
		entered, releaseC := make(chan struct{}), make(chan struct{})
		release := sync.OnceFunc(func() { close(releaseC) })
		releases = append(releases, release)
		l.post(func(*loop) {
			close(entered)
			<-releaseC
		})
		waitClosed(t, "the loop to be held", entered)
		return release
	}

	// acc accepts the client (recv is held) and stops right after
	// accept(2); acc looks loaded, so it will hand the client to recv.
	armed.Store(true)
	acc.load.Add(5)
	defer acc.load.Add(-5)
	releaseRecv := hold(recv)
	c := dialProxy(t, p)
	waitClosed(t, "acc to accept the client", accepted)
	releaseRecv()

	// Shutdown takes the listener from recv at once, then waits for acc.
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- p.Shutdown(ctx)
	}()
	eventually(t, "recv to drop the listener", func() bool { return !epollHas(t, recv.epfd, lnfd) })

	// recv is held again, so that the hand-over waits in its queue while
	// acc drops the listener and Shutdown starts waiting for the sessions.
	releaseRecv = hold(recv)
	resume()
	eventually(t, "the listener to be closed", func() bool { return logs.count("draining sessions") == 1 })
	releaseRecv()

	if err := roundTrip(c, "handed over"); err != nil {
		t.Fatalf("client handed over during Shutdown: %v", err)
	}
	if n := recv.load.Load(); n != 1 {
		t.Fatalf("recv serves %d sessions, want the handed-over client", n)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a session was open", err)
	default:
	}
	c.Close()
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown = %v, want nil once the last session ended", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last session ended")
	}
}

// waitClosed waits for ch to be closed, failing the test after 10 s.
func waitClosed(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// epollHas reports whether fd is registered in the epoll instance epfd,
// from /proc/self/fdinfo.
func epollHas(t testing.TB, epfd, fd int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", epfd))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "tfd:" && f[1] == strconv.Itoa(fd) {
			return true
		}
	}
	return false
}
