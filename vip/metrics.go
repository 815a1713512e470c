package vip

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus collectors of every instance in the process,
// labelled by instance name. One Metrics is shared by all instances.
type Metrics struct {
	state         *prometheus.GaugeVec
	priority      *prometheus.GaugeVec
	transitions   *prometheus.CounterVec
	masterChanges *prometheus.CounterVec
	sent          *prometheus.CounterVec
	received      *prometheus.CounterVec
	dropped       *prometheus.CounterVec
}

// NewMetrics creates the hamr_vrrp_* collectors and registers them on reg
// (never the default registry unless the caller passes it). Calling it
// again with the same registry returns collectors bound to the ones
// already registered, so a reload does not fail. A nil reg registers
// nothing.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	inst := []string{"instance"}
	return &Metrics{
		state: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_vrrp_state",
			Help: "VRRP state: 0 init, 1 backup, 2 master, 3 fault.",
		}, inst)),
		priority: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hamr_vrrp_effective_priority",
			Help: "Priority advertised: configured priority plus the weights of unhealthy tracked routes.",
		}, inst)),
		transitions: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_vrrp_transitions_total",
			Help: "VRRP state transitions.",
		}, inst)),
		masterChanges: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_vrrp_master_changes_total",
			Help: "Times the master address seen by this instance changed (itself included).",
		}, inst)),
		sent: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_vrrp_adverts_sent_total",
			Help: "VRRP adverts sent (once per destination group or peer set).",
		}, inst)),
		received: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_vrrp_adverts_received_total",
			Help: "Valid VRRP adverts received for this virtual router.",
		}, inst)),
		dropped: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hamr_vrrp_adverts_dropped_total",
			Help: "VRRP adverts dropped, by reason (ttl, short, version, checksum, count, auth, addresses, own, peer, interval).",
		}, []string{"instance", "reason"})),
	}
}

// register registers c on reg, or returns the collector already
// registered under the same description.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
		// A conflicting collector of another type: keep ours unregistered
		// rather than fail the daemon over metrics.
	}
	return c
}

func stateValue(s State) float64 {
	switch s {
	case StateBackup:
		return 1
	case StateMaster:
		return 2
	case StateFault:
		return 3
	}
	return 0
}
