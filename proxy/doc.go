// Package proxy is hamr's layer-4 data path: it listens on a route's
// address, picks a destination from a [routing.Route], dials it with
// failover, and relays bytes between the client and the destination,
// never looking at them: small packets with read(2)/write(2) through a
// loop's buffer, bulk transfers with splice(2) through a pooled pipe.
//
// A Route runs one event loop per P (loop.go): each accepts clients,
// dials destinations with non-blocking connect(2) and relays its
// sessions (session.go, flow.go) with edge-triggered epoll, so a
// session costs no goroutine and an idle one holds no buffer and no
// pipe.
//
// A [Route] is built with [New] and started with [Route.Start]:
//
//	p := proxy.New(proxy.Config{
//		Name:           "rw",
//		Addr:           "172.168.1.20:7001",
//		ReadWrite:      true,
//		ConnectTimeout: time.Second,
//		MaxConnections: 1024,
//	}, rt, proxy.Options{Logger: log, Metrics: m})
//	if err := p.Start(); err != nil {
//		return err
//	}
//	defer p.Shutdown(ctx)
//
// Listeners bind with IP_FREEBIND, so a backup host can listen on a virtual
// IP it does not hold yet. A failed dial marks the destination down in the
// routing.Route at once and the client is sent to the next candidate, so a
// client sees no error while any destination is up. When the proxy must
// refuse a client (no destination up, max_connections reached) it sends a
// MySQL ERR packet as the server's first packet instead of a bare reset.
//
// On a read-write route, sessions to a destination that is no longer the
// primary are closed as soon as the primary moves: at any instant the
// route's open sessions all go to one destination.
package proxy
