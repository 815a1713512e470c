package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// tosInternetControl is the TOS keepalived sets on adverts (precedence 6).
const tosInternetControl = 0xc0

// rawPacket is one received IPv4 packet of protocol 112.
type rawPacket struct {
	src, dst netip.Addr
	ttl      int
	payload  []byte
}

// conn is a raw IPv4 socket for VRRP on one interface. It writes its own
// IP header (IP_HDRINCL) so that source, TTL and TOS are exactly those the
// checksum and peers expect, and reads the header of every packet.
type conn struct {
	rc   *ipv4.RawConn
	ifi  *net.Interface
	src  netip.Addr
	dsts []netip.Addr // Group, or the unicast peers
	rbuf []byte
}

// listen opens the socket. Without peers it joins 224.0.0.18 on ifi (no
// advert arrives before that); with peers it sends to each of them.
func listen(ifi *net.Interface, src netip.Addr, peers []netip.Addr) (*conn, error) {
	pc, err := net.ListenPacket(fmt.Sprintf("ip4:%d", Protocol), "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("vrrp socket: %w", err)
	}
	rc, err := ipv4.NewRawConn(pc)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("vrrp socket: %w", err)
	}
	c := &conn{rc: rc, ifi: ifi, src: src, rbuf: make([]byte, 1500)}
	fail := func(what string, err error) (*conn, error) {
		rc.Close()
		return nil, fmt.Errorf("vrrp socket on %s: %s: %w", ifi.Name, what, err)
	}
	if len(peers) == 0 {
		c.dsts = []netip.Addr{Group}
		if err := rc.JoinGroup(ifi, &net.IPAddr{IP: Group.AsSlice()}); err != nil {
			return fail("join 224.0.0.18", err)
		}
	} else {
		c.dsts = peers
	}
	if err := rc.SetMulticastInterface(ifi); err != nil {
		return fail("multicast interface", err)
	}
	if err := rc.SetMulticastTTL(255); err != nil {
		return fail("multicast TTL", err)
	}
	if err := rc.SetTTL(255); err != nil {
		return fail("TTL", err)
	}
	if err := rc.SetTOS(tosInternetControl); err != nil {
		return fail("TOS", err)
	}
	if err := rc.SetMulticastLoopback(false); err != nil {
		return fail("multicast loopback", err)
	}
	if err := rc.SetControlMessage(ipv4.FlagInterface|ipv4.FlagTTL|ipv4.FlagDst, true); err != nil {
		return fail("control messages", err)
	}
	return c, nil
}

// Send sends a to every destination, with TTL 255 and TOS 0xc0.
func (c *conn) Send(a *Advert) error {
	var errs []error
	for _, dst := range c.dsts {
		b, err := a.Marshal(c.src, dst)
		if err != nil {
			return err
		}
		h := &ipv4.Header{
			Version:  ipv4.Version,
			Len:      ipv4.HeaderLen,
			TOS:      tosInternetControl,
			TotalLen: ipv4.HeaderLen + len(b),
			TTL:      255,
			Protocol: Protocol,
			Src:      c.src.AsSlice(),
			Dst:      dst.AsSlice(),
		}
		if err := c.rc.WriteTo(h, b, &ipv4.ControlMessage{IfIndex: c.ifi.Index}); err != nil {
			errs = append(errs, fmt.Errorf("send to %v: %w", dst, err))
		}
	}
	return errors.Join(errs...)
}

// recv reads the next VRRP packet that arrived on the interface. The
// payload is valid until the next call. It fails once the conn is closed.
func (c *conn) recv() (rawPacket, error) {
	for {
		h, p, cm, err := c.rc.ReadFrom(c.rbuf)
		if err != nil {
			return rawPacket{}, err
		}
		if cm != nil && cm.IfIndex != 0 && cm.IfIndex != c.ifi.Index {
			continue // another interface's VRRP
		}
		src, _ := netip.AddrFromSlice(h.Src.To4())
		dst, _ := netip.AddrFromSlice(h.Dst.To4())
		return rawPacket{src: src, dst: dst, ttl: h.TTL, payload: p}, nil
	}
}

func (c *conn) Close() error { return c.rc.Close() }
