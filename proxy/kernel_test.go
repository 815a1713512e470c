package proxy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hamr-project/hamr/routing"
	"github.com/prometheus/client_golang/prometheus"
)

// kernelRoute starts a route named "k" on addr ("" for 127.0.0.1) with
// the kernel relay on. As root, a kernel that refuses the relay fails
// the test; otherwise it is skipped.
func kernelRoute(t *testing.T, addr string, rt *routing.Route, reg *prometheus.Registry) *Route {
	t.Helper()
	p := startRoute(t, Config{Name: "k", Addr: addr, KernelRelay: true}, rt, Options{Metrics: NewMetrics(reg)})
	if p.redir == nil {
		if os.Geteuid() != 0 {
			t.Skip("the kernel relay needs CAP_BPF and CAP_NET_ADMIN: run as root")
		}
		t.Fatal("kernel relay unavailable although running as root (see the route's log)")
	}
	return p
}

// chatRounds is how many exchanges the chat protocol makes at least
// before its bulk part: more than joinAfter, so that the session is
// handed over.
const chatRounds = 6

// chatDone is the client's last chat message, which the server does not
// echo.
const chatDone = "done"

// chatServer speaks first (a 4-byte greeting, as a MySQL server does),
// echoes 4-byte messages until chatDone, then runs serve on the
// connection.
func chatServer(t testing.TB, serve func(net.Conn)) func(net.Conn) {
	return func(c net.Conn) {
		if _, err := c.Write([]byte("helo")); err != nil {
			t.Errorf("server greeting: %v", err)
			return
		}
		var b [4]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				t.Errorf("server read: %v", err)
				return
			}
			if string(b[:]) == chatDone {
				break
			}
			if _, err := c.Write(b[:]); err != nil {
				t.Errorf("server write: %v", err)
				return
			}
		}
		serve(c)
	}
}

// chat is chatServer's client side: chatRounds exchanges, and then, if
// joined is not nil, more until joined reports that the kernel took the
// session (a loaded machine can have the client's next message arrive
// before the loop looks, and the session is handed over only when none
// of its bytes wait). It returns the bytes the client sent.
func chat(t testing.TB, c net.Conn, joined func() bool) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	c.SetDeadline(deadline)
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != "helo" {
		t.Fatalf("greeting %q, %v", b, err)
	}
	sent := 0
	for i := 0; i < chatRounds || (joined != nil && !joined()); i++ {
		if i >= chatRounds {
			if time.Now().After(deadline.Add(-time.Second)) {
				t.Fatalf("the session was not handed to the kernel after %d exchanges", i)
			}
			time.Sleep(time.Millisecond) // let the loop look while the sockets are empty
		}
		msg := []byte{'m', 's', 'g', byte('0' + i%10)}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		sent += len(msg)
		if _, err := io.ReadFull(c, b[:]); err != nil || !bytes.Equal(b[:], msg) {
			t.Fatalf("echo %q, %v; want %q", b, err, msg)
		}
	}
	if _, err := c.Write([]byte(chatDone)); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return sent + len(chatDone)
}

// kernelSessions returns a function that reports whether route "k" has
// handed a session to the kernel, for chat.
func kernelSessions(t testing.TB, reg *prometheus.Registry) func() bool {
	return func() bool {
		return scraped(t, reg, "hamr_route_kernel_sessions_total", map[string]string{"route": "k"}) > 0
	}
}

