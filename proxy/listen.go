package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// listener is a route's listening socket. The loops accept on it; it
// never enters the runtime's netpoller.
type listener struct {
	fd   int
	addr string // bound address, port filled in

	// Accept back-off, shared by the loops: the first error of a burst
	// is logged, and the recovery.
	failures atomic.Int64
	mu       sync.Mutex
	delay    time.Duration
}

// Accept back-off, as in net/http: 5 ms doubling up to 1 s.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// Keepalive settings of client and destination sockets: Go's defaults.
const (
	keepIdle     = 15 // seconds
	keepInterval = 15 // seconds
	keepCount    = 9
)

// sockOpts are set on the listening socket, which accepted sockets
// inherit them from (one setsockopt per listener instead of five per
// client: the connection rate is the proxy's most syscall-bound
// workload), and on each dialed socket.
var sockOpts = []sockOpt{
	{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepIdle},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepInterval},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount},
}

// sockOpt is one setsockopt(2) with an int value.
type sockOpt struct{ level, opt, v int }

// listenBacklog is the listen(2) backlog; the kernel caps it at
// net.core.somaxconn.
const listenBacklog = 65535

// listenTCP binds and listens on addr, an IP literal and a port. The
// socket has IP_FREEBIND (IPV6_FREEBIND for IPv6) set before bind, so
// it can bind an address this host does not hold yet, such as a virtual
// IP on the VRRP backup, and SO_REUSEADDR, as Go's listeners do.
//
// SO_REUSEPORT is deliberately not set: with it a second hamr, or any
// process of the same user, could bind the same port silently and take
// half the connections. The loops share the one socket instead.
func listenTCP(addr string) (*listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	sa, family := sockaddr(ap)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("socket", err))
	}
	opts := append([]sockOpt{{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}}, sockOpts...)
	if family == unix.AF_INET6 {
		opts = append(opts, sockOpt{unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1})
		if ap.Addr().IsUnspecified() {
			// [::] takes IPv4 clients too, as Go's listeners do.
			opts = append(opts, sockOpt{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0})
		}
	} else {
		opts = append(opts, sockOpt{unix.IPPROTO_IP, unix.IP_FREEBIND, 1})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("setsockopt", err))
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("bind", err))
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("listen", err))
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", addr, os.NewSyscallError("getsockname", err))
	}
	return &listener{fd: fd, addr: sockaddrString(bound)}, nil
}

// CheckListen reports whether addr can be listened on as Route.Start
// would: it binds a socket the same way and closes it. A reload uses it
// to reject a route whose new port is taken before it stops anything.
func CheckListen(addr string) error {
	ln, err := listenTCP(addr)
	if err != nil {
		return err
	}
	ln.close()
	return nil
}

// CheckListenBeside is CheckListen for an address whose port hamr itself
// listens on now, at ours (which a reload frees before it binds addr):
// it cannot bind a probe, so it looks for a listener of another process
// on the port that addr would collide with, such as 127.0.0.2:P when
// addr is 0.0.0.0:P.
func CheckListenBeside(addr string, ours []string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	mine := make(map[netip.Addr]bool)
	for _, o := range ours {
		if op, err := netip.ParseAddrPort(o); err == nil {
			mine[op.Addr().WithZone("").Unmap()] = true // /proc has no zones
		}
	}
	have, err := listeners(ap.Port())
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	a := ap.Addr().WithZone("").Unmap()
	for _, l := range have {
		if !mine[l] && collide(a, l) {
			return fmt.Errorf("listen %s: %w (%s is listening)", addr, unix.EADDRINUSE,
				netip.AddrPortFrom(l, ap.Port()))
		}
	}
	return nil
}

// collide reports whether listeners on a and b, same port, cannot both
// bind: the same address, or either the wildcard of the other's family
// ([::] takes IPv4 too, as hamr binds it).
func collide(a, b netip.Addr) bool {
	switch {
	case a == b:
		return true
	case a.IsUnspecified() && (a.Is6() || b.Is4()):
		return true
	case b.IsUnspecified() && (b.Is6() || a.Is4()):
		return true
	}
	return false
}

// listeners returns the addresses of the TCP sockets listening on port in
// this network namespace (/proc/net/tcp and tcp6), IPv4-mapped ones
// unmapped.
func listeners(port uint16) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ...; LISTEN is 0A.
			f := strings.Fields(line)
			if len(f) < 4 || f[3] != "0A" {
				continue
			}
			host, p, ok := strings.Cut(f[1], ":")
			if n, err := strconv.ParseUint(p, 16, 16); !ok || err != nil || uint16(n) != port {
				continue
			}
			if a, ok := procAddr(host); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

// procAddr decodes an address of /proc/net/tcp{,6}: 32-bit words of the
// address in memory, each printed as a host-order number.
func procAddr(h string) (netip.Addr, bool) {
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, false
	}
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	a, _ := netip.AddrFromSlice(raw)
	return a, true
}

// sockaddr converts ap to a socket address and its family.
func sockaddr(ap netip.AddrPort) (unix.Sockaddr, int) {
	a := ap.Addr()
	if a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}, unix.AF_INET
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	if z := a.Zone(); z != "" {
		// A zone is an interface's name or its index, as for Go's net.
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		}
	}
	return sa, unix.AF_INET6
}

// sockaddrString formats a socket address as host:port.
func sockaddrString(sa unix.Sockaddr) string {
	if ap, ok := addrPort(sa); ok {
		return ap.String()
	}
	return "?"
}

// addrPort converts an IP socket address back to a netip.AddrPort.
func addrPort(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// close closes the socket. No loop may be accepting on it.
func (ln *listener) close() { unix.Close(ln.fd) }

// failed records an accept error and returns how long to pause.
func (ln *listener) failed(r *Route, err error) time.Duration {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if ln.failures.Add(1) == 1 {
		ln.delay = minAcceptDelay
		r.log.Warn("accept failed; retrying with back-off", "err", err)
	} else {
		ln.delay = min(2*ln.delay, maxAcceptDelay)
	}
	return ln.delay
}

// recovered records a successful accept; the first after errors is
// logged.
func (ln *listener) recovered(r *Route) {
	if ln.failures.Load() == 0 {
		return
	}
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if n := ln.failures.Swap(0); n > 0 {
		r.log.Info("accept recovered", "failures", n)
	}
}
