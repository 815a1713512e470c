package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hamr-project/hamr/conf"
	"github.com/hamr-project/hamr/health"
	"github.com/hamr-project/hamr/proxy"
	"github.com/hamr-project/hamr/routing"
	"github.com/hamr-project/hamr/vip"
)

// daemon owns every running part of hamr: routes (routing + proxy + health
// checkers), VRRP instances and the metrics registry. Its methods are the
// operations of the admin API.
type daemon struct {
	log   *slog.Logger
	level *slog.LevelVar
	reg   *prometheus.Registry
	pm    *proxy.Metrics
	hm    *health.Metrics
	vm    *vip.Metrics
	m     *daemonMetrics

	ctx    context.Context // lifetime of the daemon; cancelled by stop
	cancel context.CancelFunc

	threads     int  // [io] threads as at start: the routes' loops
	kernelRelay bool // [io] kernel_relay as at start

	mu     sync.Mutex // serialises start, reload and stop
	cfg    *conf.Config
	routes map[string]*route
	vrrps  map[string]*vrrpInst

	// view is the running routes and VRRP instances as an immutable
	// snapshot, read without mu by route watchers (they run inside health
	// and proxy goroutines that reload may be waiting for) and by the
	// admin API (stop holds mu for the whole drain).
	view atomic.Pointer[view]

	drains    sync.WaitGroup     // routes removed by a reload, still draining
	drainMu   sync.Mutex         // guards draining; not mu, which stop holds while drains end
	draining  []routeView        // those routes, for /status
	cutDrains context.CancelFunc // ends those drains: stop's own drain ended
	drainCtx  context.Context    // cancelled by cutDrains

	admin *endpoint // [admin]; its running state is guarded by mu

	// stopping is set once stop begins: a reload would start what stop
	// stops. Read without mu, which stop holds for the whole drain, so
	// that a reload meanwhile is refused at once rather than after it.
	stopping atomic.Bool

	// live holds the destinations of each route name in use, so that a
	// drained route's metric series are deleted only where no route of the
	// same name took them over (a replaced route keeps counting in the
	// same series).
	liveMu sync.Mutex
	live   map[string][]string

	scripts sync.WaitGroup // stopped VRRP instances finishing their notify scripts
}

// route is one [routing.NAME] section at work.
type route struct {
	name     string // immutable copies of cfg, read by watchers
	readOnly bool
	dests    []string
	rt       *routing.Route
	px       *proxy.Route
	fallback atomic.Pointer[route] // the route rt falls back to, or nil; swapped by a reload
	cfg      *conf.Route           // guarded by daemon.mu

	cancel  context.CancelFunc // stops the checkers and the split-brain watch
	wg      sync.WaitGroup
	removed atomic.Bool // removeRoute ran: routeChanged does nothing
	unwatch func()      // stops watching the fallback route; guarded by daemon.mu

	changeMu sync.Mutex // serialises routeChanged, so that the last call publishes the latest state

	checkMu sync.Mutex // held while checkers are swapped, and by their OnChange

	mu         sync.Mutex
	checkers   []*health.Checker // written under checkMu and mu
	primary    int               // last primary seen by the watcher, for logging moves
	splitBrain bool
}

type vrrpInst struct {
	cfg    *conf.VRRP
	in     *vip.Instance
	cancel context.CancelFunc
}

type daemonMetrics struct {
	reloads        prometheus.Counter
	reloadFailures prometheus.Counter
	primary        *prometheus.GaugeVec
	primaryMoves   *prometheus.CounterVec
	writable       *prometheus.GaugeVec
	splitBrain     *prometheus.CounterVec
}

func newDaemonMetrics(reg prometheus.Registerer) *daemonMetrics {
	m := &daemonMetrics{
		reloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hamr_config_reloads_total", Help: "Configuration reloads that were applied."}),
		reloadFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hamr_config_reload_failures_total", Help: "Configuration reloads rejected (the old configuration kept running), or applied except for what failed to start."}),
		primary: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_route_primary", Help: "1 for the current primary of a read-write route, 0 for its other destinations."},
			[]string{"route", "destination"}),
		primaryMoves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_primary_moves_total", Help: "Times the primary of a route moved (failover or reset)."},
			[]string{"route"}),
		writable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_route_writable_destinations", Help: "Destinations of a read-write route reporting read_only OFF (role checks); above 1 is a split brain."},
			[]string{"route"}),
		splitBrain: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_split_brain_total", Help: "Times more than one destination of a read-write route became writable."},
			[]string{"route"}),
	}
	reg.MustRegister(m.reloads, m.reloadFailures, m.primary, m.primaryMoves, m.writable, m.splitBrain)
	return m
}

