package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hamr-project/hamr/routing"
	"golang.org/x/sys/unix"
)

// errConnectTimeout is the error of a dial attempt that ran out of
// connect_timeout.
var errConnectTimeout = &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}

// Session states.
const (
	stateConnecting uint8 = iota // dialing a destination
	stateOpen                    // relaying
	stateClosed
)

// session is one client and, once connected, its destination. Its loop
// owns it; other goroutines only kill it (see kill).
type session struct {
	r        *Route
	l        *loop
	tag      uint32 // epoll tag of the session's sockets
	state    uint8
	cfd, sfd int // client and destination sockets; sfd is -1 when none
	attempt  int // dial attempts so far
	gen      uint64
	pick     routing.Pick // the destination being dialed or connected
	d        *dest        // pick's destination
	c2s, s2c flow
	k        *kstate // set while the kernel relays s (kernel_linux.go)
	replies  uint8   // replies so far, up to joinAfter (+1: the kernel refused s)
	asked    int64   // bytes the client had sent at the last reply

	// mu orders the loop closing the sockets with kill shutting them
	// down from another goroutine, so that kill never touches a
	// descriptor number that was closed and reused.
	mu   sync.Mutex
	dead atomic.Bool // the sockets are closed or shut down
}

// accept takes clients from sl's listener.
func (l *loop) accept(sl *lnSlot) {
	for range acceptsPerWake {
		fd, err := acceptFn(sl.ln.fd)
		switch err {
		case nil:
			l.balance().admitFrom(l, fd)
			if sl.paused {
				return // the dial found no resources: the backlog waits
			}
			sl.ln.recovered(l.r)
			continue
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue
		}
		// EMFILE, ENFILE, ENOBUFS, ...: retry after a growing delay.
		l.backOff(sl.ln, os.NewSyscallError("accept4", err))
		return
	}
	// More may be waiting. The listener is level-triggered, so the next
	// harvest reports it again; but that re-queueing is no new edge for
	// the netpoller, so the loop must harvest again before it waits.
	l.again = true
}

// acceptFn accepts a client; tests make it fail.
var acceptFn = rawAccept4

// balance returns the loop that should serve a client accepted by l:
// l itself, unless it holds at least two sessions more than the least
// loaded loop. Whichever loop runs first accepts, so without this a few
// long sessions (bulk transfers) can all land on one loop.
func (l *loop) balance() *loop {
	best, n := l, l.load.Load()
	for _, o := range l.r.loops {
		if m := o.load.Load(); m < n-1 && (best == l || m < best.load.Load()) {
			best = o
		}
	}
	return best
}

// admitFrom serves cfd, accepted by loop from, on l.
func (l *loop) admitFrom(from *loop, cfd int) {
	gen := l.r.gen.Load() // as accepted: a CloseSessions during the hand-over drops it
	if l == from {
		l.admit(cfd, gen)
		return
	}
	l.load.Add(1) // counted at once, so that a burst spreads
	l.r.wg.Add(1) // Shutdown waits for the hand-over too
	l.post(func(l *loop) {
		l.load.Add(-1)
		l.admit(cfd, gen)
		l.r.wg.Done()
	})
}

// admit starts serving a new client, accepted in generation gen.
func (l *loop) admit(cfd int, gen uint64) {
	r := l.r
	if r.clients.Add(1) > int64(r.cfg.MaxConnections) {
		r.clients.Add(-1)
		r.refusedMax.Inc()
		if r.log.Enabled(r.ctx, slog.LevelDebug) { // no argument boxing when off
			r.log.Debug("client refused: max_connections reached", "client", peer(cfd), "max_connections", r.cfg.MaxConnections)
		}
		refuse(cfd, r.errTooMany)
		return
	}
	r.wg.Add(1)
	l.load.Add(1)
	s := &session{r: r, l: l, tag: l.nextTag(), cfd: cfd, sfd: -1, gen: gen}
	l.put(cfd, s)
	l.connect(s)
}

// refuse writes an ERR packet to a new client and closes it. The packet
// is the first write on the socket: it fits the send buffer.
func refuse(fd int, pkt []byte) {
	write(fd, pkt)
	rawClose(fd)
}

// peer returns fd's peer address for logs.
func peer(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "?"
	}
	return sockaddrString(sa)
}

