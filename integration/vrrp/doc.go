// Package vrrp holds hamr's VRRP lab: end-to-end tests of the virtual IP
// in network namespaces, interoperability with keepalived, takeover
// timings and the systemd deployment's capabilities.
//
// Each test builds its own lab: a namespace holding a bridge and three
// namespaces joined to it by veth pairs, two router hosts and a client:
//
//	r1      10.99.0.1/24   veth-r1 ─┐
//	r2      10.99.0.2/24   veth-r2 ─┼─ br0 (namespace "br")
//	client  10.99.0.10/24  veth-cl ─┘
//	VIP     10.99.0.100/24
//
// The client measures a takeover the way an application sees it: it opens
// new TCP connections to VIP:7001 in a loop and notes which host answers.
//
// The tests need root (they create namespaces), iproute2 and keepalived.
// Outside CI they are skipped when not run as root; with CI=true nothing
// is skipped. TestTakeoverTimes runs only with HAMR_TAKEOVER_TIMES=1 and
// writes the VRRP takeover section of bench/RESULTS.md.
package vrrp
