package proxy

import (
	"net"
	"strings"
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

// TestCheckListenBeside: on a port hamr holds at ours, a new address is
// refused only for another listener it would collide with.
func TestCheckListenBeside(t *testing.T) {
	// The other listener picks the port: any port free on 127.0.0.2 is
	// free on 127.0.0.1 too unless something holds it there.
	other, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(other.Addr().String())
	mine, err := listenTCP("127.0.0.1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.close()
	ours := []string{mine.addr}
	if err := CheckListenBeside("127.0.0.3:"+port, ours); err != nil {
		t.Errorf("127.0.0.3:%s: %v; want no collision", port, err)
	}
	if err := CheckListenBeside("0.0.0.0:"+port, ours); err == nil {
		t.Errorf("0.0.0.0:%s accepted with 127.0.0.2:%s listening", port, port)
	}
	other.Close()
	if err := CheckListenBeside("0.0.0.0:"+port, ours); err != nil {
		t.Fatalf("0.0.0.0:%s beside only our own listener: %v", port, err)
	}
	if other, err = net.Listen("tcp", "127.0.0.2:"+port); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, tt := range []struct {
		addr string
		busy bool
	}{
		{"0.0.0.0:" + port, true},
		{"[::]:" + port, true},
		{"127.0.0.2:" + port, true},
		{"127.0.0.1:" + port, false}, // our own address: freed first
		{"127.0.0.3:" + port, false},
	} {
		err := CheckListenBeside(tt.addr, ours)
		if tt.busy && (err == nil || !strings.Contains(err.Error(), "127.0.0.2:"+port+" is listening")) {
			t.Errorf("%s with 127.0.0.2:%s listening: %v; want refused, naming it", tt.addr, port, err)
		}
		if !tt.busy && err != nil {
			t.Errorf("%s: %v; want no collision", tt.addr, err)
		}
	}
}

// TestCheckListenBesideZone: hamr's own listener on a link-local address
// with a zone is recognised in /proc/net/tcp6, which shows no zone, so a
// reload moving that route to [::] on its port is not refused.
func TestCheckListenBesideZone(t *testing.T) {
	mine, err := listenTCP("[fe80::1%lo]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mine.close()
	_, port, _ := net.SplitHostPort(mine.addr)
	if err := CheckListenBeside("[::]:"+port, []string{"[fe80::1%lo]:" + port}); err != nil {
		t.Errorf("[::]:%s beside only our own [fe80::1%%lo]:%s: %v", port, port, err)
	}
}
