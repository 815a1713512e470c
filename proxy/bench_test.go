package proxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hamr-project/hamr/routing"
)

// BenchmarkCopy measures one session's throughput through the proxy on
// loopback: the client writes 1 MiB per iteration, the backend discards.
// The direct case writes to the backend itself.
func BenchmarkCopy(b *testing.B) {
	got := make(chan int64, 1)
	be := newBackend(b, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		got <- n
	})
	rt := newRouting(b, routing.FirstAvailable, be.addr())
	p := startRoute(b, Config{}, rt, Options{})
	b.Run("proxy", func(b *testing.B) { benchCopy(b, p.Addr(), got) })
	b.Run("direct", func(b *testing.B) { benchCopy(b, be.addr(), got) })
}

func benchCopy(b *testing.B, addr string, got <-chan int64) {
	const chunk = 1 << 20
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-got: // wait for the last byte to arrive
		if want := int64(b.N) * chunk; n != want {
			b.Fatalf("backend got %d bytes, want %d", n, want)
		}
	case <-time.After(time.Minute):
		b.Fatal("backend did not see EOF")
	}
}

// BenchmarkConnect measures new sessions per second: connect through the
// proxy, echo one byte, close. The direct case connects to the backend
// itself, for comparison in the same run.
func BenchmarkConnect(b *testing.B) {
	be := newBackend(b, echo)
	rt := newRouting(b, routing.FirstAvailable, be.addr())
	p := startRoute(b, Config{}, rt, Options{})
	b.Run("proxy", func(b *testing.B) { benchConnect(b, p.Addr()) })
	b.Run("direct", func(b *testing.B) { benchConnect(b, be.addr()) })
}

func benchConnect(b *testing.B, addr string) {
	one := []byte{1}
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
}

// BenchmarkRoundTrip measures small request/response exchanges (as a
// point-select query) over one session: the relay's read/write path.
// Steady state must not allocate.
func BenchmarkRoundTrip(b *testing.B) {
	be := newBackend(b, echo)
	rt := newRouting(b, routing.FirstAvailable, be.addr())
	p := startRoute(b, Config{}, rt, Options{})
	for _, tc := range []struct{ name, addr string }{{"proxy", p.Addr()}, {"direct", be.addr()}} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 200)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