// TestKernelRelay checks a session the kernel relays as a user would: a
// chat, then 10 MiB each way with a half-close in between, intact and in
// order; the bytes never pass through the proxy's read(2) and write(2)
// (see TestCopySplices for the method); the sessions and bytes are
// counted.
func TestKernelRelay(t *testing.T) {
	const n = halfCloseSize
	up, down := payload(5, n), payload(6, n)
	be := newBackend(t, chatServer(t, halfCloseServer(t, up, down)))
	reg := prometheus.NewRegistry()
	p := kernelRoute(t, "", newRouting(t, routing.FirstAvailable, be.addr()), reg)

	c := dialProxy(t, p)
	chatBytes := chat(t, c, kernelSessions(t, reg))
	before := ioChars(t)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(up); err != nil {
		t.Fatalf("client write: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil || got != n || !bytes.Equal(h.Sum(nil), sum(down)) {
		t.Fatalf("client read %d bytes (%v), hash match %v; want %d", got, err, bytes.Equal(h.Sum(nil), sum(down)), n)
	}
	// The endpoints account for 4n (each byte written and read once
	// each way); a relay in user space would add as much again.
	if extra := ioChars(t) - before - 4*n; extra > 2*n/100 {
		t.Errorf("the proxy moved %d bytes through read/write for %d bytes of traffic: the kernel is not relaying", extra, 2*n)
	}

	labels := map[string]string{"route": "k", "destination": be.addr()}
	if v := scraped(t, reg, "hamr_route_kernel_sessions_total", labels); v != 1 {
		t.Errorf("hamr_route_kernel_sessions_total = %v, want 1", v)
	}
	echoed := chatBytes - len(chatDone)
	for dir, want := range map[string]int{"client_to_server": chatBytes + n, "server_to_client": 4 + echoed + n} {
		labels["direction"] = dir
		if v := scraped(t, reg, "hamr_route_bytes_total", labels); v != float64(want) {
			t.Errorf("hamr_route_bytes_total{direction=%q} = %v, want %d", dir, v, want)
		}
	}
}

// TestKernelRelaySlowReader checks that a server that stops reading for
// a while loses nothing: once it reads again, every byte the client sent
// arrives, in order. (The kernel queues what the server does not take;
// it does not stop the client, which is why the relay is opt-in.)
func TestKernelRelaySlowReader(t *testing.T) {
	const total = 32 << 20
	release := make(chan struct{})
	type result struct {
		n   int64
		sum []byte
	}
	received := make(chan result, 1)
	be := newBackend(t, chatServer(t, func(c net.Conn) {
		<-release
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			t.Errorf("server read: %v", err)
		}
		received <- result{n, h.Sum(nil)}
	}))
	reg := prometheus.NewRegistry()
	p := kernelRoute(t, "", newRouting(t, routing.FirstAvailable, be.addr()), reg)
	c := dialProxy(t, p)
	chat(t, c, kernelSessions(t, reg))

	up := payload(7, total)
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	sent, err := c.Write(up)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client write after %d bytes: %v", sent, err)
	}
	close(release)
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if sent < total {
		n, err := c.Write(up[sent:])
		if sent += n; err != nil {
			t.Fatalf("client write after %d bytes: %v", sent, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-received:
		if r.n != total || !bytes.Equal(r.sum, sum(up)) {
			t.Errorf("server read %d bytes (hash match %v), want %d", r.n, bytes.Equal(r.sum, sum(up)), total)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server never saw the end of the stream")
	}
}

// TestKernelRelayIPv4Only checks that an IPv6 session, which the
// kernel relay does not take, is relayed by the loop.
func TestKernelRelayIPv4Only(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	be := newBackendAt(t, "[::1]:0", chatServer(t, echo))
	reg := prometheus.NewRegistry()
	p := kernelRoute(t, "[::1]:0", newRouting(t, routing.FirstAvailable, be.addr()), reg)
	c := dialProxy(t, p)
	chat(t, c, nil)
	if err := roundTrip(c, "after the chat"); err != nil {
		t.Fatal(err)
	}
	if v := scraped(t, reg, "hamr_route_kernel_sessions_total", map[string]string{"route": "k"}); v != 0 {
		t.Errorf("hamr_route_kernel_sessions_total = %v, want 0 for IPv6", v)
	}
}

// TestQuietWantsEmptySockets checks that a session is not handed to the
// kernel while one of its sockets holds unread bytes: the kernel would
// take their segment whole, and send again what the loop already read.
func TestQuietWantsEmptySockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	raw, err := b.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var s session
	raw.Control(func(fd uintptr) {
		s.c2s.src, s.s2c.src = int(fd), int(fd)
		if !s.quiet() {
			t.Error("quiet() = false with both sockets empty")
		}
	})
	if _, err := a.Write([]byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the bytes to arrive", func() bool {
		q := true
		raw.Control(func(uintptr) { q = s.quiet() })
		return !q
	})
	io.ReadFull(b, make([]byte, 10))
	raw.Control(func(uintptr) {
		if !s.quiet() {
			t.Error("quiet() = false once the bytes were read")
		}
	})
}

// TestKernelRelayLeavesStreams: a result that takes the loop many reads
// is one reply, so a session whose server streams after one request
// stays with the loop (which splices it) instead of being handed to the
// kernel in the middle of the stream.
func TestKernelRelayLeavesStreams(t *testing.T) {
	old := joinAfter
	joinAfter = 3
	t.Cleanup(func() { joinAfter = old }) // after the route's shutdown
	const chunk, chunks = 64 << 10, 64
	data := payload(3, chunk)
	be := newBackend(t, func(c net.Conn) {
		if _, err := c.Write([]byte("helo")); err != nil {
			t.Errorf("server greeting: %v", err)
			return
		}
		var b [2]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		for range chunks {
			if _, err := c.Write(data); err != nil {
				t.Errorf("server write: %v", err)
				return
			}
			time.Sleep(time.Millisecond) // each chunk wakes the loop on its own
		}
	})
	reg := prometheus.NewRegistry()
	p := kernelRoute(t, "", newRouting(t, routing.FirstAvailable, be.addr()), reg)
	c := dialProxy(t, p)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, chunk)
	if _, err := io.ReadFull(c, got[:4]); err != nil || string(got[:4]) != "helo" {
		t.Fatalf("greeting %q, %v", got[:4], err)
	}
	if _, err := c.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("chunk %d: %v, intact %v", i, err, bytes.Equal(got, data))
		}
	}
	if v := scraped(t, reg, "hamr_route_kernel_sessions_total", map[string]string{"route": "k"}); v != 0 {
		t.Errorf("hamr_route_kernel_sessions_total = %v, want 0: a streaming session was handed to the kernel", v)
	}
}
