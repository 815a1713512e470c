package vip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamr-project/hamr/conf"
)

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

// fakeTransport records what the machine sends, as offsets from t0.
type fakeTransport struct {
	clk   *fakeClock
	t0    time.Time
	sent  []string // "OFFSET pPRIO"
	garps []string // "OFFSET"
}

func (f *fakeTransport) Send(a *Advert) error {
	f.sent = append(f.sent, fmt.Sprintf("%v p%d", f.clk.now.Sub(f.t0), a.Priority))
	return nil
}

func (f *fakeTransport) GARP() { f.garps = append(f.garps, f.clk.now.Sub(f.t0).String()) }

var (
	self    = netip.MustParseAddr("10.99.1.1")
	peer    = netip.MustParseAddr("10.99.1.2")
	higher  = netip.MustParseAddr("10.99.1.3")
	lower   = netip.MustParseAddr("10.99.0.9")
	someVIP = netip.MustParseAddr("172.168.1.20")
)

func baseConfig() machineConfig {
	return machineConfig{
		vrid:     51,
		version:  3,
		interval: time.Second,
		preempt:  true,
		vips:     []netip.Addr{someVIP},
		self:     self,
	}
}

type harness struct {
	m           *machine
	clk         *fakeClock
	tr          *fakeTransport
	t0          time.Time
	transitions []string // "OFFSET FROM->TO"
}