func newDaemon(log *slog.Logger, level *slog.LevelVar) *daemon {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx, cancel := context.WithCancel(context.Background())
	drainCtx, cutDrains := context.WithCancel(context.Background())
	d := &daemon{
		log:       log,
		level:     level,
		reg:       reg,
		pm:        proxy.NewMetrics(reg),
		hm:        health.NewMetrics(reg),
		vm:        vip.NewMetrics(reg),
		m:         newDaemonMetrics(reg),
		ctx:       ctx,
		cancel:    cancel,
		drainCtx:  drainCtx,
		cutDrains: cutDrains,
		routes:    make(map[string]*route),
		vrrps:     make(map[string]*vrrpInst),
		live:      make(map[string][]string),
	}
	d.admin = &endpoint{log: log, handler: d.adminHandler}
	d.view.Store(&view{})
	return d
}

// start brings up everything cfg describes, the admin endpoint included.
// What cannot start (a token file, the admin address, a route's port)
// fails it before any VRRP instance starts, so that a host that cannot
// serve never takes the VIP; whatever was started is stopped again at
// once.
func (d *daemon) start(cfg *conf.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	ac, err := d.admin.prepare(cfg.Admin)
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	if err := d.apply(cfg); err != nil {
		if ac.ln != nil {
			ac.ln.Close()
		}
		gone, cancel := context.WithCancel(context.Background())
		cancel() // nothing was ready: no drain
		d.stopLocked(gone)
		return err
	}
	d.admin.commit(ac)
	return nil
}

// partialReload is a reload that passed its checks and was applied, but
// for what still failed to start (a route's port taken in between, a
// VRRP interface removed): the new configuration runs without those.
type partialReload struct{ err error }

func (e *partialReload) Error() string { return e.err.Error() }
func (e *partialReload) Unwrap() error { return e.err }

// errShuttingDown rejects a reload that comes while hamr stops.
var errShuttingDown = errors.New("hamr is shutting down")

// stopAdmin stops the admin endpoint, letting requests finish until ctx
// ends.
func (d *daemon) stopAdmin(ctx context.Context) {
	d.mu.Lock()
	srv := d.admin.srv
	d.admin.srv = nil
	d.mu.Unlock()
	d.admin.close(ctx, srv)
}

// reload reads the configuration file again and applies the difference.
// An invalid file changes nothing.
func (d *daemon) reload() error {
	if d.stopping.Load() {
		return errShuttingDown
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping.Load() {
		return errShuttingDown
	}
	reject := func(err error) error {
		d.m.reloadFailures.Inc()
		d.log.Error("reload rejected; the running configuration is kept", "file", d.cfg.File, "err", err)
		return err
	}
	cfg, err := conf.Load(d.cfg.File)
	if err != nil {
		return reject(err)
	}
	// What would fail to start is checked first: a port or an address in
	// use, a VRRP interface that is missing or has no IPv4 address, or an
	// unreadable token file rejects the reload before anything changed.
	if err := d.preflight(cfg); err != nil {
		return reject(err)
	}
	ac, err := d.admin.prepare(cfg.Admin)
	if err != nil {
		return reject(err)
	}
	err = d.apply(cfg)
	d.admin.commit(ac) // apply's errors are routes that failed; the rest, [admin] too, applies
	if err != nil {
		d.m.reloadFailures.Inc()
		d.log.Error("reload applied in part: what failed is not running", "err", err)
		return &partialReload{err}
	}
	d.m.reloads.Inc()
	d.log.Info("configuration reloaded", "file", cfg.File, "routes", len(cfg.Routes), "vrrp", len(cfg.VRRP))
	return nil
}

// preflight checks that what a reload to cfg starts can start, so that
// it does not stop a route or a VRRP instance that could not come back.
// It tries the address of each route that shares its port with no
// running route; on a port a running route holds (kept by the reload, or
// freed before the new route binds) it looks for another process's
// listener in the way instead. It checks each VRRP instance that is new
// or changed against the host.
func (d *daemon) preflight(cfg *conf.Config) error {
	var errs []error
	for _, rc := range cfg.Routes {
		var ours []string
		for _, r := range d.routes {
			if r.cfg.SharesPort(rc) {
				ours = append(ours, r.px.Addr())
			}
		}
		check := proxy.CheckListen
		if len(ours) > 0 {
			check = func(addr string) error { return proxy.CheckListenBeside(addr, ours) }
		}
		if err := check(rc.Addr()); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", rc.Name, err))
		}
	}
	for _, vc := range cfg.VRRP {
		if v, ok := d.vrrps[vc.Name]; ok && reflect.DeepEqual(v.cfg, vc) {
			continue
		}
		if err := vip.Check(vc); err != nil {
			errs = append(errs, privileges(err))
		}
	}
	return errors.Join(errs...)
}

