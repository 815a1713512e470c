package proxy

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketOptions checks that accepted sockets inherit keepalive and
// TCP_NODELAY from the listening socket, and that dialed sockets get
// them too.
func TestSocketOptions(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.close()
	c, err := net.Dial("tcp", ln.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, _, err := unix.Accept4(ln.fd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a)
	d := NewMetrics(nil).dest("test", ln.addr)
	s, _, err := dialRaw(d)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	for _, fd := range []struct {
		name string
		fd   int
	}{{"accepted", a}, {"dialed", s}} {
		for _, o := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepIdle},
			{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepInterval},
			{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount},
			{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		} {
			v, err := unix.GetsockoptInt(fd.fd, o.level, o.opt)
			if err != nil {
				t.Fatalf("%s: %s: %v", fd.name, o.name, err)
			}
			if v != o.want {
				t.Errorf("%s socket: %s = %d, want %d", fd.name, o.name, v, o.want)
			}
		}
	}
}