func newHarness(cfg machineConfig, prio int) *harness {
	t0 := time.Now()
	clk := &fakeClock{now: t0}
	tr := &fakeTransport{clk: clk, t0: t0}
	h := &harness{clk: clk, tr: tr, t0: t0}
	h.m = newMachine(cfg, prio, tr, clk, slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.m.onTransition = func(from, to State, _ int) {
		h.transitions = append(h.transitions, fmt.Sprintf("%v %v->%v", clk.now.Sub(t0), from, to))
	}
	return h
}

// advance fires every timer due up to t0+d, each exactly at its deadline.
func (h *harness) advance(d time.Duration) {
	until := h.t0.Add(d)
	for i := 0; i < 10000; i++ {
		next := h.m.next()
		if next.IsZero() || next.After(until) {
			break
		}
		h.clk.now = next
		h.m.tick()
	}
	h.clk.now = until
}

func (h *harness) advert(src netip.Addr, prio int, interval time.Duration) string {
	return h.m.receive(src, &Advert{Version: h.m.cfg.version, VRID: 51, Priority: uint8(prio), Interval: interval, Addrs: []netip.Addr{someVIP}})
}

// ev is one input to the machine at an offset from the start.
type ev struct {
	at       time.Duration
	src      netip.Addr    // advert from
	prio     int           // advert or effective priority
	interval time.Duration // advert interval; default 1s
	fault    bool          // health event: fault condition
	health   bool          // a setHealth event
	stop     bool
}

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestMachine(t *testing.T) {
	// Priority 100, interval 1s: Skew_Time = 156/256 s = 609.375ms,
	// Master_Down_Interval = 3.609375s.
	const mdi = "3.609375s"
	adverts := func(src netip.Addr, prio int, from, to time.Duration) []ev {
		var evs []ev
		for at := from; at <= to; at += time.Second {
			evs = append(evs, ev{at: at, src: src, prio: prio})
		}
		return evs
	}
	tests := []struct {
		name        string
		cfg         func(*machineConfig)
		prio        int
		preFault    bool
		events      []ev
		until       time.Duration
		state       State
		transitions []string
		sent        []string
		garps       []string
	}{
		{
			name:        "backup becomes master after master down interval",
			until:       5 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER"},
			sent:        []string{mdi + " p100", "4.609375s p100"},
			garps:       []string{mdi},
		},
		{
			name:        "adverts from a higher priority keep it backup until they stop",
			events:      adverts(peer, 120, 500*time.Millisecond, 2500*time.Millisecond),
			until:       7 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", "6.109375s BACKUP->MASTER"},
			sent:        []string{"6.109375s p100"},
			garps:       []string{"6.109375s"},
		},
		{
			name:        "priority 0 from the master: takeover after skew time",
			events:      []ev{{at: ms(500), src: peer, prio: 120}, {at: time.Second, src: peer, prio: 0}},
			until:       2 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", "1.609375s BACKUP->MASTER"},
			sent:        []string{"1.609375s p100"},
			garps:       []string{"1.609375s"},
		},
		{
			name:   "preempt: a lower-priority master is ignored, then answered",
			events: append(adverts(peer, 50, ms(500), ms(3500)), ev{at: 4 * time.Second, src: peer, prio: 50}),
			until:  ms(4100),
			state:  StateMaster,
			transitions: []string{
				"0s INIT->BACKUP", mdi + " BACKUP->MASTER",
			},
			sent:  []string{mdi + " p100", "4s p100"},
			garps: []string{mdi, "4s"},
		},
		{
			name:        "nopreempt accepts a lower-priority master",
			cfg:         func(c *machineConfig) { c.preempt = false },
			events:      adverts(peer, 50, 0, 9*time.Second),
			until:       10 * time.Second,
			state:       StateBackup,
			transitions: []string{"0s INIT->BACKUP"},
		},
		{
			name:   "preempt_delay accepts a lower-priority master for a while",
			cfg:    func(c *machineConfig) { c.preemptDelay = 5 * time.Second },
			events: adverts(peer, 50, ms(500), ms(9500)),
			until:  ms(9600),
			state:  StateMaster,
			// Last accepted advert at 4.5s; 4.5s + 3.609375s.
			transitions: []string{"0s INIT->BACKUP", "8.109375s BACKUP->MASTER"},
			sent:        []string{"8.109375s p100", "8.5s p100", "9.5s p100", "9.5s p100"}, // timer, then the answer
			garps:       []string{"8.109375s", "8.5s", "9.5s"},
		},
		{
			name: "v3 backup adopts the master's advert interval",
			// 0.5s + 3*100ms + 156*100ms/256.
			events:      []ev{{at: ms(500), src: peer, prio: 120, interval: ms(100)}},
			until:       time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", "860.9375ms BACKUP->MASTER"},
			sent:        []string{"860.9375ms p100"},
			garps:       []string{"860.9375ms"},
		},
		{
			name:        "address owner goes straight to master",
			prio:        255,
			until:       ms(2500),
			state:       StateMaster,
			transitions: []string{"0s INIT->MASTER"},
			sent:        []string{"0s p255", "1s p255", "2s p255"},
			garps:       []string{"0s"},
		},
		{
			name:        "master yields to a higher priority",
			events:      []ev{{at: 4 * time.Second, src: peer, prio: 120}},
			until:       5 * time.Second,
			state:       StateBackup,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER", "4s MASTER->BACKUP"},
			sent:        []string{mdi + " p100"},
			garps:       []string{mdi},
		},
		{
			name:        "equal priority: the higher address wins",
			events:      []ev{{at: 4 * time.Second, src: higher, prio: 100}},
			until:       5 * time.Second,
			state:       StateBackup,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER", "4s MASTER->BACKUP"},
			sent:        []string{mdi + " p100"},
			garps:       []string{mdi},
		},
		{
			name:        "equal priority: a lower address is discarded",
			events:      []ev{{at: 4 * time.Second, src: lower, prio: 100}},
			until:       5 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER"},
			sent:        []string{mdi + " p100", "4.609375s p100"},
			garps:       []string{mdi},
		},
		{
			name:        "master answers priority 0 with an advert",
			events:      []ev{{at: 4 * time.Second, src: peer, prio: 0}},
			until:       5 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER"},
			sent:        []string{mdi + " p100", "4s p100", "5s p100"},
			garps:       []string{mdi},
		},
		{
			name: "fault resigns, recovery goes to backup",
			events: []ev{
				{at: 4 * time.Second, health: true, fault: true, prio: 100},
				{at: 5 * time.Second, src: peer, prio: 120}, // counted, ignored
				{at: 6 * time.Second, health: true, prio: 100},
			},
			until: 10 * time.Second,
			state: StateMaster,
			transitions: []string{
				"0s INIT->BACKUP", mdi + " BACKUP->MASTER", "4s MASTER->FAULT",
				"6s FAULT->BACKUP", "9.609375s BACKUP->MASTER",
			},
			sent:  []string{mdi + " p100", "4s p0", "9.609375s p100"},
			garps: []string{mdi, "9.609375s"},
		},
		{
			name:        "fault at start",
			preFault:    true,
			until:       10 * time.Second,
			state:       StateFault,
			transitions: []string{"0s INIT->FAULT"},
		},
		{
			name:        "graceful stop of a master sends priority 0",
			events:      []ev{{at: ms(4200), stop: true}},
			until:       10 * time.Second,
			state:       StateStopped,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER", "4.2s MASTER->STOPPED"},
			sent:        []string{mdi + " p100", "4.2s p0"},
			garps:       []string{mdi},
		},
		{
			name:        "stop of a backup sends nothing",
			events:      []ev{{at: time.Second, stop: true}},
			until:       10 * time.Second,
			state:       StateStopped,
			transitions: []string{"0s INIT->BACKUP", "1s BACKUP->STOPPED"},
		},
		{
			name: "lower effective priority shows in the adverts",
			events: []ev{
				{at: ms(4100), health: true, prio: 70},
			},
			until:       ms(5700),
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER"},
			sent:        []string{mdi + " p100", "4.609375s p70", "5.609375s p70"},
			garps:       []string{mdi},
		},
		{
			name: "garp delay and refresh",
			cfg: func(c *machineConfig) {
				c.garpDelay = 5 * time.Second
				c.garpRefresh = 2 * time.Second
			},
			until:       10 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", mdi + " BACKUP->MASTER"},
			sent:        []string{mdi + " p100", "4.609375s p100", "5.609375s p100", "6.609375s p100", "7.609375s p100", "8.609375s p100", "9.609375s p100"},
			garps:       []string{mdi, "5.609375s", "7.609375s", "8.609375s", "9.609375s"},
		},
		{
			name: "v2 skew is in seconds",
			cfg: func(c *machineConfig) {
				c.version = 2
				c.interval = 2 * time.Second
			},
			until:       7 * time.Second,
			state:       StateMaster,
			transitions: []string{"0s INIT->BACKUP", "6.609375s BACKUP->MASTER"},
			sent:        []string{"6.609375s p100"},
			garps:       []string{"6.609375s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			prio := tt.prio
			if prio == 0 {
				prio = 100
			}
			h := newHarness(cfg, prio)
			if tt.preFault {
				h.m.setHealth(true, prio)
			}
			h.m.start()
			for _, e := range tt.events {
				h.advance(e.at)
				switch {
				case e.stop:
					h.m.stop()
				case e.health:
					h.m.setHealth(e.fault, e.prio)
				default:
					iv := e.interval
					if iv == 0 {
						iv = cfg.interval
					}
					if r := h.advert(e.src, e.prio, iv); r != "" {
						t.Fatalf("advert at %v dropped: %s", e.at, r)
					}
				}
			}
			h.advance(tt.until)
			if h.m.state != tt.state {
				t.Errorf("state = %v, want %v", h.m.state, tt.state)
			}
			check := func(what string, got, want []string) {
				t.Helper()
				if !slices.Equal(got, want) {
					t.Errorf("%s:\n got %q\nwant %q", what, got, want)
				}
			}
			check("transitions", h.transitions, tt.transitions)
			check("sent", h.tr.sent, tt.sent)
			check("garps", h.tr.garps, tt.garps)
			if got := h.m.transitions; got != uint64(len(tt.transitions)) {
				t.Errorf("transition counter = %d, want %d", got, len(tt.transitions))
			}
		})
	}
}

// The takeover happens exactly at 3 × interval + skew after the last
// advert, not a nanosecond before.
func TestMachineMasterDownExact(t *testing.T) {
	h := newHarness(baseConfig(), 100)
	h.m.start()
	h.advance(2 * time.Second)
	h.advert(peer, 120, time.Second)
	deadline := 2*time.Second + 3*time.Second + 156*time.Second/256
	h.advance(deadline - 1)
	if h.m.state != StateBackup {
		t.Fatalf("state %v before the deadline", h.m.state)
	}
	h.advance(deadline)
	if h.m.state != StateMaster {
		t.Fatalf("state %v at the deadline", h.m.state)
	}
	if h.m.master != self || h.m.masterChanges != 2 {
		t.Fatalf("master = %v after %d changes, want self after 2", h.m.master, h.m.masterChanges)
	}
}

func TestMachineReceiveFilters(t *testing.T) {
	other := netip.MustParseAddr("172.168.1.21")
	good := func() Advert {
		return Advert{Version: 3, VRID: 51, Priority: 120, Interval: time.Second, Addrs: []netip.Addr{someVIP}}
	}
	tests := []struct {
		name   string
		cfg    func(*machineConfig)
		src    netip.Addr
		adv    func(*Advert)
		reason string
		used   bool
	}{
		{name: "good", src: peer, used: true},
		{name: "another vrid is ignored silently", src: peer, adv: func(a *Advert) { a.VRID = 52 }},
		{name: "own", src: self, reason: ReasonOwn},
		{name: "version", src: peer, adv: func(a *Advert) { a.Version = 2 }, reason: ReasonVersion},
		{name: "interval 0", src: peer, adv: func(a *Advert) { a.Interval = 0 }, reason: ReasonInterval},
		{name: "address missing", src: peer, adv: func(a *Advert) { a.Addrs = nil }, reason: ReasonAddresses},
		{name: "address differs", src: peer, adv: func(a *Advert) { a.Addrs = []netip.Addr{other} }, reason: ReasonAddresses},
		{name: "extra address", src: peer, adv: func(a *Advert) { a.Addrs = append(a.Addrs, other) }, reason: ReasonAddresses},
		{
			name: "addresses in another order", src: peer, used: true,
			cfg: func(c *machineConfig) { c.vips = []netip.Addr{other, someVIP} },
			adv: func(a *Advert) { a.Addrs = []netip.Addr{someVIP, other} },
		},
		{
			name: "v2 pass matches", src: peer, used: true,
			cfg: func(c *machineConfig) { c.version, c.authType, c.auth = 2, AuthPass, [8]byte{'p', 'w'} },
			adv: func(a *Advert) { a.Version, a.AuthType, a.Auth = 2, AuthPass, [8]byte{'p', 'w'} },
		},
		{
			name: "v2 pass differs", src: peer, reason: ReasonAuth,
			cfg: func(c *machineConfig) { c.version, c.authType, c.auth = 2, AuthPass, [8]byte{'p', 'w'} },
			adv: func(a *Advert) { a.Version, a.AuthType, a.Auth = 2, AuthPass, [8]byte{'p', 'x'} },
		},
		{
			name: "v2 no auth against pass", src: peer, reason: ReasonAuth,
			cfg: func(c *machineConfig) { c.version, c.authType, c.auth = 2, AuthPass, [8]byte{'p', 'w'} },
			adv: func(a *Advert) { a.Version = 2 },
		},
		{
			name: "unicast: a listed peer", src: peer, used: true,
			cfg: func(c *machineConfig) { c.peers = []netip.Addr{other, peer} },
		},
		{
			name: "unicast: not a listed peer", src: other, reason: ReasonPeer,
			cfg: func(c *machineConfig) { c.peers = []netip.Addr{peer} },
		},
		{
			name: "v2 interval differs", src: peer, reason: ReasonInterval,
			cfg: func(c *machineConfig) { c.version = 2 },
			adv: func(a *Advert) { a.Version, a.Interval = 2, 2*time.Second },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			h := newHarness(cfg, 100)
			h.m.start()
			a := good()
			if tt.adv != nil {
				tt.adv(&a)
			}
			if got := h.m.receive(tt.src, &a); got != tt.reason {
				t.Fatalf("reason = %q, want %q", got, tt.reason)
			}
			if used := h.m.received == 1; used != tt.used {
				t.Fatalf("used = %v, want %v", used, tt.used)
			}
			if tt.used && h.m.master != tt.src {
				t.Fatalf("master = %v, want %v", h.m.master, tt.src)
			}
		})
	}
}