// apply moves the running state to cfg: removed routes drain, changed ones
// are replaced, unchanged ones keep their sessions and sticky primary.
// d.mu must be held.
func (d *daemon) apply(cfg *conf.Config) error {
	d.level.Set(logLevel(cfg.Logger.Level))
	if d.cfg == nil {
		d.threads, d.kernelRelay = cfg.IO.Threads, cfg.IO.KernelRelay
	} else {
		// Routes would otherwise run differently depending on whether a
		// reload replaced them.
		if cfg.IO.Threads != d.threads {
			d.log.Warn("[io] threads changed: it takes effect when hamr restarts", "running", d.threads, "file", cfg.IO.Threads)
		}
		if cfg.IO.KernelRelay != d.kernelRelay {
			d.log.Warn("[io] kernel_relay changed: it takes effect when hamr restarts", "running", d.kernelRelay, "file", cfg.IO.KernelRelay)
		}
	}

	want := make(map[string]*conf.Route, len(cfg.Routes))
	for _, rc := range cfg.Routes {
		want[rc.Name] = rc
	}
	// A route is kept when its settings (health aside) are the same. One
	// whose fallback is replaced is kept too, and re-pointed below.
	keep := make(map[string]bool)
	for name, r := range d.routes {
		if rc, ok := want[name]; ok && sameRoute(r.cfg, rc) {
			keep[name] = true
		}
	}

	// Stop what goes away first, so that a replaced route can bind its port.
	prev := make(map[string]*route) // replaced routes, by name
	for _, name := range slices.Sorted(maps.Keys(d.routes)) {
		if !keep[name] {
			r, replaced := d.routes[name], false
			if _, ok := want[name]; ok {
				prev[name], replaced = r, true
			}
			d.removeRoute(name, cfg.Global.DrainTimeout) // the new file's, as for everything it says
			if replaced {
				r.wg.Wait() // its checkers are done: the state the successor inherits is final
			}
		}
	}
	// Read-write routes first: read-only ones may fall back to them.
	order := slices.Clone(cfg.Routes)
	slices.SortStableFunc(order, func(a, b *conf.Route) int {
		return boolInt(a.Fallback != "") - boolInt(b.Fallback != "")
	})
	var errs []error
	var added []*route
	starting := d.cfg == nil
	for _, rc := range order {
		if r, ok := d.routes[rc.Name]; ok {
			if !reflect.DeepEqual(r.cfg.Health, rc.Health) {
				d.restartChecks(r, rc)
			}
			if rc.Fallback != "" {
				if fb, ok := d.routes[rc.Fallback]; !ok {
					d.dropFallback(r, rc.Fallback)
				} else if r.fallback.Load() != fb {
					d.repointFallback(r, fb)
				}
			}
			continue
		}
		if err := d.addRoute(rc, prev[rc.Name]); err != nil {
			errs = append(errs, err)
			continue
		}
		added = append(added, d.routes[rc.Name])
	}
	// The routes that run now answer /status, reset-primary and a VIP's
	// release while the first checks are awaited.
	d.publishView(cfg)
	// VRRP tracks what the checks found, not a new route's optimistic
	// "every destination up": a host whose database does not answer
	// must not take the VIP in the meantime. A start that failed waits
	// for nothing: it stops.
	if !starting || len(errs) == 0 {
		d.awaitFirstChecks(added)
	}

	wantV := make(map[string]*conf.VRRP, len(cfg.VRRP))
	for _, vc := range cfg.VRRP {
		wantV[vc.Name] = vc
	}
	stopped := make(map[string]*vip.Instance) // by name: a restart's scripts follow the old ones'
	for name, v := range d.vrrps {
		if vc, ok := wantV[name]; !ok || !reflect.DeepEqual(v.cfg, vc) {
			stopped[name] = v.in
			d.stopVRRP(name)
		}
	}
	for _, vc := range cfg.VRRP {
		if _, ok := d.vrrps[vc.Name]; ok {
			continue
		}
		if starting && len(errs) > 0 {
			break // hamr will not start: no VIP, no notify scripts
		}
		var after <-chan struct{}
		if old := stopped[vc.Name]; old != nil {
			after = old.Done()
		}
		if err := d.startVRRP(vc, after); err != nil {
			errs = append(errs, err)
		}
	}
	d.publishView(cfg)
	// New instances, and instances tracking a replaced route (which starts
	// with every destination up), learn what holds now.
	for _, v := range d.vrrps {
		for name := range v.cfg.TrackRoutes {
			if r, ok := d.routes[name]; ok {
				r.changeMu.Lock() // in order with routeChanged's publications
				v.in.SetRouteHealthy(name, r.rt.Available())
				r.changeMu.Unlock()
			}
		}
	}
	d.cfg = cfg
	return errors.Join(errs...)
}

