package conf

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// validate checks what involves more than one key: it runs after
// applyDefaults and skips values that decode already rejected (left zero).
func (d *decoder) validate(c *Config) {
	routes := make(map[string]*Route, len(c.Routes))
	var names, rwNames []string
	for _, r := range c.Routes {
		routes[r.Name] = r
		names = append(names, r.Name)
		if r.Mode == ModeReadWrite {
			rwNames = append(rwNames, r.Name)
		}
	}

	// A user-less login or role level in [health] is an error only where
	// a route inherits it: routes that set their own user need none there.
	for _, r := range c.Routes {
		t := d.routeT[r]
		d.checkStrategy(t, r, routes, rwNames)
		if t.has("max_replication_lag") && r.MaxReplicationLag > 0 {
			switch {
			case r.Mode == ModeReadWrite:
				t.errorf("max_replication_lag", "set on a read-write route (read-only routes only)")
			case r.Health.Level != "" && r.Health.Level != LevelRole:
				t.errorf("max_replication_lag", "needs health level %q to read replication lag (the level here is %q)", LevelRole, r.Health.Level)
			}
		}
		d.checkUser(d.healthT[r], d.sections["health"], r.Health)
	}
	d.checkBinds(c.Routes)
	d.checkAdminBind(c.Admin, c.Routes)

	type slot struct {
		iface string
		vrid  int
	}
	vrids := make(map[slot]*VRRP)
	vips := make(map[netip.Addr]*VRRP)
	for _, v := range byLine(c.VRRP, d.vrrpT) {
		t := d.vrrpT[v]
		d.checkAdvert(t, v)
		if t.has("auth_pass") && v.Version == 3 {
			t.errorf("auth_pass", "set with version 3 (version = 2 only: VRRPv3 has no authentication)")
		}
		if v.Nopreempt && v.State == "MASTER" {
			t.errorf("state", "MASTER with nopreempt (state BACKUP, the default: keepalived ignores nopreempt on a MASTER)")
		}
		if v.Nopreempt && v.Priority == 255 {
			t.errorf("nopreempt", "set with priority 255 (the address owner always takes the VIP: keepalived ignores nopreempt here; a lower priority, or no nopreempt)")
		}
		if v.Nopreempt && t.has("preempt_delay") {
			t.errorf("preempt_delay", "set with nopreempt (one or the other: preempt_delay delays a preemption that nopreempt forbids)")
		}
		for _, name := range slices.Sorted(maps.Keys(d.tracks[v])) {
			if routes[name] == nil && !d.badNames[name] {
				t.errorAt(d.tracks[v][name], "track_routes", "%q is not a route (%s)", name, routeChoice(name, names, ""))
			}
		}
		if v.UnicastSrcIP.IsValid() && slices.Contains(v.UnicastPeers, v.UnicastSrcIP) {
			t.errorf("unicast_peers", "%s is this router's unicast_src_ip (the other routers' addresses)", v.UnicastSrcIP)
		}
		if v.Interface != "" && v.VirtualRouterID != 0 {
			s := slot{v.Interface, v.VirtualRouterID}
			if prev := vrids[s]; prev != nil {
				t.errorf("virtual_router_id", "%d is also used by vrrp.%s on %s (one instance per virtual_router_id and interface)", s.vrid, prev.Name, s.iface)
			} else {
				vrids[s] = v
			}
		}
		for _, p := range v.VirtualIPAddress {
			if prev := vips[p.Addr()]; prev != nil {
				t.errorf("virtual_ipaddress", "%s is also held by vrrp.%s (each address in one instance)", p.Addr(), prev.Name)
			} else {
				vips[p.Addr()] = v
			}
		}
	}
}

