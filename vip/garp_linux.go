package vip

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/mdlayher/packet"
)

const etherTypeARP = 0x0806

// garper sends gratuitous ARP bursts for the virtual addresses through an
// AF_PACKET socket bound to the interface.
type garper struct {
	c      *packet.Conn
	frames [][]byte
	repeat int
	log    *slog.Logger
}

func newGARPer(ifi *net.Interface, addrs []netip.Addr, repeat int, log *slog.Logger) (*garper, error) {
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("gratuitous ARP: interface %s has no Ethernet address", ifi.Name)
	}
	c, err := packet.Listen(ifi, packet.Raw, etherTypeARP, nil)
	if err != nil {
		return nil, fmt.Errorf("gratuitous ARP socket on %s: %w", ifi.Name, err)
	}
	g := &garper{c: c, repeat: repeat, log: log}
	for _, ip := range addrs {
		g.frames = append(g.frames, garpFrame(ifi.HardwareAddr, ip))
	}
	return g, nil
}

// burst sends repeat requests for every address.
func (g *garper) burst() {
	to := &packet.Addr{HardwareAddr: broadcastMAC}
	for range g.repeat {
		for _, f := range g.frames {
			if _, err := g.c.WriteTo(f, to); err != nil {
				g.log.Warn("vrrp gratuitous ARP not sent", "err", err)
				return
			}
		}
	}
}

func (g *garper) Close() error { return g.c.Close() }
