package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/hamr-project/hamr/routing"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is one route's listener and limits.
type Config struct {
	Name string // route name, used in metric labels, logs and ERR packets
	Addr string // host:port to bind; port 0 picks a port, kept across re-binds

	// ReadWrite closes every session not on the current primary whenever
	// the primary moves. It only has an effect on routes with a primary
	// (first-available, next-available).
	ReadWrite bool

	ConnectTimeout time.Duration // per dial attempt; must be > 0
	MaxConnections int           // client connections served at once; must be > 0

	// CloseListenerWhenDown closes the listening socket while no
	// destination is available and binds it again when one is.
	CloseListenerWhenDown bool

	// Loops is the number of event loops; 0 runs one per P (GOMAXPROCS),
	// as HAProxy runs nbthread threads.
	Loops int

	// KernelRelay hands each IPv4 session to the kernel after its first
	// replies (a BPF sockmap program moves its bytes from socket to
	// socket), so that queries and results cross the proxy without
	// waking it. The kernel applies no flow control across the relay: a
	// side that reads slower than the other sends makes the kernel queue
	// the difference. Where the kernel refuses the program (no CAP_BPF
	// or CAP_NET_ADMIN, an old kernel), Start logs why and the loops
	// relay every session.
	KernelRelay bool
}

// Options are a Route's collaborators. The zero value is usable.
type Options struct {
	Logger  *slog.Logger // nil discards logs
	Metrics *Metrics     // nil: counted but exported nowhere

	// Dial connects to a destination. It must honour ctx and return a
	// *net.TCPConn (anything else is closed and counted as a failed dial).
	// nil: the loops connect with non-blocking connect(2) themselves, with
	// TCP keepalive (idle 15 s, as Go's dialer) and TCP_NODELAY;
	// destinations given by hostname are resolved and dialed by a
	// net.Dialer. Dial is for tests: it costs a goroutine per connection.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// OnDialError, if set, is called after a failed dial, once the proxy
	// itself has marked the destination down. It runs on the route's own
	// goroutine, after p.Route's watchers (the Route's own among them),
	// and holds up no session: the client has gone on to the next
	// destination already. Failures of a destination that come while an
	// earlier one waits are passed once, with the latest error. Shutdown
	// waits for it.
	OnDialError func(p routing.Pick, err error)
}

// Route serves one route: it accepts clients on Config.Addr and connects
// each to a destination of a routing.Route.
type Route struct {
	cfg         Config
	rt          *routing.Route
	fb          atomic.Pointer[fallback] // rt's fallback route and its destinations; nil if none
	m           *Metrics
	log         *slog.Logger
	dial        func(ctx context.Context, network, addr string) (net.Conn, error) // Options.Dial
	dialer      net.Dialer                                                        // for hostnames
	onDialError func(routing.Pick, error)
	fails       failures    // failed dials on their way to onDialError
	redir       *redirector // the kernel relay; nil when off or unavailable

	rwPrimary bool    // cfg.ReadWrite on a route with a primary: one destination at a time
	dests     []*dest // rt's destinations, by index

	refusedMax, refusedNoDest, refusedLocal prometheus.Counter
	errTooMany, errNoDest, errLocal         []byte // ERR packets

	ctx     context.Context    // cancelled when Shutdown stops waiting
	cancel  context.CancelFunc // cancels ctx
	stop    chan struct{}      // closed when Shutdown starts
	kick    chan struct{}      // availability may have changed
	wg      sync.WaitGroup     // every client being served, and every goroutine but the loops
	loopsWG sync.WaitGroup     // the loops' goroutines
	loops   []*loop            // set by Start
	clients atomic.Int64       // client connections being served
	gen     atomic.Uint64      // incremented by CloseSessions

	lnMu sync.Mutex // held while the listener is opened or closed; before mu

	mu       sync.Mutex
	oldFb    []*dest   // destinations of earlier fallbacks that still have sessions
	unwatch  []func()  // unregister r.changed from the routing.Routes, at Shutdown
	ln       *listener // nil while not listening
	addr     string    // bound address, reused when re-binding
	started  bool
	stopping bool // Shutdown has begun: no new listener
	released bool // releaseMetrics ran
	closing  bool // Shutdown's ctx is done: no new session
}

