package vip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vips adds and removes the virtual addresses on the interface. It
// removes only what it added, except for removeStale at start-up.
type vips struct {
	h     *netlink.Handle
	link  netlink.Link
	want  []netip.Prefix
	added map[netip.Addr]bool
	log   *slog.Logger
}

func prefixAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

// present returns the IPv4 addresses on the interface.
func (v *vips) present() (map[netip.Addr]netlink.Addr, error) {
	list, err := v.h.AddrList(v.link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", v.link.Attrs().Name, err)
	}
	m := make(map[netip.Addr]netlink.Addr, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			m[ip] = a
		}
	}
	return m, nil
}

// removeStale deletes configured addresses already on the interface, left
// by a predecessor that was killed: otherwise two hosts would answer for
// them.
func (v *vips) removeStale() error {
	have, err := v.present()
	if err != nil {
		return err
	}
	for _, p := range v.want {
		a, ok := have[p.Addr()]
		if !ok {
			continue
		}
		if err := v.h.AddrDel(v.link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove stale %v from %s: %w", a.IPNet, v.link.Attrs().Name, err)
		}
		v.log.Warn("vrrp removed stale virtual address left on the interface", "address", a.IPNet.String(), "interface", v.link.Attrs().Name)
	}
	return nil
}

// add adds the addresses not yet on the interface.
func (v *vips) add() {
	have, err := v.present()
	if err != nil {
		v.log.Error("vrrp cannot add virtual addresses", "err", err)
		return
	}
	for _, p := range v.want {
		if _, ok := have[p.Addr()]; ok {
			continue
		}
		if err := v.h.AddrAdd(v.link, prefixAddr(p)); err != nil && !errors.Is(err, unix.EEXIST) {
			v.log.Error("vrrp cannot add virtual address", "address", p, "err", err)
			continue
		}
		v.added[p.Addr()] = true
		v.log.Info("vrrp added virtual address", "address", p, "interface", v.link.Attrs().Name)
	}
}

// remove deletes the addresses this process added.
func (v *vips) remove() {
	for _, p := range v.want {
		if !v.added[p.Addr()] {
			continue
		}
		// Deleting a primary address can take its secondaries along.
		if err := v.h.AddrDel(v.link, prefixAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			// Still ours: the next remove (leaving master again, or the
			// stop) tries again, rather than leave it for ever.
			v.log.Error("vrrp cannot remove virtual address", "address", p, "err", err)
			continue
		}
		delete(v.added, p.Addr())
		v.log.Info("vrrp removed virtual address", "address", p, "interface", v.link.Attrs().Name)
	}
}

// primaryAddr is the first IPv4 address of link that is not a virtual
// address: the source of the adverts.
func primaryAddr(h *netlink.Handle, link netlink.Link, virtual []netip.Prefix) (netip.Addr, error) {
	list, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
next:
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		for _, p := range virtual {
			if p.Addr() == ip {
				continue next
			}
		}
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no IPv4 address to send adverts from", link.Attrs().Name)
}
