// Package vip implements keepalived-style VRRP for IPv4: version 3
// (RFC 5798) and version 2 with simple password authentication
// (RFC 3768), on the wire compatible with keepalived so either can be
// master of the same virtual router.
//
// An [Instance] runs one [vrrp.NAME] section of the configuration: it
// advertises on a raw IPv4 socket (protocol 112, group 224.0.0.18 or
// unicast peers), elects a master with the RFC 5798 state machine
// (Initialize, Backup, Master, plus Fault while a tracked interface or
// route is down), and on the master adds the virtual IP addresses with
// netlink, sends gratuitous ARP and runs the notify scripts.
//
//	inst, err := vip.New(cfg, vip.Options{Logger: log, Metrics: m})
//	if err != nil {
//		return err
//	}
//	// from the health checker, for each tracked route:
//	inst.SetRouteHealthy("basic_failover", false)
//	err = inst.Run(ctx) // until ctx is cancelled; then resigns with priority 0
//
// The packet codec ([Advert], [Decode]) and the state machine are free of
// operating system calls and are tested with a fake clock and a fake
// transport; the Linux pieces (raw socket, netlink, AF_PACKET, link
// polling) need CAP_NET_RAW and CAP_NET_ADMIN.
package vip
