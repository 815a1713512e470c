package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamr-project/hamr/conf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Options are the dependencies of an Instance.
type Options struct {
	Logger  *slog.Logger // default slog.Default()
	Metrics *Metrics     // may be nil
	// OnLeaveMaster, if set, is called twice each time the instance stops
	// being master (to backup, fault, or on stop): right before the VIPs
	// are removed (removed false), and right after (removed true).
	// Sessions that came in through a VIP cannot go on once it has moved:
	// the daemon closes them at the first call, while their FIN can still
	// leave from the VIP, and at the second those of clients accepted in
	// between. It runs on the instance's goroutine: keep it short.
	OnLeaveMaster func(removed bool)
	// NotifyAfter, if not nil, holds the instance's notify scripts until
	// it is closed: give it the Done of the instance this one replaces
	// (a reload restarted it), so that the scripts of both run one at a
	// time, in the order of the transitions.
	NotifyAfter <-chan struct{}
}

// Status is a snapshot of an instance, for /status and hamr ctl.
type Status struct {
	Name              string
	Interface         string
	VRID              int
	Version           int
	State             string // INIT | BACKUP | MASTER | FAULT | STOPPED
	Priority          int    // configured
	EffectivePriority int    // advertised
	AdvertInt         time.Duration
	Master            string   // address of the current master as last seen; "" unknown
	VIPs              []string // configured, as prefixes
	Transitions       uint64
	MasterChanges     uint64
	AdvertsSent       uint64
	AdvertsReceived   uint64
	Dropped           map[string]uint64 // by reason
}

// Instance is one VRRP instance ([vrrp.NAME]). Create it with New, start
// it with Start; SetRouteHealthy and Status are safe from any goroutine.
type Instance struct {
	cfg  *conf.VRRP
	log  *slog.Logger
	met  *Metrics
	addr []netip.Addr // virtual addresses without prefix

	kick     chan struct{}   // capacity 1: tracked route health changed, or deaf
	deaf     atomic.Bool     // the socket fails: see read
	done     chan struct{}   // closed when a started instance has stopped
	resigned chan struct{}   // closed once it has resigned; scripts may still run
	onLeave  func(bool)      // Options.OnLeaveMaster
	after    <-chan struct{} // Options.NotifyAfter

	mu        sync.Mutex
	ran       bool
	unhealthy map[string]bool // tracked routes reported unhealthy
	status    Status
}

// New checks what the instance needs from cfg and from the host (the
// interface exists). cfg must have passed conf validation; New keeps it and
// does not modify it.
func New(cfg *conf.VRRP, opts Options) (*Instance, error) {
	if cfg == nil {
		return nil, errors.New("vip: nil config")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("vrrp", cfg.Name)
	if err := Check(cfg); err != nil {
		return nil, err
	}
	i := &Instance{
		cfg:       cfg,
		log:       log,
		met:       opts.Metrics,
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
		resigned:  make(chan struct{}),
		onLeave:   opts.OnLeaveMaster,
		after:     opts.NotifyAfter,
		unhealthy: make(map[string]bool),
	}
	var vipStrings []string
	for _, p := range cfg.VirtualIPAddress {
		i.addr = append(i.addr, p.Addr())
		vipStrings = append(vipStrings, p.String())
	}
	i.status = Status{
		Name:              cfg.Name,
		Interface:         cfg.Interface,
		VRID:              cfg.VirtualRouterID,
		Version:           cfg.Version,
		State:             StateInit.String(),
		Priority:          cfg.Priority,
		EffectivePriority: cfg.Priority,
		AdvertInt:         cfg.AdvertInt,
		VIPs:              vipStrings,
		Dropped:           make(map[string]uint64),
	}
	if m := i.met; m != nil {
		m.state.WithLabelValues(cfg.Name).Set(0)
		m.priority.WithLabelValues(cfg.Name).Set(float64(cfg.Priority))
	}
	return i, nil
}

// Check reports what keeps cfg from running on this host, without
// changing anything: a setting the codec or the machine cannot work with,
// a missing interface or one without an Ethernet address, no IPv4 address
// to send adverts from, or no permission to open the VRRP socket. New
// calls it; a reload calls it before it stops the instance that runs now.
func Check(cfg *conf.VRRP) error {
	err := check(cfg)
	if err == nil {
		err = checkHost(cfg)
	}
	if err != nil {
		return fmt.Errorf("vip: vrrp.%s: %w", cfg.Name, err)
	}
	return nil
}

// checkHost checks what Start will need from the host.
func checkHost(cfg *conf.VRRP) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	if len(link.Attrs().HardwareAddr) != 6 {
		return fmt.Errorf("interface %q has no Ethernet address for gratuitous ARP", cfg.Interface)
	}
	if !cfg.UnicastSrcIP.IsValid() {
		if _, err := primaryAddr(h, link, cfg.VirtualIPAddress); err != nil {
			return err
		}
	}
	pc, err := net.ListenPacket(fmt.Sprintf("ip4:%d", Protocol), "0.0.0.0")
	if err != nil {
		return fmt.Errorf("vrrp socket: %w", err)
	}
	pc.Close()
	return nil
}