// connect picks the next destination for s and starts dialing it. A
// failed dial comes back through dialFailed, which calls connect again;
// the number of attempts is bounded by the number of destinations.
func (l *loop) connect(s *session) {
	r := l.r
	attempts := r.attempts()
	for s.attempt < attempts {
		s.attempt++
		p, err := r.rt.Pick()
		if err != nil {
			l.refuseNoDest(s, err)
			return
		}
		d := r.dest(p)
		if d == nil && p.Route != r.rt {
			continue // picked on a fallback that a reload just replaced
		}
		if d == nil {
			l.r.log.Error("pick is not a destination of the route", "index", p.Index, "destination", p.Addr)
			l.closeSession(s)
			return
		}
		s.pick, s.d = p, d
		s.state = stateConnecting
		if d.raw.n == 0 || r.dial != nil {
			l.dialSlow(s, d, s.attempt)
			return
		}
		fd, done, err := dialRaw(d)
		if err != nil {
			if l.dialError(s, err) {
				continue
			}
			return
		}
		if !l.watch(s, fd) {
			return
		}
		if done {
			l.connected(s, evNone)
			return
		}
		l.dials = append(l.dials, dialTimer{at: l.now + int64(r.cfg.ConnectTimeout), s: s, attempt: s.attempt})
		return
	}
	l.refuseNoDest(s, fmt.Errorf("route %s: %w after %d attempts", r.cfg.Name, routing.ErrNoDestination, attempts))
}

// watch makes fd s's destination socket and puts it in the loop's
// epoll. It reports false, with s closed, if epoll refused it.
func (l *loop) watch(s *session, fd int) bool {
	s.sfd = fd
	l.put(fd, s)
	if err := l.add(fd, s.tag); err != nil {
		l.r.log.Error("client closed", "err", err)
		l.closeSession(s)
		return false
	}
	return true
}

// refuseNoDest sends s's client the "no destination" ERR packet.
func (l *loop) refuseNoDest(s *session, err error) {
	r := l.r
	r.refusedNoDest.Inc()
	if r.log.Enabled(r.ctx, slog.LevelDebug) {
		r.log.Debug("client refused: no destination", "client", peer(s.cfd), "err", err)
	}
	write(s.cfd, r.errNoDest)
	l.closeSession(s)
}

// refuseLocal sends s's client an ERR packet when this host lacks what
// a dial needs (descriptors, ports, memory), and pauses the loop's
// listeners as an accept failure does: a client accepted now would fail
// the same way, and clients left in the backlog can wait for resources.
func (l *loop) refuseLocal(s *session, err error) {
	r := l.r
	r.refusedLocal.Inc()
	for _, sl := range l.lns {
		l.backOff(sl.ln, err)
	}
	if r.log.Enabled(r.ctx, slog.LevelDebug) {
		r.log.Debug("client refused: dial failed for lack of local resources", "client", peer(s.cfd), "destination", s.pick.Addr, "err", err)
	}
	write(s.cfd, r.errLocal)
	l.closeSession(s)
}

// dialRaw starts a non-blocking connect to d. done reports a connection
// completed at once.
func dialRaw(d *dest) (fd int, done bool, err error) {
	fd, err = rawSocket(d.family)
	if err != nil {
		return -1, false, &net.OpError{Op: "dial", Net: "tcp", Addr: d.tcp, Err: os.NewSyscallError("socket", err)}
	}
	// TCP_NODELAY and keepalive, as Go's dialer sets them.
	for _, o := range sockOpts {
		if err := rawSetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			rawClose(fd)
			return -1, false, &net.OpError{Op: "dial", Net: "tcp", Addr: d.tcp, Err: os.NewSyscallError("setsockopt", err)}
		}
	}
	switch err := rawConnect(fd, &d.raw); err {
	case nil:
		return fd, true, nil
	case unix.EINPROGRESS, unix.EINTR:
		return fd, false, nil
	default:
		rawClose(fd)
		return -1, false, &net.OpError{Op: "dial", Net: "tcp", Addr: d.tcp, Err: os.NewSyscallError("connect", err)}
	}
}

