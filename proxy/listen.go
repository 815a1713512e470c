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
// backup. Accepted connections have TCP keepalive (idle 15 s, interval
// 15 s, 9 probes: Go's defaults) and TCP_NODELAY (Go's default) on.
//
// Keepalive is set once on the listening socket, which the accepted
// sockets inherit, instead of with four setsockopt calls per accepted
// connection: the connection rate is the proxy's most syscall-bound
// workload.
//
// SO_REUSEPORT is deliberately not set: with it a second hamr, or any
// process of the same user, could bind the same port silently and take
// half the connections. Several listeners per route would need it; they
// can be added with an explicit option.
func listen(ctx context.Context, network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: listenControl, KeepAlive: -1}
	return lc.Listen(ctx, network, addr)
}

// Keepalive settings of accepted connections.
const (
	keepIdle     = 15 // seconds
	keepInterval = 15 // seconds
	keepCount    = 9
)

// listenControl prepares the listening socket: IP_FREEBIND and the
// keepalive options that accepted sockets inherit.
func listenControl(network, addr string, c syscall.RawConn) error {
	if err := freebind(network, addr, c); err != nil {
		return err
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepIdle},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepInterval},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount},
		} {
			if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set keepalive: %w", serr)
	}
	return nil
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