// check rejects what the codec or the machine cannot work with; conf
// validation should already have caught all of it.
func check(cfg *conf.VRRP) error {
	switch {
	case cfg.Interface == "":
		return errors.New("interface: required")
	case cfg.VirtualRouterID < 1 || cfg.VirtualRouterID > 255:
		return fmt.Errorf("virtual_router_id: %d (1-255)", cfg.VirtualRouterID)
	case cfg.Priority < 1 || cfg.Priority > 255:
		return fmt.Errorf("priority: %d (1-255)", cfg.Priority)
	case cfg.Version != 2 && cfg.Version != 3:
		return fmt.Errorf("version: %d (2 or 3)", cfg.Version)
	case len(cfg.VirtualIPAddress) == 0 || len(cfg.VirtualIPAddress) > 255:
		return fmt.Errorf("virtual_ipaddress: %d addresses (1-255)", len(cfg.VirtualIPAddress))
	case len(cfg.AuthPass) > 8:
		return fmt.Errorf("auth_pass: %d bytes (at most 8)", len(cfg.AuthPass))
	case cfg.UnicastSrcIP.IsValid() && !cfg.UnicastSrcIP.Is4():
		return fmt.Errorf("unicast_src_ip: %v is not IPv4", cfg.UnicastSrcIP)
	}
	for _, p := range cfg.VirtualIPAddress {
		if !p.Addr().Is4() {
			return fmt.Errorf("virtual_ipaddress: %v is not IPv4", p)
		}
	}
	for _, a := range cfg.UnicastPeers {
		if !a.Is4() {
			return fmt.Errorf("unicast_peers: %v is not IPv4", a)
		}
	}
	probe := Advert{Version: cfg.Version, Interval: cfg.AdvertInt}
	if _, err := probe.Marshal(Group, Group); err != nil {
		return fmt.Errorf("advert_int: %w", err)
	}
	return nil
}

// SetRouteHealthy records the health of a tracked route (track_routes):
// while unhealthy its weight is added to the priority, or, for weight 0,
// the instance is in Fault. Routes are healthy until reported otherwise;
// untracked routes are ignored.
func (i *Instance) SetRouteHealthy(route string, healthy bool) {
	if _, ok := i.cfg.TrackRoutes[route]; !ok {
		return
	}
	i.mu.Lock()
	changed := i.unhealthy[route] == healthy
	if healthy {
		delete(i.unhealthy, route)
	} else {
		i.unhealthy[route] = true
	}
	i.mu.Unlock()
	if changed {
		select {
		case i.kick <- struct{}{}:
		default:
		}
	}
}

// Status returns a snapshot of the instance.
func (i *Instance) Status() Status {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := i.status
	s.VIPs = slices.Clone(s.VIPs)
	s.Dropped = maps.Clone(s.Dropped)
	return s
}

