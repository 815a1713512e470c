package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hamr-project/hamr/routing"
)

// TestRawSockaddr: the address the loops connect(2) to is the kernel's
// own form of it. Each listener's address, as getsockname(2) writes it,
// must equal what toRawSockaddr builds from the parsed address,
// including an IPv6 zone.
func TestRawSockaddr(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "[fe80::1%lo]:0", fmt.Sprintf("[fe80::1%%%d]:0", lo.Index)} {
		ln, err := listenTCP(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.close()
		var kernel [unix.SizeofSockaddrAny]byte
		n := uint32(len(kernel))
		if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(ln.fd), uintptr(unsafe.Pointer(&kernel)), uintptr(unsafe.Pointer(&n))); e != 0 {
			t.Fatalf("getsockname %s: %v", addr, e)
		}
		// ln.addr shows no zone: the address is the one asked for.
		ap := netip.AddrPortFrom(netip.MustParseAddrPort(addr).Addr(), netip.MustParseAddrPort(ln.addr).Port())
		sa, _ := sockaddr(ap)
		raw := toRawSockaddr(sa)
		if raw.n != int(n) || !bytes.Equal(raw.b[:raw.n], kernel[:n]) {
			t.Errorf("%s: built % x, kernel has % x", ln.addr, raw.b[:raw.n], kernel[:n])
		}
	}
}

// TestIPv6Destination: a destination given as an IPv6 address is dialed
// by the loops themselves, with the address in the kernel's form.
func TestIPv6Destination(t *testing.T) {
	be := newBackendAt(t, "[::1]:0", echo)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{}, rt, Options{})
	wantRelayed(t, p, 3, "over ::1")
}