// sameRoute reports whether two route sections differ only in health
// settings, which can change without touching sessions.
func sameRoute(a, b *conf.Route) bool {
	x, y := *a, *b
	x.Health, y.Health = conf.Health{}, conf.Health{}
	return reflect.DeepEqual(x, y)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// addRoute starts the route rc; prev is the route of that name a reload
// replaced, or nil. A replacement keeps prev's view of the destinations
// both list, its primary among them: a reload never moves writes.
func (d *daemon) addRoute(rc *conf.Route, prev *route) error {
	r := &route{name: rc.Name, readOnly: rc.Mode == conf.ModeReadOnly, dests: rc.Destinations, cfg: rc}
	var fallback *routing.Route
	if rc.Fallback != "" {
		fb, ok := d.routes[rc.Fallback]
		if !ok {
			return fmt.Errorf("route %s: fallback route %s is not running", rc.Name, rc.Fallback)
		}
		r.fallback.Store(fb)
		fallback = fb.rt
	}
	rt, err := routing.New(rc.Name, routing.Strategy(rc.Strategy), rc.Destinations, fallback)
	if err != nil {
		return err
	}
	if prev != nil {
		rt.Inherit(prev.rt)
	}
	r.rt, r.primary = rt, rt.Primary()
	d.liveMu.Lock()
	d.live[rc.Name] = rc.Destinations // before proxy.New creates the metric series
	d.liveMu.Unlock()
	r.px = proxy.New(proxy.Config{
		Name:                  rc.Name,
		Addr:                  rc.Addr(),
		ReadWrite:             rc.Mode == conf.ModeReadWrite,
		ConnectTimeout:        rc.ConnectTimeout,
		MaxConnections:        rc.MaxConnections,
		CloseListenerWhenDown: rc.CloseListenerWhenDown,
		Loops:                 d.threads,
		KernelRelay:           d.kernelRelay,
	}, rt, proxy.Options{
		Logger:      d.log,
		Metrics:     d.pm,
		OnDialError: r.dialFailed,
	})
	rt.Watch(func() { d.routeChanged(r) })
	if fb := r.fallback.Load(); fb != nil {
		d.watchFallback(r, fb)
	}
	if err := r.px.Start(); err != nil {
		d.liveMu.Lock()
		delete(d.live, rc.Name)
		d.liveMu.Unlock()
		r.px.Shutdown(context.Background()) // lets go of its metric series; nothing runs
		r.removed.Store(true)               // its watchers must not speak for the name
		r.unwatchFallback()
		return fmt.Errorf("route %s: %w", rc.Name, err)
	}
	var checked []string
	if prev != nil {
		checked = prev.dests // a replacement's checks go on from the state it inherited
	}
	d.startChecks(r, rc, checked)
	if !r.readOnly {
		// Routes of this name still draining (replaced now, or removed
		// by an earlier reload) keep no sessions beside the new primary.
		d.closeOffPrimary(r)
	}
	d.routes[rc.Name] = r
	d.publishPrimary(r)
	d.log.Info("route started", "route", rc.Name, "bind", rc.Addr(), "mode", rc.Mode,
		"strategy", rc.Strategy, "destinations", rc.Destinations)
	return nil
}

// startChecks starts one health checker per destination of r. The
// destinations in resume have been checked before (a reload that changed
// only health settings, or replaced the route): their checkers carry on
// from the route's state with its hysteresis, rather than letting their
// first check decide.
func (d *daemon) startChecks(r *route, rc *conf.Route, resume []string) {
	ctx, cancel := context.WithCancel(d.ctx)
	r.cancel = cancel
	// New checkers start from what the route holds now: every destination
	// up on a new route, the last known state after a reload. Reading it
	// and installing them under checkMu, which each OnChange holds, means
	// that a transition of a checker being replaced (a passive mark from
	// a failed dial) lands before the snapshot or not at all.
	r.checkMu.Lock()
	state := r.rt.State()
	checkers := make([]*health.Checker, len(rc.Destinations))
	for i, addr := range rc.Destinations {
		var c *health.Checker
		c = health.NewChecker(health.Config{
			Addr:     addr,
			Level:    rc.Health.Level,
			User:     rc.Health.User,
			Password: rc.Health.Password,
			Interval: rc.Health.Interval,
			Timeout:  rc.Health.Timeout,
			Rise:     rc.Health.Rise,
			Fall:     rc.Health.Fall,
			Writer:   rc.Mode == conf.ModeReadWrite,
			MaxLag:   rc.MaxReplicationLag,
		}, health.Options{
			Logger:    d.log,
			Metrics:   d.hm,
			Route:     rc.Name,
			StartDown: !state[i].Up,
			Resume:    slices.Contains(resume, addr),
			OnChange: func(up bool, _ health.Status) {
				r.checkMu.Lock()
				defer r.checkMu.Unlock()
				if r.checkers[i] == c {
					r.rt.SetUp(i, up)
				}
			},
		})
		checkers[i] = c
	}
	r.mu.Lock()
	r.checkers = checkers
	r.mu.Unlock()
	r.checkMu.Unlock()
	for _, c := range checkers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			c.Run(ctx)
		}()
	}
	if rc.Mode == conf.ModeReadWrite && rc.Health.Level == conf.LevelRole {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			d.watchWriters(ctx, r, checkers, rc.Health.Interval)
		}()
	} else {
		// No role checks (any more, after a reload): nothing to say about
		// writable destinations, and no split brain to keep alerting on.
		d.m.writable.DeleteLabelValues(rc.Name)
		r.mu.Lock()
		r.splitBrain = false
		r.mu.Unlock()
	}
}

