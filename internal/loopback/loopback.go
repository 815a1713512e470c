// Package loopback gives tests addresses on 127.0.0.1 that misbehave in
// the ways a dead or stuck database does, without sending anything
// beyond the host.
package loopback

import (
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Refused returns an address where every connect is refused: a socket
// bound there that never listens. The port stays the test's until it
// ends, so that no parallel test can listen on it or connect from it.
func Refused(t testing.TB) string {
	t.Helper()
	addr, _ := bound(t)
	return addr
}

// Hanging returns the address of a listener that never accepts, with an
// accept queue of one: after the first `served` connects (0 or 1) the
// kernel drops every SYN, so a connect neither succeeds nor fails until
// it times out. With served 1, that first connect (a health check, say)
// succeeds.
func Hanging(t testing.TB, served int) string {
	t.Helper()
	addr, fd := bound(t)
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	if served == 0 { // fill the queue now
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr
}

// bound returns a TCP socket bound to 127.0.0.1 on a port the kernel
// chose, closed when the test ends, and its address.
func bound(t testing.TB) (string, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port)), fd
}
