package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// errClosedAll is the reason a client being connected was dropped:
// CloseSessions ran meanwhile (its address was a VIP given up).
var errClosedAll = errors.New("sessions closed during dial")

// session is one client connected to one destination.
type session struct {
	r        *Route
	d        *dest
	client   *net.TCPConn
	server   *net.TCPConn
	c2s, s2c relay        // the two directions
	pending  atomic.Int32 // copy directions still running
	gen      uint64       // Route.gen when the client was taken in
}

// serve handles one accepted client on its own goroutine: it connects
// the client to a destination and starts the session's two directions.
func (r *Route) serve(c *net.TCPConn) {
	if r.clients.Add(1) > int64(r.cfg.MaxConnections) {
		r.clients.Add(-1)
		r.refusedMax.Inc()
		if r.log.Enabled(r.ctx, slog.LevelDebug) { // no argument boxing when off
			r.log.Debug("client refused: max_connections reached", "client", c.RemoteAddr(), "max_connections", r.cfg.MaxConnections)
		}
		r.refuse(c, r.errTooMany)
		return
	}
	s, err := r.connect(c)
	if err != nil {
		r.clients.Add(-1)
		if errors.Is(err, routing.ErrNoDestination) {
			r.refusedNoDest.Inc()
			if r.log.Enabled(r.ctx, slog.LevelDebug) {
				r.log.Debug("client refused: no destination", "client", c.RemoteAddr(), "err", err)
			}
			r.refuse(c, r.errNoDest)
			return
		}
		c.Close()
		return
	}
	// Each direction holds one count of r.wg until it finishes, also
	// while parked (park.go) without a goroutine. The server speaks first
	// in MySQL: the client-to-server direction starts parked and gets a
	// goroutine when the client has something to say. The other gets a
	// fresh goroutine: this one's stack grew while dialing.
	r.wg.Add(2)
	if r.idle == nil || !s.c2s.park() {
		go s.c2s.loop()
	}
	go s.s2c.loop()
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
	gen := r.gen.Load()
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
		s := &session{r: r, d: d, client: c, server: sc, gen: gen}
		if err := s.init(); err != nil {
			sc.Close()
			return nil, err
		}
		if r.register(s, p) {
			return s, nil
		}
		sc.Close()
		if r.ctx.Err() != nil {
			return nil, r.ctx.Err()
		}
		if r.gen.Load() != gen {
			return nil, errClosedAll
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
	if r.closing || s.gen != r.gen.Load() || !p.Route.Current(p) {
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

// finish ends direction c after its relay returned: it counts the bytes,
// half-closes towards the receiving side (the client's EOF reaches the
// destination as EOF, and back), and ends the session if it was the last
// direction or failed. The relay (relay.go) waits holding nothing, copies
// small packets with read/write and splices bulk transfers;
// TestCopySplices and TestIdleSessionsHoldNoPipes check both.
func (s *session) finish(c *relay, n int64, err error) {
	defer s.r.wg.Done()
	if c == &s.c2s {
		s.d.c2s.Add(float64(n))
		s.server.CloseWrite()
	} else {
		s.d.s2c.Add(float64(n))
		s.client.CloseWrite()
	}
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

// init prepares both relays.
func (s *session) init() error {
	crc, err := s.client.SyscallConn()
	if err != nil {
		return err
	}
	src, err := s.server.SyscallConn()
	if err != nil {
		return err
	}
	s.c2s.init(s, s.client, s.server, crc, src)
	s.s2c.init(s, s.server, s.client, src, crc)
	return nil
}

// close closes both sockets, and resumes a parked direction so that it
// sees the close and finishes.
func (s *session) close() {
	s.client.Close()
	s.server.Close()
	s.c2s.resume()
	s.s2c.resume()
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