// checkStrategy checks strategy, mode and fallback against each other.
// rwNames are the read-write routes, the only valid fallbacks.
func (d *decoder) checkStrategy(t *table, r *Route, routes map[string]*Route, rwNames []string) {
	rwStrategy := r.Strategy == FirstAvailable || r.Strategy == NextAvailable
	if r.Mode != "" && r.Strategy != "" && t.has("strategy") && rwStrategy != (r.Mode == ModeReadWrite) {
		allowed := RoundRobin + " | " + RoundRobinWithFallback
		if r.Mode == ModeReadWrite {
			allowed = FirstAvailable + " | " + NextAvailable
		}
		t.errorf("strategy", "%q does not fit mode %q (%s)", r.Strategy, r.Mode, allowed)
	}
	if r.Fallback == "" {
		if t.has("strategy") && r.Strategy == RoundRobinWithFallback {
			t.errorf("strategy", "%q without fallback (set fallback to a read-write route, or use %s)", r.Strategy, RoundRobin)
		}
		return
	}
	target := routes[r.Fallback]
	switch {
	case r.Mode == ModeReadWrite:
		t.errorf("fallback", "set on a read-write route (read-only routes only)")
	case target == nil && !d.badNames[r.Fallback]:
		t.errorf("fallback", "%q is not a route (%s)", r.Fallback, routeChoice(r.Fallback, rwNames, ModeReadWrite))
	case target != nil && target.Mode == ModeReadOnly:
		t.errorf("fallback", "%q is a read-only route (a read-write route)", r.Fallback)
	case t.has("strategy") && r.Strategy == RoundRobin:
		t.errorf("strategy", "%q ignores fallback (%s, or leave strategy out)", r.Strategy, RoundRobinWithFallback)
	}
}

// routeChoice says which route names are allowed, suggesting the closest.
func routeChoice(name string, names []string, mode string) string {
	what := "the name of a route"
	if mode != "" {
		what = "the name of a " + mode + " route"
	}
	if g := suggest(name, names); g != "" {
		return what + "; did you mean " + g + "?"
	}
	return what
}

// checkUser reports a login or role level without a user, at the line
// where the level was written: ht for this route, else [health].
func (d *decoder) checkUser(ht, global *table, h Health) {
	if h.User != "" || (h.Level != LevelLogin && h.Level != LevelRole) {
		return
	}
	t := global
	if ht.has("level") {
		t = ht
	}
	if !t.has("level") {
		return
	}
	t.errorf("level", "%q needs a user to log in (set user in [health] or here)", h.Level)
}

// checkBinds reports routes that listen on the same address and port. An
// unspecified address (0.0.0.0 or ::) takes the port on every address.
func (d *decoder) checkBinds(routes []*Route) {
	var seen []*Route
	for _, r := range byLine(routes, d.routeT) {
		if r.BindPort == 0 {
			continue // already reported
		}
		for _, b := range seen {
			if r.SharesPort(b) {
				d.routeT[r].errorf("bind_port", "%s:%d is also bound by routing.%s (a different port or address)",
					r.BindAddress, r.BindPort, b.Name)
				break
			}
		}
		seen = append(seen, r)
	}
}

// checkAdminBind reports a route on the admin endpoint's port: hamr
// could not start. An admin host given by name is not compared.
func (d *decoder) checkAdminBind(a Admin, routes []*Route) {
	host, port, err := net.SplitHostPort(a.Address)
	if err != nil {
		return // "off", or already reported
	}
	if host == "" {
		host = "0.0.0.0"
	}
	p, err := strconv.Atoi(port)
	if _, aerr := netip.ParseAddr(host); aerr != nil || err != nil {
		return
	}
	admin := &Route{BindAddress: host, BindPort: p}
	for _, r := range byLine(routes, d.routeT) {
		if r.BindPort != 0 && admin.SharesPort(r) {
			d.routeT[r].errorf("bind_port", "%s:%d is also the admin endpoint's ([admin] address = %q; a different port or address)",
				r.BindAddress, r.BindPort, a.Address)
		}
	}
}

// checkAdvert checks advert_int against what the VRRP version can carry:
// v2 counts whole seconds in 8 bits, v3 centiseconds in 12 bits.
func (d *decoder) checkAdvert(t *table, v *VRRP) {
	a := v.AdvertInt
	if a <= 0 || !t.has("advert_int") {
		return
	}
	switch v.Version {
	case 2:
		if a%time.Second != 0 || a > 255*time.Second {
			t.errorf("advert_int", "%s does not fit version 2 (whole seconds 1s-255s; version = 3 for less)", t.written("advert_int"))
		}
	case 3:
		if a%(10*time.Millisecond) != 0 || a > 4095*10*time.Millisecond {
			t.errorf("advert_int", "%s does not fit version 3 (a multiple of 10ms from 10ms to 40.95s)", t.written("advert_int"))
		}
	}
}

// byLine returns items in the order their tables appear in the file, so
// that a conflict is reported at the second occurrence.
func byLine[T any](items []*T, tables map[*T]*table) []*T {
	out := slices.Clone(items)
	slices.SortStableFunc(out, func(a, b *T) int { return tables[a].line("") - tables[b].line("") })
	return out
}
