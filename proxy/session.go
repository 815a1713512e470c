package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hamr-project/hamr/routing"
)

// refuseTimeout bounds the write of an ERR packet to a refused client.
const refuseTimeout = time.Second

// errMoved is the reason a dialed connection was dropped: the primary
// moved while it was being dialed.
var errMoved = errors.New("primary moved during dial")

// session is one client connected to one destination. Both ends are bare
// *net.TCPConn so that io.Copy splices (see clientToServer).
type session struct {
	r       *Route
	d       *dest
	client  *net.TCPConn
	server  *net.TCPConn
	pending atomic.Int32 // copy directions still running
}

// serve handles one accepted client on its own goroutine, which becomes
// the session's server-to-client direction.
func (r *Route) serve(c *net.TCPConn) {
	if r.clients.Add(1) > int64(r.cfg.MaxConnections) {
		r.clients.Add(-1)
		r.refusedMax.Inc()
		r.log.Debug("client refused: max_connections reached", "client", c.RemoteAddr(), "max_connections", r.cfg.MaxConnections)
		r.refuse(c, r.errTooMany)
		return
	}
	s, err := r.connect(c)
	if err != nil {
		r.clients.Add(-1)
		if errors.Is(err, routing.ErrNoDestination) {
			r.refusedNoDest.Inc()
			r.log.Debug("client refused: no destination", "client", c.RemoteAddr(), "err", err)
			r.refuse(c, r.errNoDest)
			return
		}
		c.Close()
		return
	}
	r.wg.Go(s.clientToServer)
	s.serverToClient()
}

// refuse writes an ERR packet to c and closes it.
func (r *Route) refuse(c *net.TCPConn, pkt []byte) {
	c.SetWriteDeadline(time.Now().Add(refuseTimeout))
	c.Write(pkt)
	c.Close()
}

// connect picks and dials destinations for client c until one answers and
// its session is registered. Each failed dial marks its destination down.
// The number of attempts is bounded by the number of destinations.
func (r *Route) connect(c *net.TCPConn) (*session, error) {
	var last error
	for range r.attempts {
		p, err := r.rt.Pick()
		if err != nil {
			return nil, err
		}
		d := r.dest(p)
		if d == nil {
			return nil, fmt.Errorf("route %s: pick %d (%s) is not a destination of the route", r.cfg.Name, p.Index, p.Addr)
		}
		sc, err := r.dialOne(p.Addr)
		if err != nil {
			if r.ctx.Err() != nil {
				return nil, err // shutting down; not the destination's fault
			}
			if local(err) {
				// Out of file descriptors, memory or ephemeral ports:
				// another destination would fail the same way, and
				// marking them down would turn a local shortage into an
				// outage. Drop this client only.
				r.log.Warn("dial failed for lack of local resources; client closed", "destination", p.Addr, "err", err)
				return nil, err
			}
			d.dialErrs.Inc()
			if p.Route.SetUp(p.Index, false) {
				r.log.Warn("dial failed; destination marked down", "destination", p.Addr, "err", err)
			} else {
				r.log.Debug("dial failed", "destination", p.Addr, "err", err)
			}
			if r.onDialError != nil {
				r.onDialError(p, err)
			}
			last = err
			continue
		}
		s := &session{r: r, d: d, client: c, server: sc}
		if r.register(s, p) {
			return s, nil
		}
		sc.Close()
		if r.ctx.Err() != nil {
			return nil, r.ctx.Err()
		}
		last = errMoved
	}
	return nil, fmt.Errorf("route %s: %w after %d attempts: %w", r.cfg.Name, routing.ErrNoDestination, r.attempts, last)
}

// local reports whether a dial error is a shortage on this host rather
// than a fault of the destination.
func local(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dest returns the destination of pick p, or nil.
func (r *Route) dest(p routing.Pick) *dest {
	var ds []*dest
	switch p.Route {
	case r.rt:
		ds = r.dests
	case r.fb:
		ds = r.fbDests
	}
	if p.Index < 0 || p.Index >= len(ds) {
		return nil
	}
	return ds[p.Index]
}

// dialOne dials addr within the connect timeout.
func (r *Route) dialOne(addr string) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.ConnectTimeout)
	defer cancel()
	c, err := r.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dial %s: got a %T, want a *net.TCPConn", addr, c)
	}
	return tc, nil
}

// register records s as open if p is still current. On a read-write route
// it first closes any session to another destination, so that under r.mu
// the route never has sessions to two destinations, even in the moment
// between the primary moving and the watcher running.
func (r *Route) register(s *session, p routing.Pick) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing || !p.Route.Current(p) {
		return false
	}
	if r.rwPrimary && p.Route == r.rt {
		r.closeSessions(r.dests, p.Index)
	}
	s.pending.Store(2)
	s.d.sessions[s] = struct{}{}
	s.d.active.Inc()
	s.d.total.Inc()
	return true
}

// closeSessions closes the sessions of ds except those of ds[keep] (keep
// may be -1) and returns how many it closed. r.mu must be held.
func (r *Route) closeSessions(ds []*dest, keep int) int {
	n := 0
	for i, d := range ds {
		if i == keep {
			continue
		}
		for s := range d.sessions {
			delete(d.sessions, s)
			d.active.Dec()
			s.close()
			n++
		}
	}
	return n
}

// clientToServer copies what the client sends to the destination, then
// half-closes towards the destination. io.Copy between two *net.TCPConn
// uses splice(2): the bytes never enter user space. Wrapping either
// conn (a counter, a bufio) would silently fall back to a 32 KiB
// userspace copy; TestCopySplices fails if that happens.
func (s *session) clientToServer() {
	n, err := io.Copy(s.server, s.client)
	s.d.c2s.Add(float64(n))
	s.server.CloseWrite()
	s.done(err)
}

// serverToClient copies what the destination sends to the client, then
// half-closes towards the client.
func (s *session) serverToClient() {
	n, err := io.Copy(s.client, s.server)
	s.d.s2c.Add(float64(n))
	s.client.CloseWrite()
	s.done(err)
}

// done ends one direction. An error (a reset, or a close by the proxy)
// ends the whole session; the last direction to end closes both conns.
func (s *session) done(err error) {
	if err != nil {
		s.close()
	}
	if s.pending.Add(-1) == 0 {
		s.close()
		s.r.unregister(s)
	}
}

func (s *session) close() {
	s.client.Close()
	s.server.Close()
}

// unregister forgets s, unless it was already closed by the route.
func (r *Route) unregister(s *session) {
	r.mu.Lock()
	if _, ok := s.d.sessions[s]; ok {
		delete(s.d.sessions, s)
		s.d.active.Dec()
	}
	r.mu.Unlock()
	r.clients.Add(-1)
}