// dialSlow dials through Route.dial on a goroutine: for test hooks, and
// for destinations given by hostname, which need the resolver. The
// connection leaves the runtime's netpoller and comes back to the loop.
func (l *loop) dialSlow(s *session, d *dest, attempt int) {
	r := l.r
	dial := r.dial
	if dial == nil {
		dial = r.dialer.DialContext
	}
	addr := s.pick.Addr
	r.wg.Go(func() {
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.ConnectTimeout)
		c, err := dial(ctx, "tcp", addr)
		cancel()
		fd := -1
		if err == nil {
			fd, err = detach(c, addr)
		}
		l.post(func(l *loop) {
			if !s.dialing(attempt) {
				if fd >= 0 {
					rawClose(fd)
				}
				return
			}
			if err != nil {
				l.dialFailed(s, err)
				return
			}
			if l.watch(s, fd) {
				l.connected(s, evNone)
			}
		})
	})
}

// detach takes c's socket out of the runtime's netpoller: the loop owns
// the duplicate it returns. c is closed.
func detach(c net.Conn, addr string) (int, error) {
	defer c.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("dial %s: got a %T, want a *net.TCPConn", addr, c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("fcntl", derr)}
	}
	return fd, nil
}

// dest returns the destination of pick p, or nil.
func (r *Route) dest(p routing.Pick) *dest {
	var ds []*dest
	if p.Route == r.rt {
		ds = r.dests
	} else if f := r.fb.Load(); f != nil && p.Route == f.rt {
		ds = f.dests
	}
	if p.Index < 0 || p.Index >= len(ds) {
		return nil
	}
	return ds[p.Index]
}

// dialError handles a dial that failed before it started (socket,
// connect): it reports whether to try the next destination.
func (l *loop) dialError(s *session, err error) bool {
	if local(err) {
		l.refuseLocal(s, err)
		return false
	}
	l.markDown(s, err)
	return true
}

// dialFailed handles a dial attempt that failed after it started, and
// tries the next destination.
func (l *loop) dialFailed(s *session, err error) {
	l.dropDest(s)
	if l.r.ctx.Err() != nil {
		l.closeSession(s) // shutting down; not the destination's fault
		return
	}
	if !l.dialError(s, err) {
		return
	}
	l.connect(s)
}

// dropDest closes s's destination socket, if it has one.
func (l *loop) dropDest(s *session) {
	if s.sfd >= 0 {
		l.table[s.sfd] = nil
		rawClose(s.sfd)
		s.sfd = -1
	}
}

// dialing reports whether s is still at the given dial attempt: a
// timer or a slow dial may outlive it (the dial went on to the next
// destination, or the session ended).
func (s *session) dialing(attempt int) bool {
	return s.state == stateConnecting && s.attempt == attempt
}

// markDown marks s's destination down after a failed dial.
func (l *loop) markDown(s *session, err error) {
	r, p := l.r, s.pick
	s.d.dialErrs.Inc()
	// The next pick, this client's included, avoids p at once; the rest
	// is the reporter's.
	r.reportFailure(failure{pick: p, err: err, notify: p.Route.MarkDown(p.Index)})
}

// local reports whether a dial error is a shortage on this host rather
// than a fault of the destination: another destination would fail the
// same way, and marking them down would turn a local shortage into an
// outage.
func local(err error) bool {
	// The resolver keeps only the text of the error that stopped it
	// (socket(2) for its UDP query, say).
	var dns *net.DNSError
	isDNS := errors.As(err, &dns) && !dns.IsNotFound
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) || isDNS && strings.Contains(dns.Err, e.Error()) {
			return true
		}
	}
	return false
}

// event handles an epoll event on one of s's sockets.
func (l *loop) event(s *session, fd int, ev uint32) {
	const trouble = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	switch s.state {
	case stateConnecting:
		if fd != s.sfd {
			return
		}
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			err := error(unix.ECONNREFUSED)
			if e, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && e != 0 {
				err = unix.Errno(e)
			}
			l.dialFailed(s, &net.OpError{Op: "dial", Net: "tcp", Addr: s.d.tcp, Err: os.NewSyscallError("connect", err)})
			return
		}
		if ev&unix.EPOLLOUT != 0 {
			l.connected(s, ev)
		}
	case stateOpen:
		if s.k != nil {
			l.kernelEvent(s, fd, ev)
			return
		}
		// The flow reading fd; and the flow writing to fd, if it waits.
		in, out := &s.c2s, &s.s2c
		if fd == s.sfd {
			in, out = out, in
		}
		if ev&(unix.EPOLLIN|trouble) != 0 {
			if !l.pumpOrClose(s, in, ev&trouble != 0) {
				return
			}
		}
		if out.blocked && ev&(unix.EPOLLOUT|trouble) != 0 {
			// Resumed after a stop: src's edges came while we did not
			// read, so read until EAGAIN.
			l.pumpOrClose(s, out, true)
		}
	}
}

