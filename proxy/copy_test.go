package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
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
// directions). The test first measures a deliberately wrapped relay to
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
	if extra := measure(p.Addr()); extra > n/4 {
		t.Fatalf("the proxy moved %d bytes through read/write for %d bytes of traffic: it is not splicing", extra, 2*n)
	} else {
		t.Logf("proxy added %d bytes of read/write accounting for %d bytes spliced", extra, 2*n)
	}
}
