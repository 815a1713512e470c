package health

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric "reason" label values of hamr_health_checks_total. The set is fixed
// so the number of series stays bounded.
const (
	classOK          = "ok"
	classConfig      = "config"
	classDial        = "dial"
	classLogin       = "login"
	classQuery       = "query"
	classReadOnly    = "read_only"
	classReplication = "replication"
	classLag         = "lag"
	classTimeout     = "timeout"
	classBusy        = "busy"
)

// Metrics holds the health checkers' Prometheus collectors. One Metrics is
// shared by every Checker of a daemon; each Checker writes the series of its
// own route and destination. A nil *Metrics records nothing.
type Metrics struct {
	up          *prometheus.GaugeVec
	role        *prometheus.GaugeVec
	lag         *prometheus.GaugeVec
	checks      *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg. When reg
// already holds collectors of the same names (a reload, or a second call in
// a test), those are used instead, so registering twice never fails. A nil
// reg leaves the collectors unregistered.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	dest := []string{"route", "destination"}
	m := &Metrics{
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_destination_up",
			Help: "Whether the destination is up (1) or down (0) for the route, as decided by health checks.",
		}, dest),
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_destination_role",
			Help: "The destination's role as seen by the last check: 1 for the current role (unknown, primary, replica, read-only).",
		}, []string{"route", "destination", "role"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_destination_replication_lag_seconds",
			Help: "Seconds_Behind_Master of the destination at the last role check; absent when unknown.",
		}, dest),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_health_checks_total",
			Help: "Completed health checks by outcome (ok, or the stage that failed).",
		}, []string{"route", "destination", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hamr_health_check_duration_seconds",
			Help:    "Duration of health checks (dial, handshake and queries).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, dest),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_destination_transitions_total",
			Help: "Up/down transitions of the destination for the route.",
		}, dest),
	}
	if reg == nil {
		return m
	}
	m.up = register(reg, m.up)
	m.role = register(reg, m.role)
	m.lag = register(reg, m.lag)
	m.checks = register(reg, m.checks)
	m.duration = register(reg, m.duration)
	m.transitions = register(reg, m.transitions)
	return m
}

// register registers c on reg, or returns the collector reg already holds
// under the same description.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if old, ok := are.ExistingCollector.(C); ok {
			return old
		}
	}
	// A different collector with a clashing name: keep ours unregistered
	// rather than fail; the daemon's own collectors are the only ones with
	// hamr_ names.
	return c
}

// Delete removes every series of route and destination, for a reload that
// drops the destination.
func (m *Metrics) Delete(route, destination string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"route": route, "destination": destination}
	m.up.Delete(l)
	m.role.DeletePartialMatch(l)
	m.lag.Delete(l)
	m.checks.DeletePartialMatch(l)
	m.duration.Delete(l)
	m.transitions.Delete(l)
}

var roles = []Role{RoleUnknown, RolePrimary, RoleReplica, RoleReadOnly}

func (m *Metrics) setUp(route, dest string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.up.WithLabelValues(route, dest).Set(v)
}

func (m *Metrics) transition(route, dest string) {
	if m == nil {
		return
	}
	m.transitions.WithLabelValues(route, dest).Inc()
}

func (m *Metrics) check(route, dest string, r result, seconds float64) {
	if m == nil {
		return
	}
	m.checks.WithLabelValues(route, dest, r.class).Inc()
	m.duration.WithLabelValues(route, dest).Observe(seconds)
	if r.class == classConfig {
		return
	}
	if r.role != "" {
		for _, x := range roles {
			v := 0.0
			if x == r.role {
				v = 1
			}
			m.role.WithLabelValues(route, dest, string(x)).Set(v)
		}
	}
	if r.lagKnown {
		m.lag.WithLabelValues(route, dest).Set(r.lag.Seconds())
	} else {
		m.lag.DeleteLabelValues(route, dest)
	}
}