// restartChecks replaces r's checkers after a reload changed only its
// health settings; sessions and the primary stay.
func (d *daemon) restartChecks(r *route, rc *conf.Route) {
	r.cancel()
	r.wg.Wait()
	r.cfg = rc
	d.startChecks(r, rc, rc.Destinations)
	d.log.Info("route health settings changed", "route", rc.Name, "level", rc.Health.Level)
}

// removeRoute stops r's listener and checkers and lets its sessions drain
// in the background, up to the drain timeout.
func (d *daemon) removeRoute(name string, timeout time.Duration) {
	r := d.routes[name]
	delete(d.routes, name)
	r.removed.Store(true)
	r.unwatchFallback() // the fallback may stay: it must not keep r alive
	r.cancel()
	r.px.StopAccepting() // now, so that a replacement can bind the port
	d.liveMu.Lock()
	delete(d.live, name)
	d.liveMu.Unlock()
	d.drains.Add(1)
	rv := routeView{r: r, cfg: r.cfg}
	d.drainMu.Lock()
	d.draining = append(d.draining, rv)
	d.drainMu.Unlock()
	go func() {
		defer d.drains.Done()
		defer func() {
			d.drainMu.Lock()
			d.draining = slices.DeleteFunc(d.draining, func(o routeView) bool { return o.r == r })
			d.drainMu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(d.drainCtx, timeout)
		defer cancel()
		if err := r.px.Shutdown(ctx); err != nil {
			d.log.Warn("route drained with sessions cut", "route", name, "err", err)
		}
		r.wg.Wait()
		// The proxy's series went with Shutdown (those a successor of the
		// same name uses stay); the daemon's own follow the same rule.
		d.liveMu.Lock()
		successor, replaced := d.live[name]
		if !replaced {
			d.m.writable.DeleteLabelValues(name)
		}
		for _, addr := range r.dests {
			if !slices.Contains(successor, addr) {
				d.hm.Delete(name, addr)
				d.m.primary.DeleteLabelValues(name, addr)
			}
		}
		d.liveMu.Unlock()
		d.log.Info("route removed", "route", name)
	}()
}

// unwatchFallback stops r following its fallback route's changes, if it
// does. daemon.mu must be held.
func (r *route) unwatchFallback() {
	if r.unwatch != nil {
		r.unwatch()
		r.unwatch = nil
	}
}

// watchFallback makes r follow fb's changes, in place of the route it
// followed before: r's availability depends on its fallback's primary.
// d.mu must be held.
func (d *daemon) watchFallback(r, fb *route) {
	r.unwatchFallback()
	r.unwatch = fb.rt.Watch(func() { d.routeChanged(r) })
}

// repointFallback makes a kept route fall back to fb, the route a reload
// put in place of its fallback: its sessions, listener and rotation stay.
// SetFallback tells r's watchers (the proxy's, routeChanged).
func (d *daemon) repointFallback(r, fb *route) {
	if err := r.rt.SetFallback(fb.rt); err != nil {
		d.log.Error("route cannot fall back to the new route", "route", r.name, "fallback", fb.name, "err", err)
		return
	}
	r.fallback.Store(fb)
	d.watchFallback(r, fb)
	r.px.FallbackChanged()
	d.log.Info("route kept; it falls back to the new route", "route", r.name, "fallback", fb.name)
}

// awaitFirstChecks waits until every destination of routes has had its
// first health check, for at most the longest check timeout and a little.
// d.mu must be held.
func (d *daemon) awaitFirstChecks(routes []*route) {
	var checkers []*health.Checker
	wait := time.Duration(0)
	for _, r := range routes {
		r.mu.Lock()
		checkers = append(checkers, r.checkers...)
		r.mu.Unlock()
		wait = max(wait, r.cfg.Health.Timeout)
	}
	for deadline := time.Now().Add(wait + 500*time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !slices.ContainsFunc(checkers, func(c *health.Checker) bool { return c.Status().Checked.IsZero() }) {
			return
		}
	}
}

// closeOffPrimary closes the draining sessions of the read-write routes
// that r replaced (this reload's and earlier ones'), unless they are on
// r's primary: a read-write route has open sessions to one destination
// only, also across reloads (when its old primary left the list, say).
func (d *daemon) closeOffPrimary(r *route) {
	cur := ""
	if p := r.rt.Primary(); p >= 0 {
		cur = r.dests[p]
	}
	d.drainMu.Lock()
	draining := slices.Clone(d.draining)
	d.drainMu.Unlock()
	for _, rv := range draining {
		old := rv.r
		if old.name != r.name || old.readOnly {
			continue
		}
		p := old.rt.Primary()
		if p < 0 || old.dests[p] == cur {
			continue
		}
		if n := old.px.CloseSessions(); n > 0 {
			d.log.Warn("route replaced: its draining sessions to the old primary closed", "route", r.name,
				"old_primary", old.dests[p], "sessions", n)
		}
	}
}

// dropFallback leaves a kept route without a fallback: the route it fell
// back to was removed and its replacement, name, did not start. Rather
// than falling back to the removed route's last state, which no checker
// updates any more, r serves its own destinations only until a reload
// starts name. d.mu must be held.
func (d *daemon) dropFallback(r *route, name string) {
	if r.fallback.Load() == nil {
		return
	}
	if err := r.rt.SetFallback(nil); err != nil {
		d.log.Error("route cannot drop its fallback", "route", r.name, "err", err)
		return
	}
	r.fallback.Store(nil)
	r.unwatchFallback()
	r.px.FallbackChanged()
	d.log.Error("route has no fallback until its fallback route starts", "route", r.name, "fallback", name)
}

// dialFailed passes a failed dial seen by the proxy to the checker of that
// destination, which keeps it down until it passes rise checks.
func (r *route) dialFailed(p routing.Pick, err error) {
	owner := r
	if p.Route != r.rt {
		owner = r.fallback.Load()
		if owner == nil || p.Route != owner.rt {
			return // a fallback a reload has replaced: its checkers are gone
		}
	}
	owner.mu.Lock()
	var c *health.Checker
	if p.Index < len(owner.checkers) {
		c = owner.checkers[p.Index]
	}
	owner.mu.Unlock()
	if c != nil {
		c.Fail(err)
	}
}

// routeChanged runs after every state change of a route, or of the route
// it falls back to: it logs and counts primary moves and updates VRRP
// tracking.
func (d *daemon) routeChanged(r *route) {
	// Watchers may run concurrently: without this, an older call could
	// publish its state after a newer one.
	r.changeMu.Lock()
	defer r.changeMu.Unlock()
	if r.removed.Load() {
		// A route draining after a reload may still change (a dial of a
		// client being connected fails): its name, metrics and VRRP
		// tracking belong to the route that replaced it, if any.
		return
	}
	p := r.rt.Primary()
	r.mu.Lock()
	old := r.primary
	r.primary = p
	r.mu.Unlock()
	if old != p && !r.readOnly {
		dests := r.dests
		from, to := "none", "none"
		if old >= 0 {
			from = dests[old]
		}
		if p >= 0 {
			to = dests[p]
		}
		if p < 0 {
			d.log.Error("route has no primary: no destination is up", "route", r.name, "from", from)
		} else {
			d.log.Warn("primary moved", "route", r.name, "from", from, "to", to)
		}
		d.m.primaryMoves.WithLabelValues(r.name).Inc()
		d.publishPrimary(r)
		d.closeOffPrimary(r) // routes a reload replaced still drain to the old one
	}
	healthy := r.rt.Available()
	for _, v := range d.view.Load().vrrps {
		if _, ok := v.cfg.TrackRoutes[r.name]; ok {
			v.in.SetRouteHealthy(r.name, healthy)
		}
	}
}

func (d *daemon) publishPrimary(r *route) {
	if r.readOnly {
		return
	}
	p := r.rt.Primary()
	for i, addr := range r.dests {
		v := 0.0
		if i == p {
			v = 1
		}
		d.m.primary.WithLabelValues(r.name, addr).Set(v)
	}
}

// watchWriters notices a split brain on the database side: two writable
// destinations in one read-write route. It logs and counts it; the primary
// stays where it is, so the router does not flap between writers.
func (d *daemon) watchWriters(ctx context.Context, r *route, checkers []*health.Checker, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var writers []string
		for i, c := range checkers {
			if st := c.Status(); st.Up && !st.ReadOnly && st.Role == health.RolePrimary {
				writers = append(writers, r.dests[i])
			}
		}
		d.m.writable.WithLabelValues(r.name).Set(float64(len(writers)))
		split := len(writers) > 1
		r.mu.Lock()
		was := r.splitBrain
		r.splitBrain = split
		r.mu.Unlock()
		if split && !was {
			d.m.splitBrain.WithLabelValues(r.name).Inc()
			d.log.Error("split brain: more than one writable destination; the primary stays where it is",
				"route", r.name, "writable", writers, "primary", r.dests[max(r.rt.Primary(), 0)])
		} else if !split && was {
			d.log.Info("split brain over: one writable destination", "route", r.name, "writable", writers)
		}
	}
}