// health is the effective priority and the fault condition, given the
// tracked interfaces that are down.
func (i *Instance) health(linksDown []string) (priority int, fault bool) {
	i.mu.Lock()
	priority, fault = effectivePriority(i.cfg.Priority, i.cfg.TrackRoutes, i.unhealthy)
	i.mu.Unlock()
	// An instance that hears no peer would take the VIP from the master.
	return priority, fault || len(linksDown) > 0 || i.deaf.Load()
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// hostTransport sends adverts on the raw socket and GARP on AF_PACKET.
type hostTransport struct {
	c *conn
	g *garper
}

func (t hostTransport) Send(a *Advert) error { return t.c.Send(a) }
func (t hostTransport) GARP()                { t.g.burst() }

// Start removes configured virtual addresses left on the interface and
// opens the instance's sockets, in the network namespace of the calling
// thread. It then runs the instance on a goroutine of its own until ctx is
// cancelled: it enters Backup (Master at priority 255), and on
// cancellation resigns (a master sends an advert with priority 0 and
// removes the addresses it added) and runs notify_stop. Start returns an
// error only when the instance cannot start, and has then started
// nothing. Wait waits for the end. Start may be called once.
func (i *Instance) Start(ctx context.Context) error {
	i.mu.Lock()
	if i.ran {
		i.mu.Unlock()
		return errors.New("vip: Start called twice")
	}
	i.ran = true
	i.mu.Unlock()
	hs, err := i.open()
	if err != nil {
		close(i.resigned)
		close(i.done)
		return fmt.Errorf("vip: vrrp.%s: %w", i.cfg.Name, err)
	}
	go func() {
		defer close(i.done)
		defer hs.close()
		i.run(ctx, hs)
	}()
	return nil
}

// Wait returns once an instance that started has stopped, its notify
// scripts done, and at once after a failed Start.
func (i *Instance) Wait() { <-i.done }

// Done is closed when Wait would return: the instance has stopped and
// its notify scripts are done.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Resigned is closed once a cancelled instance has resigned (a master has
// sent its priority-0 advert and removed its VIPs) and sends nothing
// more, while its notify scripts (notify_stop, and any still queued) may
// still run: a peer can take over, and the daemon go on stopping,
// without waiting for them.
func (i *Instance) Resigned() <-chan struct{} { return i.resigned }

// host is what a started instance holds: netlink handles, its sockets,
// and the virtual addresses it manages.
type host struct {
	h   *netlink.Handle
	v   *vips
	src netip.Addr
	c   *conn
	g   *garper
	lw  *linkWatcher
}

// open acquires everything the instance needs from the host; on error it
// releases what it had acquired.
func (i *Instance) open() (_ *host, err error) {
	cfg := i.cfg
	hs := &host{}
	defer func() {
		if err != nil {
			hs.close()
		}
	}()
	if hs.h, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	link, err := hs.h.LinkByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	attrs := link.Attrs()
	ifi := &net.Interface{Index: attrs.Index, MTU: attrs.MTU, Name: attrs.Name, HardwareAddr: attrs.HardwareAddr, Flags: attrs.Flags}

	hs.v = &vips{h: hs.h, link: link, want: cfg.VirtualIPAddress, added: make(map[netip.Addr]bool), log: i.log}
	if err := hs.v.removeStale(); err != nil {
		return nil, err
	}
	hs.src = cfg.UnicastSrcIP
	if !hs.src.IsValid() {
		if hs.src, err = primaryAddr(hs.h, link, cfg.VirtualIPAddress); err != nil {
			return nil, err
		}
	}
	if hs.c, err = listen(ifi, hs.src, cfg.UnicastPeers); err != nil {
		return nil, err
	}
	if hs.g, err = newGARPer(ifi, i.addr, max(cfg.GarpMasterRepeat, 1), i.log); err != nil {
		return nil, err
	}
	lh, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	hs.lw = &linkWatcher{
		h:     lh,
		names: append([]string{cfg.Interface}, cfg.TrackInterface...),
		every: min(max(cfg.AdvertInt, 100*time.Millisecond), time.Second),
		c:     make(chan []string, 1),
	}
	slices.Sort(hs.lw.names)
	hs.lw.names = slices.Compact(hs.lw.names)
	return hs, nil
}

// close releases what open acquired; it may be called on a partial host.
func (hs *host) close() {
	if hs.lw != nil {
		hs.lw.h.Close()
	}
	if hs.g != nil {
		hs.g.Close()
	}
	if hs.c != nil {
		hs.c.Close()
	}
	if hs.h != nil {
		hs.h.Close()
	}
}

// run is the instance's goroutine: the state machine fed by packets,
// timers, link changes and tracked route health, until ctx is cancelled.
func (i *Instance) run(ctx context.Context, hs *host) {
	cfg := i.cfg
	c, v, lw, src := hs.c, hs.v, hs.lw, hs.src
	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	notify := newNotifier(i.log, cfg.NotifyTimeout)
	notify.after = i.after
	wg.Go(func() { notify.run(context.WithoutCancel(ctx)) })
	pkts := make(chan rawPacket, 16)
	wg.Go(func() { i.read(bg, c.recv, pkts) })
	linksDown := lw.down()
	wg.Go(func() { lw.run(bg, linksDown) })
	defer func() {
		stopBG()
		c.Close() // unblocks the reader
		notify.close()
		wg.Wait()
	}()

	mc := machineConfig{
		vrid:         uint8(cfg.VirtualRouterID),
		version:      cfg.Version,
		interval:     cfg.AdvertInt,
		preempt:      !cfg.Nopreempt,
		preemptDelay: cfg.PreemptDelay,
		vips:         i.addr,
		self:         src,
		peers:        i.cfg.UnicastPeers,
		garpDelay:    cfg.GarpMasterDelay,
		garpRefresh:  cfg.GarpMasterRefresh,
	}
	if cfg.Version == 2 && cfg.AuthPass != "" {
		mc.authType = AuthPass
		copy(mc.auth[:], cfg.AuthPass)
	}
	prio, fault := i.health(linksDown)
	m := newMachine(mc, prio, hostTransport{c: c, g: hs.g}, realClock{}, i.log)
	m.onTransition = func(from, to State, prio int) { i.transition(v, notify, from, to, prio) }
	m.setHealth(fault, prio)
	if len(linksDown) > 0 {
		i.log.Warn("vrrp tracked interface down", "interfaces", linksDown)
	}
	i.log.Info("vrrp instance starting", "interface", cfg.Interface, "vrid", cfg.VirtualRouterID,
		"version", cfg.Version, "priority", prio, "advert_int", cfg.AdvertInt, "source", src, "peers", cfg.UnicastPeers)
	m.start()
	var pub published
	i.publish(m, &pub)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if next := m.next(); next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			m.stop()
			i.publish(m, &pub)
			c.Close() // no advert after the resignation
			close(i.resigned)
			return
		case p := <-pkts:
			i.handle(m, p)
		case <-i.kick:
		case d := <-lw.c:
			if len(d) > 0 {
				i.log.Warn("vrrp tracked interface down", "interfaces", d)
			} else {
				i.log.Info("vrrp tracked interfaces up")
			}
			linksDown = d
		case <-timer.C:
			m.tick()
		}
		if prio, fault := i.health(linksDown); prio != m.prio || fault != m.fault {
			m.setHealth(fault, prio)
		}
		i.publish(m, &pub)
	}
}