func TestEffectivePriority(t *testing.T) {
	weights := map[string]int{"rw": -30, "ro": -10, "critical": 0, "bonus": 20}
	tests := []struct {
		base      int
		unhealthy []string
		want      int
		fault     bool
	}{
		{100, nil, 100, false},
		{100, []string{"rw"}, 70, false},
		{100, []string{"rw", "ro"}, 60, false},
		{100, []string{"critical"}, 100, true},
		{100, []string{"critical", "rw"}, 70, true},
		{20, []string{"rw"}, 1, false},
		{250, []string{"bonus"}, 254, false},
		{255, nil, 255, false},
		{255, []string{"ro"}, 245, false},
		{255, []string{"unknown"}, 255, false},
	}
	for _, tt := range tests {
		u := make(map[string]bool)
		for _, r := range tt.unhealthy {
			u[r] = true
		}
		got, fault := effectivePriority(tt.base, weights, u)
		if got != tt.want || fault != tt.fault {
			t.Errorf("effectivePriority(%d, %v) = %d, %v; want %d, %v", tt.base, tt.unhealthy, got, fault, tt.want, tt.fault)
		}
	}
}

// TestHandleTTL: a multicast advert must arrive with TTL 255; a unicast
// one may have crossed routers, and keepalived accepts it at any TTL.
// TestHandleFilters: what the instance drops before the state machine
// sees it: a multicast advert with a TTL below 255 (a unicast one may
// cross routers), and, as keepalived, a unicast advert in multicast mode
// and a multicast one in unicast mode.
func TestHandleFilters(t *testing.T) {
	for _, tt := range []struct {
		name    string
		unicast bool
		dst     netip.Addr // default: the group, or self in unicast mode
		ttl     int
		reason  string // "" if used
	}{
		{name: "multicast, TTL 255", ttl: 255},
		{name: "multicast, TTL 254", ttl: 254, reason: ReasonTTL},
		{name: "unicast, TTL 255", unicast: true, ttl: 255},
		{name: "unicast, TTL 62", unicast: true, ttl: 62},
		{name: "multicast mode, sent to this router's address", dst: self, ttl: 255, reason: ReasonDestination},
		{name: "unicast mode, sent to the group", unicast: true, dst: Group, ttl: 255, reason: ReasonDestination},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			vc := &conf.VRRP{Name: "VI_1"}
			dst := Group
			if tt.unicast {
				cfg.peers = []netip.Addr{higher}
				vc.UnicastPeers = cfg.peers
				dst = self
			}
			if tt.dst.IsValid() {
				dst = tt.dst
			}
			h := newHarness(cfg, 100)
			h.m.start()
			in := &Instance{cfg: vc, log: slog.New(slog.DiscardHandler), status: Status{Dropped: map[string]uint64{}}}
			a := Advert{Version: 3, VRID: 51, Priority: 200, Interval: time.Second, Addrs: []netip.Addr{someVIP}}
			b, err := a.Marshal(higher, dst)
			if err != nil {
				t.Fatal(err)
			}
			h.advance(2 * time.Second)
			in.handle(h.m, rawPacket{src: higher, dst: dst, ttl: tt.ttl, payload: b})
			// The master down interval (3.6 s) ends at 3.6 s from the start
			// unless the advert was heard, which moves it to 5.6 s.
			h.advance(5 * time.Second)
			want := map[string]uint64{}
			if tt.reason != "" {
				want[tt.reason] = 1
			}
			if !maps.Equal(in.status.Dropped, want) {
				t.Errorf("dropped %v, want %v", in.status.Dropped, want)
			}
			master := slices.ContainsFunc(h.transitions, func(s string) bool { return strings.HasSuffix(s, "BACKUP->MASTER") })
			if master != (tt.reason != "") {
				t.Errorf("transitions %v: want BACKUP->MASTER by 5s only if the advert was dropped", h.transitions)
			}
		})
	}
}