// New returns a Route that will serve rt according to cfg. Nothing happens
// until Start; the configuration is checked there.
func New(cfg Config, rt *routing.Route, opts Options) *Route {
	r := &Route{
		cfg:         cfg,
		rt:          rt,
		log:         opts.Logger,
		dial:        opts.Dial,
		onDialError: opts.OnDialError,
		stop:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
		addr:        cfg.Addr,
		fails:       failures{kick: make(chan struct{}, 1), stop: make(chan struct{})},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("route", cfg.Name)
	m := opts.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	m.acquireRoute(cfg.Name)
	r.m = m
	r.refusedMax = m.refusals.WithLabelValues(cfg.Name, reasonMaxConns)
	r.refusedNoDest = m.refusals.WithLabelValues(cfg.Name, reasonNoDest)
	r.refusedLocal = m.refusals.WithLabelValues(cfg.Name, reasonLocal)
	r.errTooMany = errPacket(mysql.ER_CON_COUNT_ERROR, "Too many connections")
	r.errNoDest = errPacket(mysql.ER_UNKNOWN_ERROR, "hamr: no destination available for route "+cfg.Name)
	// 1040, as a server out of connections: clients take it as "retry later".
	r.errLocal = errPacket(mysql.ER_CON_COUNT_ERROR, "hamr: too many connections on the router host (out of file descriptors, ports or memory)")
	if rt == nil {
		return r
	}
	s := rt.Strategy()
	r.rwPrimary = cfg.ReadWrite && (s == routing.FirstAvailable || s == routing.NextAvailable)
	for _, a := range rt.Destinations() {
		r.dests = append(r.dests, m.dest(cfg.Name, a))
	}
	if fb := rt.Fallback(); fb != nil {
		r.fb.Store(r.newFallback(fb))
	}
	return r
}

// fallback is the route a read-only Route falls back to, with the
// destinations its sessions are counted on. It is replaced whole when the
// fallback changes, so that the loops read it without a lock.
type fallback struct {
	rt    *routing.Route
	dests []*dest // rt's destinations, by index
}

func (r *Route) newFallback(fb *routing.Route) *fallback {
	f := &fallback{rt: fb}
	for _, a := range fb.Destinations() {
		f.dests = append(f.dests, r.m.dest(r.cfg.Name, a))
	}
	return f
}

// attempts is how many dials a client may take: one per destination,
// the fallback's included, and one more for a primary that moved while
// it was dialed.
func (r *Route) attempts() int {
	n := len(r.dests) + 1
	if f := r.fb.Load(); f != nil {
		n += len(f.dests)
	}
	return n
}

// fbDests returns the destinations of the current fallback, and of the
// ones before it that still have sessions. r.mu must be held.
func (r *Route) fbDests() []*dest {
	var ds []*dest
	if f := r.fb.Load(); f != nil {
		ds = f.dests
	}
	return append(ds[:len(ds):len(ds)], r.oldFb...)
}

// allDests returns the route's own destinations and fbDests. r.mu must
// be held.
func (r *Route) allDests() []*dest { return slices.Concat(r.dests, r.fbDests()) }

// FallbackChanged follows the routing.Route to the fallback it now has
// (routing.Route.SetFallback, which has told r's watcher already): new
// clients fall back to it, or to nothing if it is nil. Sessions open
// through the previous one go on, and are still counted and closed with
// the route's own.
func (r *Route) FallbackChanged() {
	fb := r.rt.Fallback()
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.fb.Load()
	if old == nil && fb == nil || old != nil && old.rt == fb {
		return
	}
	if old != nil {
		r.oldFb = append(r.oldFb, old.dests...)
	}
	if fb == nil {
		r.fb.Store(nil)
	} else {
		r.fb.Store(r.newFallback(fb))
		if r.started {
			r.unwatch = append(r.unwatch, fb.Watch(r.changed))
		}
	}
	r.retire()
}

// retire forgets the destinations of earlier fallbacks that have no
// session left, and lets go of their series. r.mu must be held.
func (r *Route) retire() {
	r.oldFb = slices.DeleteFunc(r.oldFb, func(d *dest) bool {
		if len(d.sessions) > 0 {
			return false
		}
		r.m.release(r.cfg.Name, d)
		return true
	})
}

// releaseMetrics lets go of every series of the Route, once it has ended.
func (r *Route) releaseMetrics() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		return
	}
	r.released = true
	ds := r.allDests()
	r.oldFb = nil
	for _, d := range ds {
		r.m.release(r.cfg.Name, d)
	}
	r.m.releaseRoute(r.cfg.Name)
}

// boundAddr is the configured address with the port the kernel chose
// (for port 0): the kernel's form drops an IPv6 zone, without which a
// link-local address could not be bound again.
func boundAddr(configured, bound string) string {
	host, _, err := net.SplitHostPort(configured)
	_, port, berr := net.SplitHostPort(bound)
	if err != nil || berr != nil {
		return bound
	}
	return net.JoinHostPort(host, port)
}

func (r *Route) check() error {
	switch {
	case r.rt == nil:
		return errors.New("no routing.Route")
	case r.cfg.Name == "":
		return errors.New("name is empty")
	case r.cfg.Addr == "":
		return errors.New("bind address is empty")
	case r.cfg.ConnectTimeout <= 0:
		return fmt.Errorf("connect_timeout %v must be > 0", r.cfg.ConnectTimeout)
	case r.cfg.MaxConnections <= 0:
		return fmt.Errorf("max_connections %d must be > 0", r.cfg.MaxConnections)
	}
	return nil
}