// pumpOrClose runs f and ends the session on an error, a kill, or when
// both directions have ended. It reports whether the session is open.
func (l *loop) pumpOrClose(s *session, f *flow, drain bool) bool {
	err := l.pump(s, f, drain)
	if err != nil && f == &s.s2c && s.unspoken() {
		l.redial(s, err)
		return false
	}
	f.flush() // every pump comes through here: nothing is left to count at close
	if err != nil || s.killed() || (s.c2s.eof && s.s2c.eof) {
		l.closeSession(s)
		return false
	}
	if f == &s.s2c && l.r.redir != nil {
		return l.maybeJoin(s)
	}
	return true
}

// errSilentEOF is the server's EOF before its first byte.
var errSilentEOF = errors.New("connection closed before the server's greeting")

// unspoken reports whether nothing has been read from either side of s,
// and the client is still there: the server has not sent its greeting
// (MySQL's server speaks first) and the client has sent nothing that
// would have to be replayed. Such a client can still be sent to another
// server. Once the server has spoken, an error on s2c may be the
// client's (a write to a client that reset), never the server's fault.
func (s *session) unspoken() bool {
	return !s.s2c.heard && !s.c2s.heard && !s.c2s.eof
}

// redial sends s's client on to the next destination after its server
// closed the connection before the greeting: a server that is being
// SIGKILLed still completes TCP handshakes in the kernel until its
// sockets close, and then resets them. That is the same failure as a
// refused connect, and is handled the same way: the destination is
// marked down and the client, which has seen nothing, goes on.
func (l *loop) redial(s *session, err error) {
	l.r.unregister(s)
	if s.killed() {
		l.closeSession(s) // closed by the Route meanwhile
		return
	}
	// The client socket joins the epoll again once the next destination
	// has answered.
	rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.cfd, nil)
	s.c2s.release()
	s.s2c.release()
	s.state = stateConnecting
	l.dialFailed(s, fmt.Errorf("read from %s: %w", s.pick.Addr, err))
}

// evNone is connected's event when no event reported the connection:
// read the greeting until EAGAIN.
const evNone = unix.EPOLLIN | unix.EPOLLRDHUP

// connected takes s from dialing to relaying, unless the Route no longer
// wants it; ev is the event that reported the connection, or evNone.
func (l *loop) connected(s *session, ev uint32) {
	r := l.r
	if !r.register(s) {
		l.dropDest(s)
		if r.ctx.Err() != nil || r.gen.Load() != s.gen {
			l.closeSession(s) // shutting down, or CloseSessions ran
			return
		}
		l.connect(s) // the primary moved meanwhile: dial the new one
		return
	}
	s.state = stateOpen // from here on closeSession unregisters s
	s.c2s = flow{src: s.cfd, dst: s.sfd, bytes: s.d.c2s}
	s.s2c = flow{src: s.sfd, dst: s.cfd, bytes: s.d.s2c}
	// The client socket joins the epoll now: whatever it sent meanwhile
	// is reported at once.
	if err := l.add(s.cfd, s.tag); err != nil {
		r.log.Error("client closed", "err", err)
		l.closeSession(s)
		return
	}
	// The server speaks first; its greeting may have come with the
	// connection's edge.
	if ev&unix.EPOLLIN != 0 {
		l.pumpOrClose(s, &s.s2c, ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0)
	}
}

// eof ends flow f after src's EOF: the half-close goes on to dst.
func (l *loop) eof(s *session, f *flow) error {
	if f == &s.s2c && s.unspoken() {
		return errSilentEOF // no half-close: see redial
	}
	f.eof = true
	f.release()
	f.flush() // counted before dst can see the end
	if err := rawShutdown(f.dst, unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
		return err
	}
	return nil
}