// startVRRP starts the instance vc. after, if not nil, is closed once the
// instance of that name that this one replaces has run its last notify
// script: the new one's scripts wait for it, so that they run in the
// order of the transitions.
func (d *daemon) startVRRP(vc *conf.VRRP, after <-chan struct{}) error {
	in, err := vip.New(vc, vip.Options{Logger: d.log, Metrics: d.vm, OnLeaveMaster: func(bool) { d.releasedVIPs(vc) }, NotifyAfter: after})
	if err != nil {
		return privileges(err)
	}
	// Started here, not on a goroutine, so that what fails (the
	// interface went away since preflight) fails this start or reload
	// with the rest running, not the daemon later.
	ctx, cancel := context.WithCancel(d.ctx)
	if err := in.Start(ctx); err != nil {
		cancel()
		return privileges(err)
	}
	v := &vrrpInst{cfg: vc, in: in, cancel: cancel}
	d.vrrps[vc.Name] = v
	return nil
}

// privileges says what a VRRP instance lacks when err is a permission
// error.
func privileges(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w (VRRP needs CAP_NET_RAW and CAP_NET_ADMIN, or root)", err)
	}
	return err
}

// releasedVIPs closes the sessions of routes bound to a VIP of vc, which
// this host no longer holds: they cannot go on (the clients' packets now
// reach the other router), and would otherwise linger until TCP keepalive
// gives up, or hold a graceful stop for the whole drain timeout.
func (d *daemon) releasedVIPs(vc *conf.VRRP) {
	routes := d.view.Load().routes
	d.drainMu.Lock()
	routes = append(slices.Clip(routes), d.draining...) // a reload's leftovers too
	d.drainMu.Unlock()
	var vips []netip.Addr
	for _, p := range vc.VirtualIPAddress {
		vips = append(vips, p.Addr())
	}
	for _, rv := range routes {
		r := rv.r
		n := 0
		switch bindsVIP(rv.cfg, vips) {
		case bindVIP:
			n = r.px.CloseSessions()
		case bindAll:
			n = r.px.CloseSessionsTo(vips) // its other clients stay
		}
		if n > 0 {
			d.log.Warn("VIP released: sessions through it closed", "vrrp", vc.Name, "route", r.name, "sessions", n)
		}
	}
}

