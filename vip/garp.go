package vip

import (
	"net"
	"net/netip"
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// garpFrame is an Ethernet broadcast frame holding a gratuitous ARP
// request for ip from mac: sender IP = target IP = ip, target MAC
// ff:ff:ff:ff:ff:ff, as keepalived sends.
func garpFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	b := make([]byte, 0, 42)
	b = append(b, broadcastMAC...)
	b = append(b, mac[:6]...)
	b = append(b, 0x08, 0x06) // EtherType ARP
	b = append(b,
		0x00, 0x01, // hardware type Ethernet
		0x08, 0x00, // protocol type IPv4
		6, 4, // address lengths
		0x00, 0x01, // operation: request
	)
	v := ip.As4()
	b = append(b, mac[:6]...)
	b = append(b, v[:]...)
	b = append(b, broadcastMAC...)
	b = append(b, v[:]...)
	return b
}
