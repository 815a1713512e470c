package proxy

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen is the default listen function: a TCP listener whose socket has
// IP_FREEBIND (IPV6_FREEBIND for IPv6) set before bind, so it can bind an
// address this host does not hold yet, such as a virtual IP on the VRRP
// backup. Accepted connections have TCP keepalive (Go's default, 15 s) and
// TCP_NODELAY (Go's default) on.
//
// SO_REUSEPORT is deliberately not set: with it a second hamr, or any
// process of the same user, could bind the same port silently and take
// half the connections. Several listeners per route would need it; they
// can be added with an explicit option.
func listen(ctx context.Context, network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: freebind}
	return lc.Listen(ctx, network, addr)
}

// freebind sets IP_FREEBIND or IPV6_FREEBIND on the socket being bound.
func freebind(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set freebind: %w", serr)
	}
	return nil
}