// read passes received packets to the loop until the socket is closed.
// Errors in a row past deafAfter set i.deaf (the loop then holds the
// instance in FAULT) until a packet arrives again; meanwhile it retries
// with a growing pause rather than spin.
func (i *Instance) read(ctx context.Context, recv func() (rawPacket, error), out chan<- rawPacket) {
	failures, pause := 0, 10*time.Millisecond
	for {
		p, err := recv()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			if failures++; failures == deafAfter {
				i.log.Error("vrrp instance cannot receive adverts; in FAULT until it can", "err", err)
				i.setDeaf(true)
			}
			if failures >= deafAfter {
				select {
				case <-time.After(pause):
				case <-ctx.Done():
					return
				}
				pause = min(2*pause, time.Second)
			}
			continue
		}
		if failures >= deafAfter {
			i.log.Info("vrrp instance receives adverts again")
			i.setDeaf(false)
		}
		failures, pause = 0, 10*time.Millisecond
		p.payload = slices.Clone(p.payload)
		select {
		case out <- p:
		case <-ctx.Done():
			return
		}
	}
}

// deafAfter is how many receive errors in a row make an instance deaf.
const deafAfter = 100

func (i *Instance) setDeaf(deaf bool) {
	i.deaf.Store(deaf)
	select {
	case i.kick <- struct{}{}:
	default:
	}
}