// TestPreemptDelayRearmed: preempt_delay holds a router that comes back
// (its fault cleared, or its tracked routes healthy again) behind a
// lower-priority master for the delay, as keepalived does, and not only
// in the first seconds after start.
func TestPreemptDelayRearmed(t *testing.T) {
	for _, tt := range []struct {
		name             string
		degrade, recover func(m *machine) // at 10s, at 60s
	}{
		{"fault cleared", func(m *machine) { m.setHealth(true, 120) }, func(m *machine) { m.setHealth(false, 120) }},
		{"tracked route weight recovered", func(m *machine) { m.setHealth(false, 90) }, func(m *machine) { m.setHealth(false, 120) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.preemptDelay = 30 * time.Second
			h := newHarness(cfg, 120)
			h.m.start()
			h.advance(10 * time.Second)
			if h.m.state != StateMaster {
				t.Fatalf("state %v at 10s, want MASTER", h.m.state)
			}
			tt.degrade(h.m)
			for at := 11 * time.Second; at <= 95*time.Second; at += time.Second { // the peer, priority 100, is master
				h.advance(at)
				if at == 60*time.Second {
					tt.recover(h.m)
				}
				if at == 85*time.Second && h.m.state != StateBackup {
					t.Fatalf("state %v at 85s, want BACKUP (preempt_delay 30s from 60s); transitions %v", h.m.state, h.transitions)
				}
				h.advert(peer, 100, time.Second)
			}
			if h.m.state != StateMaster {
				t.Fatalf("state %v at 95s, want MASTER (the delay has run out); transitions %v", h.m.state, h.transitions)
			}
		})
	}
}