// closeSession ends s: it closes both sockets, returns what the flows
// hold, and forgets s.
func (l *loop) closeSession(s *session) {
	if s.state == stateClosed {
		return
	}
	registered := s.state == stateOpen
	s.state = stateClosed
	if s.k != nil {
		s.countKernel()
	}
	s.mu.Lock()
	s.dead.Store(true)
	for _, fd := range []int{s.cfd, s.sfd} {
		if fd >= 0 {
			l.table[fd] = nil
			rawClose(fd)
		}
	}
	s.mu.Unlock()
	s.c2s.release()
	s.s2c.release()
	r := l.r
	if registered {
		r.unregister(s)
	}
	l.load.Add(-1)
	r.clients.Add(-1)
	r.wg.Done()
}

// kill closes s from any goroutine: it shuts both sockets down, so
// that no byte moves any more from this instant, and has the loop close
// them. r.mu may be held.
func (s *session) kill() {
	s.mu.Lock()
	if !s.dead.Load() {
		s.dead.Store(true) // for the loop: close at the next event
		rawShutdown(s.cfd, unix.SHUT_RDWR)
		if s.sfd >= 0 {
			rawShutdown(s.sfd, unix.SHUT_RDWR)
		}
	}
	s.mu.Unlock()
	s.l.post(func(l *loop) { l.closeSession(s) }) // a no-op if it ended meanwhile
}

// localAddr returns the address s's client connected to (IPv4 unmapped),
// unless s is closed or being closed.
func (s *session) localAddr() (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead.Load() {
		return netip.Addr{}, false
	}
	sa, err := unix.Getsockname(s.cfd)
	if err != nil {
		return netip.Addr{}, false
	}
	ap, ok := addrPort(sa)
	return ap.Addr().Unmap(), ok
}

// killed reports whether kill ran.
func (s *session) killed() bool { return s.dead.Load() }

// register records s as open if its pick is still current. On a
// read-write route it first closes any session to another destination,
// so that under r.mu the route never has sessions to two destinations,
// even in the moment between the primary moving and the watcher running.
func (r *Route) register(s *session) bool {
	p := s.pick
	r.mu.Lock()
	defer r.mu.Unlock()
	// A pick on a fallback that a reload has replaced is no longer ours.
	if r.closing || s.gen != r.gen.Load() || !p.Route.Current(p) || r.dest(p) != s.d {
		return false
	}
	if r.rwPrimary && p.Route == r.rt {
		r.closeSessions(r.dests, p.Index)
	}
	s.d.sessions[s] = struct{}{}
	s.d.active.Inc()
	s.d.total.Inc()
	return true
}

// closeSessions kills the sessions of ds except those of ds[keep] (keep
// may be -1) and returns how many it killed. r.mu must be held.
func (r *Route) closeSessions(ds []*dest, keep int) int {
	n := 0
	for i, d := range ds {
		if i != keep {
			n += d.closeWhere(nil)
		}
	}
	return n
}

// closeOpen kills the open sessions of the route, its own and those
// through fallbacks, that match (all with a nil match), forgets the
// earlier fallbacks' destinations left without any, and returns how many
// it killed. r.mu must be held.
func (r *Route) closeOpen(match func(*session) bool) int {
	n := 0
	for _, d := range r.allDests() {
		n += d.closeWhere(match)
	}
	r.retire()
	return n
}

// closeWhere kills d's sessions that match (all with a nil match) and
// returns how many. Route.mu must be held.
func (d *dest) closeWhere(match func(*session) bool) int {
	n := 0
	for s := range d.sessions {
		if match == nil || match(s) {
			delete(d.sessions, s)
			d.active.Dec()
			s.kill()
			n++
		}
	}
	return n
}

// unregister forgets s, unless the Route already did.
func (r *Route) unregister(s *session) {
	r.mu.Lock()
	if _, ok := s.d.sessions[s]; ok {
		delete(s.d.sessions, s)
		s.d.active.Dec()
		if len(s.d.sessions) == 0 && len(r.oldFb) > 0 {
			r.retire()
		}
	}
	r.mu.Unlock()
}
