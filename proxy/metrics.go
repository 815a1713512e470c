package proxy

import (
	"errors"
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Metrics holds the proxy's Prometheus collectors. One Metrics serves every
// route of a daemon; series are labelled by route and destination.
type Metrics struct {
	active   *prometheus.GaugeVec
	total    *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	counted  *countedVec // bytes as registered
	dialErrs *prometheus.CounterVec
	refusals *prometheus.CounterVec
	kernel   *prometheus.CounterVec

	// A series lives while some Route uses it: a route a reload replaced
	// and its successor (same name) share series, and the last one to
	// let go deletes them.
	mu        sync.Mutex
	destRefs  map[[2]string]int // by route name and destination
	routeRefs map[string]int    // by route name: the refusal series
}

// NewMetrics creates the proxy's collectors and registers them on reg. A
// collector already registered on reg (a second NewMetrics on the same
// registry) is reused rather than an error. reg may be nil: the collectors
// then work but are exported nowhere.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	dest := []string{"route", "destination"}
	m := &Metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_route_sessions_active",
			Help: "Sessions open between clients and a destination.",
		}, dest),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_sessions_total",
			Help: "Sessions established to a destination.",
		}, dest),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_bytes_total",
			Help: "Bytes relayed, added as they are relayed.",
		}, []string{"route", "destination", "direction"}),
		dialErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_dial_errors_total",
			Help: "Failed dials to a destination (each marks it down).",
		}, dest),
		kernel: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_kernel_sessions_total",
			Help: "Sessions handed to the kernel to relay (sockmap).",
		}, dest),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_route_refusals_total",
			Help: "Clients refused with a MySQL error packet, by reason.",
		}, []string{"route", "reason"}),
		destRefs:  make(map[[2]string]int),
		routeRefs: make(map[string]int),
	}
	m.counted = &countedVec{CounterVec: m.bytes}
	if reg != nil {
		m.active = register(reg, m.active)
		m.total = register(reg, m.total)
		m.counted = register(reg, m.counted)
		m.bytes = m.counted.CounterVec
		m.dialErrs = register(reg, m.dialErrs)
		m.refusals = register(reg, m.refusals)
		m.kernel = register(reg, m.kernel)
	}
	return m
}

// countedVec is hamr_route_bytes_total as registered: before each
// scrape, it has the Routes with a kernel relay that count into it count
// what the kernel relayed for their sessions since the last count (their
// loops only see a session's bytes when it ends). Metrics sharing a
// registry share it, and so its Routes.
type countedVec struct {
	*prometheus.CounterVec
	mu     sync.Mutex
	routes map[*Route]struct{}
}

// track adds r to the Routes a scrape counts, or removes it.
func (v *countedVec) track(r *Route, on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !on {
		delete(v.routes, r)
		return
	}
	if v.routes == nil {
		v.routes = make(map[*Route]struct{})
	}
	v.routes[r] = struct{}{}
}

func (v *countedVec) Collect(ch chan<- prometheus.Metric) {
	v.mu.Lock()
	var loops []*loop
	for r := range v.routes {
		loops = append(loops, r.loops...)
	}
	v.mu.Unlock()
	countKernelSessions(loops)
	v.CounterVec.Collect(ch)
}

// register registers c on reg, or returns the equal collector already there.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old
		}
	}
	// Any other error means a different collector with the same name:
	// keep ours working, unexported, rather than panic.
	return c
}

// acquireRoute and releaseRoute count the Routes of one name, for the
// series of the route as a whole.
func (m *Metrics) acquireRoute(route string) {
	m.mu.Lock()
	m.routeRefs[route]++
	m.mu.Unlock()
}

func (m *Metrics) releaseRoute(route string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.routeRefs[route]--; m.routeRefs[route] > 0 {
		return
	}
	delete(m.routeRefs, route)
	m.refusals.DeletePartialMatch(prometheus.Labels{"route": route})
}

// release lets go of d, taken by dest for route; the last release of a
// destination deletes its series.
func (m *Metrics) release(route string, d *dest) {
	k := [2]string{route, d.addr}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destRefs[k]--; m.destRefs[k] > 0 {
		return
	}
	delete(m.destRefs, k)
	l := prometheus.Labels{"route": route, "destination": d.addr}
	m.active.Delete(l)
	m.total.Delete(l)
	m.dialErrs.Delete(l)
	m.kernel.Delete(l)
	m.bytes.DeletePartialMatch(l)
}

// Refusal reasons (label values of hamr_route_refusals_total).
const (
	reasonMaxConns = "max_connections"
	reasonNoDest   = "no_destination"
	reasonLocal    = "local_resources"
)

// dest is one destination as the proxy sees it: its sessions and its
// metric children, resolved once so the session path does no label lookups.
type dest struct {
	addr     string
	sessions map[*session]struct{} // guarded by Route.mu

	// An IP destination is dialed by the loops themselves; raw is empty
	// for a hostname.
	raw    rawSockaddr
	family int
	tcp    *net.TCPAddr // for errors

	active   prometheus.Gauge
	total    prometheus.Counter
	c2s, s2c prometheus.Counter
	dialErrs prometheus.Counter
	kernel   prometheus.Counter
}

func (m *Metrics) dest(route, addr string) *dest {
	m.mu.Lock()
	m.destRefs[[2]string{route, addr}]++
	m.mu.Unlock()
	d := &dest{
		addr:     addr,
		sessions: make(map[*session]struct{}),
		active:   m.active.WithLabelValues(route, addr),
		total:    m.total.WithLabelValues(route, addr),
		c2s:      m.bytes.WithLabelValues(route, addr, "client_to_server"),
		s2c:      m.bytes.WithLabelValues(route, addr, "server_to_client"),
		dialErrs: m.dialErrs.WithLabelValues(route, addr),
		kernel:   m.kernel.WithLabelValues(route, addr),
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		var sa unix.Sockaddr
		sa, d.family = sockaddr(ap)
		d.raw = toRawSockaddr(sa)
		d.tcp = net.TCPAddrFromAddrPort(ap)
	}
	return d
}