// How a route's listener relates to a set of VIPs.
const (
	bindOther = iota // another address: no client comes through the VIPs
	bindVIP          // one of the VIPs: every client does
	bindAll          // all addresses (0.0.0.0, ::): some clients may
)

func bindsVIP(rc *conf.Route, vips []netip.Addr) int {
	a, err := netip.ParseAddr(rc.BindAddress)
	switch {
	case err != nil:
		return bindOther
	case a.IsUnspecified():
		return bindAll
	case slices.Contains(vips, a.Unmap()):
		return bindVIP
	}
	return bindOther
}

// stopVRRP resigns an instance (priority 0 advert, VIPs removed) and
// waits for that. Its notify scripts (notify_stop, and any still queued)
// finish in the background: a slow script must hold neither a reload
// nor the stop's drain; stop waits for them last.
func (d *daemon) stopVRRP(name string) {
	v := d.vrrps[name]
	delete(d.vrrps, name)
	v.cancel()
	<-v.in.Resigned()
	d.scripts.Go(v.in.Wait)
}

// view is the running configuration: routes and VRRP instances in the
// file's order, with the sections they run. apply publishes it. A part
// that stop stopped stays in the last view and reports itself stopped
// (a route not listening, its sessions draining).
type view struct {
	file   string
	routes []routeView
	vrrps  []*vrrpInst
}