// TestReadGoesDeaf: a reader whose socket fails again and again (not
// closed by the instance) marks the instance deaf, which holds it in
// FAULT instead of letting it take the VIP from a master it cannot hear,
// until a packet arrives again; a closed socket is the normal end.
func TestReadGoesDeaf(t *testing.T) {
	in := &Instance{cfg: &conf.VRRP{Name: "VI_1"}, log: slog.New(slog.DiscardHandler), kick: make(chan struct{}, 1)}
	out := make(chan rawPacket, 2)
	calls, deafAtPacket := 0, false
	recv := func() (rawPacket, error) {
		calls++
		switch {
		case calls == 1:
			return rawPacket{payload: []byte{1}}, nil
		case calls <= 1+deafAfter:
			return rawPacket{}, errors.New("recvmsg: no buffer space available")
		case calls == 2+deafAfter:
			deafAtPacket = in.deaf.Load()
			return rawPacket{payload: []byte{2}}, nil
		}
		return rawPacket{}, net.ErrClosed
	}
	in.read(context.Background(), recv, out)
	if len(out) != 2 {
		t.Errorf("%d packets passed on, want the 2 around the errors", len(out))
	}
	if !deafAtPacket {
		t.Errorf("not deaf after %d errors in a row", deafAfter)
	}
	if in.deaf.Load() {
		t.Error("still deaf after a packet arrived")
	}
	if len(in.kick) != 1 {
		t.Error("the loop was not told")
	}
	in.deaf.Store(true)
	if _, fault := in.health(nil); !fault {
		t.Error("a deaf instance is not in fault")
	}
}
