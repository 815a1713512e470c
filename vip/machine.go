package vip

import (
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// State is the state of a VRRP instance.
type State int

// States of RFC 5798 section 6.4, plus Fault (keepalived's: a tracked
// interface or route is down) and Stopped (after the instance has resigned).
const (
	StateInit State = iota
	StateBackup
	StateMaster
	StateFault
	StateStopped
)

func (s State) String() string {
	switch s {
	case StateInit:
		return "INIT"
	case StateBackup:
		return "BACKUP"
	case StateMaster:
		return "MASTER"
	case StateFault:
		return "FAULT"
	case StateStopped:
		return "STOPPED"
	}
	return "UNKNOWN"
}

// transport is what the state machine needs from the network.
type transport interface {
	// Send sends one advert to the group or to every unicast peer.
	Send(a *Advert) error
	// GARP sends a burst of gratuitous ARP for the virtual addresses.
	GARP()
}

// clock tells the time. Instants are compared with the monotonic reading
// time.Now carries, so wall-clock jumps do not move timers.
type clock interface {
	Now() time.Time
}

// machineConfig is the part of conf.VRRP the state machine uses.
type machineConfig struct {
	vrid         uint8
	version      int
	interval     time.Duration // our Advertisement_Interval
	preempt      bool
	preemptDelay time.Duration
	vips         []netip.Addr // sorted
	self         netip.Addr   // primary address: source of our adverts
	peers        []netip.Addr // unicast_peers: adverts from anyone else are dropped; empty = multicast
	authType     uint8
	auth         [8]byte
	garpDelay    time.Duration // second GARP burst; 0 = none
	garpRefresh  time.Duration // periodic GARP while master; 0 = off
}

// machine is the VRRP state machine of one instance. It is not safe for
// concurrent use: the Instance drives it from one goroutine, calling start
// once, then receive, tick (when next is reached) and setHealth in any
// order, and stop once.
type machine struct {
	cfg          machineConfig
	tr           transport
	clk          clock
	log          *slog.Logger
	onTransition func(from, to State, priority int) // side effects; may be nil

	state State
	prio  int  // effective priority
	fault bool // a tracked interface or weight-0 route is down
	// preemptAt: with preempt_delay, when a lower-priority master stops
	// being accepted; zero while none has been seen (keepalived's
	// preempt_time).
	preemptAt time.Time

	masterAdverInt time.Duration
	masterDown     time.Time // Backup: Master_Down_Timer deadline
	adverDue       time.Time // Master: Adver_Timer deadline
	garpDelayDue   time.Time // Master: second GARP burst; zero = none
	garpRefreshDue time.Time // Master: next periodic GARP; zero = off
	master         netip.Addr

	transitions, masterChanges, sent, received uint64

	loggedAddrs map[netip.Addr]bool // senders whose address mismatch was logged
}

func newMachine(cfg machineConfig, priority int, tr transport, clk clock, log *slog.Logger) *machine {
	cfg.vips = slices.Clone(cfg.vips)
	slices.SortFunc(cfg.vips, netip.Addr.Compare)
	return &machine{
		cfg:            cfg,
		tr:             tr,
		clk:            clk,
		log:            log,
		prio:           priority,
		masterAdverInt: cfg.interval,
		loggedAddrs:    make(map[netip.Addr]bool),
	}
}

// skew is Skew_Time: RFC 5798 ((256-Priority) * Master_Adver_Interval) /
// 256; RFC 3768 (256-Priority)/256 seconds.
func (m *machine) skew() time.Duration {
	if m.cfg.version == 2 {
		return time.Duration(256-m.prio) * time.Second / 256
	}
	return time.Duration(256-m.prio) * m.masterAdverInt / 256
}

// masterDownInterval is 3 * Master_Adver_Interval + Skew_Time.
func (m *machine) masterDownInterval() time.Duration {
	return 3*m.masterAdverInt + m.skew()
}

// preempting reports whether a Backup takes over from a lower-priority
// master now. With preempt_delay, as keepalived does: the delay runs from
// the start, from leaving Fault, or from the first lower-priority advert
// after a master of at least this priority, so that a router that comes
// back does not take the VIP back at once.
func (m *machine) preempting(now time.Time) bool {
	if m.cfg.preemptDelay == 0 {
		return m.cfg.preempt
	}
	return m.cfg.preempt && !m.preemptAt.IsZero() && !now.Before(m.preemptAt)
}

// armPreempt follows preempt_delay on an advert accepted in Backup.
func (m *machine) armPreempt(now time.Time, prio int) {
	switch {
	case m.cfg.preemptDelay == 0:
	case prio >= m.prio:
		m.preemptAt = time.Time{}
	case m.preemptAt.IsZero():
		m.preemptAt = now.Add(m.cfg.preemptDelay)
	}
}

// start leaves Initialize: to Fault if a tracked object is down, to Master
// for the address owner (priority 255), else to Backup.
func (m *machine) start() {
	now := m.clk.Now()
	m.preemptAt = now.Add(m.cfg.preemptDelay)
	m.masterAdverInt = m.cfg.interval
	switch {
	case m.fault:
		m.transition(StateFault)
	case m.prio == 255:
		m.becomeMaster(now)
	default:
		m.becomeBackup(now.Add(m.masterDownInterval()))
	}
}

// stop resigns: a master sends one advert with priority 0 so that a backup
// takes over after Skew_Time instead of Master_Down_Interval.
func (m *machine) stop() {
	if m.state == StateMaster {
		m.send(0)
	}
	m.clearTimers()
	m.transition(StateStopped)
}

// setHealth applies the effective priority and the fault condition.
func (m *machine) setHealth(fault bool, priority int) {
	m.prio = priority
	m.fault = fault
	switch {
	case m.state == StateInit || m.state == StateStopped:
	case fault && m.state != StateFault:
		if m.state == StateMaster {
			m.send(0) // as keepalived: let a backup take over at once
		}
		m.clearTimers()
		m.transition(StateFault)
	case !fault && m.state == StateFault:
		now := m.clk.Now()
		m.masterAdverInt = m.cfg.interval
		m.preemptAt = now.Add(m.cfg.preemptDelay)
		m.becomeBackup(now.Add(m.masterDownInterval()))
	}
}

// next is the instant tick should be called at; zero if no timer runs.
func (m *machine) next() time.Time {
	var t time.Time
	earliest := func(d time.Time) {
		if !d.IsZero() && (t.IsZero() || d.Before(t)) {
			t = d
		}
	}
	switch m.state {
	case StateBackup:
		earliest(m.masterDown)
	case StateMaster:
		earliest(m.adverDue)
		earliest(m.garpDelayDue)
		earliest(m.garpRefreshDue)
	}
	return t
}

// tick runs the timers that have expired.
func (m *machine) tick() {
	now := m.clk.Now()
	switch m.state {
	case StateBackup:
		if !m.masterDown.IsZero() && !now.Before(m.masterDown) {
			m.becomeMaster(now)
		}
	case StateMaster:
		if !m.adverDue.IsZero() && !now.Before(m.adverDue) {
			m.send(m.prio)
			m.adverDue = now.Add(m.cfg.interval)
		}
		if !m.garpDelayDue.IsZero() && !now.Before(m.garpDelayDue) {
			m.garpDelayDue = time.Time{}
			m.tr.GARP()
		}
		if !m.garpRefreshDue.IsZero() && !now.Before(m.garpRefreshDue) {
			m.garpRefreshDue = now.Add(m.cfg.garpRefresh)
			m.tr.GARP()
		}
	}
}

// receive handles an advert from src that decoded without error. It
// returns the reason it was dropped, or "" if it was used or is for
// another virtual router (ignored silently).
func (m *machine) receive(src netip.Addr, a *Advert) (dropped string) {
	if a.VRID != m.cfg.vrid {
		return ""
	}
	if reason := m.check(src, a); reason != "" {
		return reason
	}
	m.received++
	now := m.clk.Now()
	switch m.state {
	case StateBackup:
		switch {
		case a.Priority == 0:
			m.masterDown = now.Add(m.skew())
		case !m.preempting(now) || int(a.Priority) >= m.prio:
			if m.cfg.version == 3 {
				m.masterAdverInt = a.Interval
			}
			m.masterDown = now.Add(m.masterDownInterval())
			m.setMaster(src)
			m.armPreempt(now, int(a.Priority))
		default:
			// A lower-priority master: let Master_Down_Timer expire.
		}
	case StateMaster:
		switch {
		case a.Priority == 0:
			m.send(m.prio)
			m.adverDue = now.Add(m.cfg.interval)
		case int(a.Priority) > m.prio || int(a.Priority) == m.prio && src.Compare(m.cfg.self) > 0:
			if m.cfg.version == 3 {
				m.masterAdverInt = a.Interval
			}
			m.setMaster(src)
			m.becomeBackup(now.Add(m.masterDownInterval()))
		case int(a.Priority) < m.prio:
			// Not in the RFC, but what keepalived does: assert mastership
			// at once, to the peer and to the LAN.
			m.send(m.prio)
			m.adverDue = now.Add(m.cfg.interval)
			m.tr.GARP()
		}
	}
	return ""
}

// check applies the receive rules of RFC 5798 section 7.1 that the codec
// cannot: version, authentication, interval, address list, own packets.
func (m *machine) check(src netip.Addr, a *Advert) string {
	switch {
	case a.Version != m.cfg.version:
		return ReasonVersion
	case src == m.cfg.self:
		return ReasonOwn
	case len(m.cfg.peers) > 0 && !slices.Contains(m.cfg.peers, src):
		return ReasonPeer
	case m.cfg.version == 2 && (a.AuthType != m.cfg.authType || m.cfg.authType == AuthPass && a.Auth != m.cfg.auth):
		return ReasonAuth
	case a.Interval <= 0:
		return ReasonInterval
	case m.cfg.version == 2 && a.Interval != m.cfg.interval:
		return ReasonInterval
	}
	if !sameAddrs(a.Addrs, m.cfg.vips) {
		// keepalived also logs this once rather than per packet.
		if !m.loggedAddrs[src] && len(m.loggedAddrs) < 256 {
			m.loggedAddrs[src] = true
			m.log.Warn("vrrp advert ignored: address list differs from ours",
				"from", src, "vrid", a.VRID, "theirs", a.Addrs, "ours", m.cfg.vips)
		}
		return ReasonAddresses
	}
	return ""
}

// sameAddrs reports whether got holds the same addresses as sorted want,
// in any order.
func sameAddrs(got, want []netip.Addr) bool {
	if len(got) != len(want) {
		return false
	}
	s := slices.Clone(got)
	slices.SortFunc(s, netip.Addr.Compare)
	return slices.Equal(s, want)
}

func (m *machine) becomeMaster(now time.Time) {
	m.clearTimers()
	m.transition(StateMaster) // adds the addresses before the GARP
	m.setMaster(m.cfg.self)
	m.send(m.prio)
	m.tr.GARP()
	m.adverDue = now.Add(m.cfg.interval)
	if m.cfg.garpDelay > 0 {
		m.garpDelayDue = now.Add(m.cfg.garpDelay)
	}
	if m.cfg.garpRefresh > 0 {
		m.garpRefreshDue = now.Add(m.cfg.garpRefresh)
	}
}

func (m *machine) becomeBackup(masterDown time.Time) {
	m.clearTimers()
	m.masterDown = masterDown
	m.transition(StateBackup)
}

func (m *machine) clearTimers() {
	m.masterDown = time.Time{}
	m.adverDue = time.Time{}
	m.garpDelayDue = time.Time{}
	m.garpRefreshDue = time.Time{}
}

func (m *machine) transition(to State) {
	from := m.state
	if from == to {
		return
	}
	m.state = to
	m.transitions++
	m.log.Info("vrrp state change", "from", from, "to", to, "priority", m.prio)
	if m.onTransition != nil {
		m.onTransition(from, to, m.prio)
	}
}

func (m *machine) setMaster(addr netip.Addr) {
	if addr != m.master {
		m.master = addr
		m.masterChanges++
	}
}

func (m *machine) send(priority int) {
	a := Advert{
		Version:  m.cfg.version,
		VRID:     m.cfg.vrid,
		Priority: uint8(priority),
		Interval: m.cfg.interval,
		Addrs:    m.cfg.vips,
		AuthType: m.cfg.authType,
		Auth:     m.cfg.auth,
	}
	if err := m.tr.Send(&a); err != nil {
		m.log.Warn("vrrp advert not sent", "priority", priority, "err", err)
		return
	}
	m.sent++
}

// effectivePriority is the configured priority plus the weights of the
// unhealthy tracked routes, clamped to 1..254 when any weight applies. A
// weight of 0 on an unhealthy route means Fault.
func effectivePriority(base int, weights map[string]int, unhealthy map[string]bool) (priority int, fault bool) {
	sum, applied := 0, false
	for route, w := range weights {
		if !unhealthy[route] {
			continue
		}
		if w == 0 {
			fault = true
			continue
		}
		sum += w
		applied = true
	}
	if !applied {
		return base, fault
	}
	return min(max(base+sum, 1), 254), fault
}