// Start binds the listening socket and starts accepting clients. It
// returns configuration and bind errors. A Route starts at most once.
func (r *Route) Start() error {
	if err := r.check(); err != nil {
		return fmt.Errorf("proxy: route %q: %w", r.cfg.Name, err)
	}
	r.lnMu.Lock()
	defer r.lnMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.started:
		return fmt.Errorf("proxy: route %q: already started", r.cfg.Name)
	case r.stopping:
		return fmt.Errorf("proxy: route %q: shut down", r.cfg.Name)
	}
	ln, err := listenTCP(r.addr)
	if err != nil {
		return fmt.Errorf("proxy: route %q: %w", r.cfg.Name, err)
	}
	n := r.cfg.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	for range n {
		l, err := newLoop(r)
		if err != nil {
			ln.close()
			for _, l := range r.loops {
				l.release()
			}
			r.loops = nil
			return fmt.Errorf("proxy: route %q: %w", r.cfg.Name, err)
		}
		r.loops = append(r.loops, l)
	}
	if r.cfg.KernelRelay {
		rd, err := newRedirector(2 * r.cfg.MaxConnections)
		if err != nil {
			r.log.Warn("kernel relay unavailable; the event loops relay every session", "err", err)
		} else {
			r.redir = rd
		}
	}
	r.startReporter()
	for _, l := range r.loops {
		r.loopsWG.Go(l.loopRun)
	}
	if r.redir != nil {
		r.m.counted.track(r, true)
	}
	r.started = true
	r.addr = boundAddr(r.cfg.Addr, ln.addr)
	// Watch before the first session, so that no primary move is missed;
	// Shutdown stops watching.
	r.unwatch = append(r.unwatch, r.rt.Watch(r.changed))
	if f := r.fb.Load(); f != nil {
		r.unwatch = append(r.unwatch, f.rt.Watch(r.changed))
	}
	r.serveListener(ln)
	r.log.Info("listening", "addr", r.addr)
	if r.cfg.CloseListenerWhenDown {
		r.wg.Go(r.supervise)
		r.poke()
	}
	return nil
}

// Addr returns the address the route listens on: Config.Addr, with the
// port filled in once Start has bound it.
func (r *Route) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// Listening reports whether the listening socket is open.
func (r *Route) Listening() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ln != nil
}

// Sessions returns the number of open sessions per destination index of
// the routing.Route. Sessions to fallback destinations are not included.
func (r *Route) Sessions() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := make([]int, len(r.dests))
	for i, d := range r.dests {
		n[i] = len(d.sessions)
	}
	return n
}

// FallbackSessions returns the number of open sessions to the fallback
// route's destinations.
func (r *Route) FallbackSessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return count(r.fbDests())
}

// StopAccepting closes the listening socket for good, so that another
// route can bind the address at once; open sessions go on. Shutdown
// calls it first.
func (r *Route) StopAccepting() {
	r.lnMu.Lock()
	defer r.lnMu.Unlock()
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return
	}
	r.stopping = true
	close(r.stop)
	n := r.open()
	r.mu.Unlock()
	r.closeListener()
	r.log.Info("shutting down; draining sessions", "sessions", n)
}

// Shutdown stops accepting clients and waits for open sessions to end.
// When ctx is done it closes the sessions still open and returns ctx's
// error once they are gone. It always returns after every goroutine of
// the Route has ended; it returns nil when the sessions ended by themselves.
func (r *Route) Shutdown(ctx context.Context) error {
	r.StopAccepting()

	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		r.cancel()
		r.stopLoops()
		return nil
	case <-ctx.Done():
	}
	r.cancel() // abort dials in progress
	r.mu.Lock()
	r.closing = true
	n := r.closeOpen(nil)
	r.mu.Unlock()
	for _, l := range r.loops {
		l.post(func(l *loop) { l.closeAll() }) // clients still being connected
	}
	if n > 0 {
		r.log.Warn("drain deadline reached; sessions closed", "sessions", n)
	}
	<-done
	r.stopLoops()
	return ctx.Err()
}

// CloseSessions closes every open session of the route, and the clients
// still being connected, and returns how many sessions it closed; the
// listener stays. The daemon calls it when the route's
// address is a VIP this host has just given up: those sessions cannot go
// on, since the clients' packets now reach the other router.
func (r *Route) CloseSessions() int {
	r.mu.Lock()
	gen := r.gen.Add(1) // clients still being connected are dropped too
	n := r.closeOpen(nil)
	// A dial in progress could take connect_timeout to end: the loops
	// drop those clients now.
	for _, l := range r.loops {
		l.post(func(l *loop) { l.dropConnecting(gen) })
	}
	r.mu.Unlock()
	if n > 0 {
		r.log.Warn("sessions closed", "sessions", n)
	}
	return n
}