// handle filters and decodes one packet, then feeds it to the machine.
func (i *Instance) handle(m *machine, p rawPacket) {
	if len(p.payload) >= 2 && p.payload[1] != m.cfg.vrid {
		return // another virtual router: ignored, not dropped
	}
	var reason string
	unicast := len(i.cfg.UnicastPeers) > 0
	// As keepalived: an instance hears adverts only the way it sends them.
	// RFC 5798 wants TTL 255, which proves the sender on the link. A
	// unicast advert may cross routers, so, as keepalived does, the TTL
	// check applies to multicast only.
	if p.dst.IsMulticast() == unicast {
		reason = ReasonDestination
	} else if p.ttl != 255 && !unicast {
		reason = ReasonTTL
	} else if a, err := Decode(p.payload, p.src, p.dst); err != nil {
		reason = ReasonShort
		var de *DecodeError
		if errors.As(err, &de) {
			reason = de.Reason
		}
		i.log.Debug("vrrp packet dropped", "from", p.src, "err", err)
	} else {
		reason = m.receive(p.src, &a)
	}
	if reason == "" {
		return
	}
	i.mu.Lock()
	i.status.Dropped[reason]++
	i.mu.Unlock()
	if i.met != nil {
		i.met.dropped.WithLabelValues(i.cfg.Name, reason).Inc()
	}
}

// transition performs the side effects of a state change, in keepalived's
// order: addresses first when becoming master, removed first when leaving
// it (after OnLeaveMaster); then the notify scripts.
func (i *Instance) transition(v *vips, n *notifier, from, to State, prio int) {
	leaving := from == StateMaster && i.onLeave != nil
	if leaving {
		// Sessions first: their FIN must leave from the VIP while it is
		// still here, or their clients learn only at their next packet.
		i.onLeave(false)
	}
	if to != StateMaster {
		v.remove() // also retries an address an earlier removal left
	}
	if leaving {
		i.onLeave(true) // clients accepted through the VIP meanwhile
	}
	cfg := i.cfg
	switch to {
	case StateMaster:
		v.add()
		n.transition(cfg.NotifyMaster, cfg.Notify, cfg.Name, "MASTER", prio)
	case StateBackup:
		n.transition(cfg.NotifyBackup, cfg.Notify, cfg.Name, "BACKUP", prio)
	case StateFault:
		n.transition(cfg.NotifyFault, cfg.Notify, cfg.Name, "FAULT", prio)
	case StateStopped:
		n.transition(cfg.NotifyStop, cfg.Notify, cfg.Name, "STOP", prio)
	}
}

// published holds the machine counters already added to the metrics.
type published struct {
	transitions, masterChanges, sent, received uint64
}

// publish copies the machine's state to Status and the metrics.
func (i *Instance) publish(m *machine, p *published) {
	master := ""
	if m.master.IsValid() {
		master = m.master.String()
	}
	i.mu.Lock()
	s := &i.status
	s.State = m.state.String()
	s.EffectivePriority = m.prio
	s.Master = master
	s.Transitions = m.transitions
	s.MasterChanges = m.masterChanges
	s.AdvertsSent = m.sent
	s.AdvertsReceived = m.received
	i.mu.Unlock()
	met := i.met
	if met == nil {
		return
	}
	name := i.cfg.Name
	met.state.WithLabelValues(name).Set(stateValue(m.state))
	met.priority.WithLabelValues(name).Set(float64(m.prio))
	add := func(c interface{ Add(float64) }, now uint64, last *uint64) {
		if now > *last {
			c.Add(float64(now - *last))
			*last = now
		}
	}
	add(met.transitions.WithLabelValues(name), m.transitions, &p.transitions)
	add(met.masterChanges.WithLabelValues(name), m.masterChanges, &p.masterChanges)
	add(met.sent.WithLabelValues(name), m.sent, &p.sent)
	add(met.received.WithLabelValues(name), m.received, &p.received)
}