type routeView struct {
	r   *route
	cfg *conf.Route
}

// publishView publishes the view of cfg. d.mu must be held.
func (d *daemon) publishView(cfg *conf.Config) {
	v := &view{file: cfg.File}
	for _, rc := range cfg.Routes {
		if r, ok := d.routes[rc.Name]; ok {
			v.routes = append(v.routes, routeView{r: r, cfg: rc})
		}
	}
	for _, vc := range cfg.VRRP {
		if in, ok := d.vrrps[vc.Name]; ok {
			v.vrrps = append(v.vrrps, in)
		}
	}
	d.view.Store(v)
}

// stop shuts everything down in stages: VRRP resigns first so the peer
// takes the VIP at once, then listeners close and sessions drain until ctx
// is done, then checkers stop.
func (d *daemon) stop(ctx context.Context) {
	d.stopping.Store(true)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked(ctx)
}

func (d *daemon) stopLocked(ctx context.Context) {
	d.stopping.Store(true)
	// Routes removed by a reload drain no longer than the stop does.
	defer context.AfterFunc(ctx, d.cutDrains)()
	// Sessions through a VIP this host gives up cannot finish: the
	// clients' packets now reach the other router. Resigning closes those
	// open or being connected (releasedVIPs); a cancelled drain also ends
	// those accepted later from the listen backlog, rather than waiting
	// out the drain timeout for them.
	var released []netip.Addr
	for _, v := range d.vrrps {
		v.cancel() // every instance resigns at once
	}
	for name, v := range d.vrrps {
		for _, p := range v.cfg.VirtualIPAddress {
			released = append(released, p.Addr())
		}
		d.stopVRRP(name)
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	var wg sync.WaitGroup
	for _, r := range d.routes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctx
			if bindsVIP(r.cfg, released) == bindVIP {
				ctx = gone
			}
			if err := r.px.Shutdown(ctx); err != nil {
				d.log.Warn("drain deadline reached; remaining sessions closed", "route", r.name, "err", err)
			}
		}()
	}
	wg.Wait()
	d.cancel()
	for _, r := range d.routes {
		r.wg.Wait()
	}
	d.drains.Wait()
	d.scripts.Wait()
}