// CloseSessionsTo closes the open sessions whose clients connected to
// one of addrs, and returns how many. It is CloseSessions for a route
// bound to all addresses (0.0.0.0, ::) when a VIP goes away: sessions
// that came in through another address go on.
func (r *Route) CloseSessionsTo(addrs []netip.Addr) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	to := func(s *session) bool {
		a, ok := s.localAddr()
		return ok && slices.Contains(addrs, a)
	}
	n := r.closeOpen(to)
	// Clients still being connected, and sessions that opened since,
	// are the loops' to find.
	for _, l := range r.loops {
		l.post(func(l *loop) { l.closeWhere(to) })
	}
	if n > 0 {
		r.log.Warn("sessions closed", "sessions", n, "addresses", addrs)
	}
	return n
}

// stopLoops ends the loops once no session is left, stops watching the
// routing.Routes (a fallback route that outlives this one, when a reload
// replaced only this one, must not keep it alive) and lets go of the
// Route's metric series.
func (r *Route) stopLoops() {
	r.mu.Lock()
	for _, stop := range r.unwatch {
		stop()
	}
	r.unwatch = nil
	r.mu.Unlock()
	if r.redir != nil {
		r.m.counted.track(r, false) // no scrape waits for loops that end
	}
	for _, l := range r.loops {
		l.mu.Lock()
		l.ending = true
		l.mu.Unlock()
		l.post(func(l *loop) { l.closed = true })
	}
	r.loopsWG.Wait()
	if r.redir != nil {
		r.redir.close() // every session has closed: the maps are empty
	}
	r.stopReporter()
	r.releaseMetrics()
}

// open returns the number of open sessions. r.mu must be held.
func (r *Route) open() int { return count(r.allDests()) }

// count returns the number of open sessions to ds. Route.mu must be held.
func count(ds []*dest) int {
	n := 0
	for _, d := range ds {
		n += len(d.sessions)
	}
	return n
}

// serveListener makes ln the route's listener: the loops accept on it.
// r.mu must be held.
func (r *Route) serveListener(ln *listener) {
	r.ln = ln
	for _, l := range r.loops {
		l.post(func(l *loop) { l.addListener(ln) })
	}
}

// closeListener takes the listener from the loops and closes it, so that
// the address is free when it returns. r.lnMu must be held, and not r.mu:
// the loops take r.mu.
func (r *Route) closeListener() {
	r.mu.Lock()
	ln := r.ln
	r.mu.Unlock()
	if ln == nil {
		return
	}
	for _, l := range r.loops {
		l.call(func(l *loop) { l.removeListener(ln) })
	}
	ln.close()
	// Only now: Listening must not say false while a connect could
	// still land in the socket's backlog.
	r.mu.Lock()
	r.ln = nil
	r.mu.Unlock()
}

// changed is the routing.Route watcher: it enforces the one-destination
// rule of read-write routes at once, and tells the listener supervisor.
func (r *Route) changed() {
	if r.rwPrimary {
		r.mu.Lock()
		p := r.rt.Primary()
		if n := r.closeSessions(r.dests, p); n > 0 {
			r.log.Warn("primary moved; sessions to other destinations closed", "primary", p, "closed", n)
		}
		r.mu.Unlock()
	}
	if r.cfg.CloseListenerWhenDown {
		r.poke()
	}
}

func (r *Route) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// supervise closes the listener while no destination is available and
// re-binds it when one is, retrying a failed bind every second.
func (r *Route) supervise() {
	var retry <-chan time.Time
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		case <-retry:
		}
		retry = nil
		if !r.reconcile() {
			retry = time.After(time.Second)
		}
	}
}

// reconcile opens or closes the listener to match rt.Available. It reports
// false when a bind failed.
func (r *Route) reconcile() bool {
	up := r.rt.Available()
	r.lnMu.Lock()
	defer r.lnMu.Unlock()
	r.mu.Lock()
	stopping, listening := r.stopping, r.ln != nil
	r.mu.Unlock()
	switch {
	case stopping:
	case up && !listening:
		ln, err := listenTCP(r.addr)
		if err != nil {
			r.log.Error("destination available but re-binding failed; retrying", "addr", r.addr, "err", err)
			return false
		}
		r.mu.Lock()
		r.serveListener(ln)
		r.mu.Unlock()
		r.log.Info("destination available; listening again", "addr", r.addr)
	case !up && listening:
		r.closeListener()
		r.log.Warn("no destination available; listener closed", "addr", r.addr)
	}
	return true
}
