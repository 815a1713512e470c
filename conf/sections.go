package conf

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Advice for names people bring from mysqlrouter.conf and keepalived.conf.
var (
	topHints = map[string]string{
		"vrrp_instance": "keepalived-style section (use [vrrp.NAME])",
		"DEFAULT":       "mysqlrouter's [DEFAULT] has no equivalent (see README.md, Configuration)",
	}
	routeHints = map[string]string{
		"routing_strategy":       "use strategy",
		"client_connect_timeout": "not supported: hamr relays bytes and never waits for a client handshake",
		"max_connect_errors":     "not applicable: hamr never blocks a client host after errors",
		"protocol":               "not needed: hamr relays any TCP protocol",
		"socket":                 "not supported: hamr listens on TCP only",
	}
	vrrpHints = map[string]string{
		"authentication": "use auth_pass with version = 2",
		"auth_type":      "only PASS is supported: set auth_pass with version = 2",
		"track_script":   "use track_routes",
		"unicast_peer":   "use unicast_peers",
	}
)

// decode reads every section of the file into a Config without defaults.
func (d *decoder) decode() *Config {
	d.sections = make(map[string]*table)
	d.badNames = make(map[string]bool)
	d.routeT = make(map[*Route]*table)
	d.healthT = make(map[*Route]*table)
	d.vrrpT = make(map[*VRRP]*table)
	d.tracks = make(map[*VRRP]map[string]int)

	root := d.table(nil, d.root)
	c := &Config{File: d.file}
	for _, k := range []string{"global", "io", "logger", "admin", "health", "routing", "vrrp"} {
		d.sections[k] = root.sub(k)
	}
	d.global(d.sections["global"], &c.Global)
	d.io(d.sections["io"], &c.IO)
	d.logger(d.sections["logger"], &c.Logger)
	d.admin(d.sections["admin"], &c.Admin)
	d.healthKeys(d.sections["health"], &c.Health)

	routes := d.sections["routing"]
	for _, name := range routes.names() {
		if t := d.named(routes, name, "route"); t != nil {
			c.Routes = append(c.Routes, d.route(t, name))
		}
	}
	if len(routes.names()) == 0 {
		root.errorf("routing", "no [routing.NAME] section: nothing to route (at least one route)")
	}
	vrrps := d.sections["vrrp"]
	for _, name := range vrrps.names() {
		if t := d.named(vrrps, name, "VRRP instance"); t != nil {
			c.VRRP = append(c.VRRP, d.vrrp(t, name))
		}
	}

	// Unknown sections, with advice for mysqlrouter names such as a quoted
	// ["routing:rw"].
	for _, k := range sortedKeys(d.root) {
		if name, ok := strings.CutPrefix(k, "routing:"); ok {
			root.get(k)
			root.errorf(k, "mysqlrouter-style section (use [routing.%s])", name)
		}
	}
	root.done(topHints)
	return c
}

// validName matches names that can appear unquoted in TOML, metrics labels
// and admin URLs.
var validName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// named returns the table of [parent.name], or nil after reporting why it
// cannot be one.
func (d *decoder) named(parent *table, name, noun string) *table {
	t := parent.sub(name)
	if t.n == nil {
		return nil
	}
	if !validName.MatchString(name) {
		d.badNames[name] = true
		parent.errorf(name, "%q is not a %s name (letters, digits, '_' and '-')", name, noun)
		return nil
	}
	return t
}

func (d *decoder) global(t *table, g *Global) {
	g.DrainTimeout, _ = t.durationIn("drain_timeout", time.Millisecond, 24*time.Hour, false)
	t.done(nil)
}

func (d *decoder) io(t *table, io *IO) {
	io.Threads, _ = t.integer("threads", 0, maxThreads, "")
	io.KernelRelay, _ = t.boolean("kernel_relay")
	t.done(nil)
}

// maxThreads bounds [io] threads, as MySQL Router does.
const maxThreads = 1024

func (d *decoder) logger(t *table, l *Logger) {
	l.Level, _ = t.oneOf("level", "a level", "debug", "info", "warn", "error")
	t.done(nil)
}

func (d *decoder) admin(t *table, a *Admin) {
	if s, ok := t.str("address"); ok {
		if s == "off" {
			a.Address = s
		} else if msg := checkHostPort(s, true); msg != "" {
			t.errorf("address", "%s (host:port with a port 1-65535, such as \"127.0.0.1:8081\", or \"off\")", msg)
		} else {
			a.Address = s
		}
	}
	if tok, ok := t.nonEmpty("token", "a bearer token, or leave token out"); ok {
		if msg := CheckToken(tok); msg != "" {
			t.errorf("token", "%s", msg)
		} else {
			a.Token = tok
		}
	}
	if s, ok := t.nonEmpty("token_file", "an absolute path"); ok {
		if !filepath.IsAbs(s) {
			t.errorf("token_file", "%q is not an absolute path (an absolute path such as /etc/hamr/token)", s)
		} else {
			a.TokenFile = s
		}
	}
	if t.has("token") && t.has("token_file") {
		t.errorAt(max(t.line("token"), t.line("token_file")), "token_file",
			"set together with token (one or the other)")
	}
	t.done(nil)
}

// healthKeys reads the keys shared by [health] and [routing.NAME.health].
func (d *decoder) healthKeys(t *table, h *Health) {
	h.Interval, _ = t.durationIn("interval", 10*time.Millisecond, time.Hour, false)
	h.Timeout, _ = t.durationIn("timeout", 10*time.Millisecond, time.Hour, false)
	h.Rise, _ = t.integer("rise", 1, maxInt, "")
	h.Fall, _ = t.integer("fall", 1, maxInt, "")
	h.Level, _ = t.oneOf("level", "a health level", LevelTCP, LevelLogin, LevelRole)
	h.User, _ = t.nonEmpty("user", "a MySQL user name")
	h.Password, _ = t.str("password")
	t.done(nil)
}

func (d *decoder) route(t *table, name string) *Route {
	r := &Route{Name: name}
	d.routeT[r] = t

	if s, ok := t.str("bind_address"); ok {
		if a, err := netip.ParseAddr(s); err != nil {
			t.errorf("bind_address", "%q is not an IP address (an IP literal such as 127.0.0.1, or 0.0.0.0 for all)", s)
		} else {
			r.BindAddress = a.String()
		}
	}
	r.BindPort, _ = t.integer("bind_port", 1, 65535, "a port")
	if !t.has("bind_port") {
		t.missing("bind_port", "a port 1-65535")
	}
	r.Mode, _ = t.oneOf("mode", "a mode", ModeReadWrite, ModeReadOnly)
	if !t.has("mode") {
		t.missing("mode", ModeReadWrite+" | "+ModeReadOnly)
	}
	r.Strategy, _ = t.oneOf("strategy", "a strategy", FirstAvailable, NextAvailable, RoundRobin, RoundRobinWithFallback)
	r.Destinations = d.destinations(t)
	r.ConnectTimeout, _ = t.durationIn("connect_timeout", time.Millisecond, time.Hour, false)
	r.MaxConnections, _ = t.integer("max_connections", 1, maxInt, "")
	r.Fallback, _ = t.nonEmpty("fallback", "the name of a read-write route")
	r.MaxReplicationLag, _ = t.durationIn("max_replication_lag", time.Second, 365*24*time.Hour, true)
	r.CloseListenerWhenDown, _ = t.boolean("close_listener_when_down")

	ht := t.sub("health")
	d.healthT[r] = ht
	d.healthKeys(ht, &r.Health)
	t.done(routeHints)
	return r
}

func (d *decoder) destinations(t *table) []string {
	const key = "destinations"
	list, lines, ok := t.strs(key)
	if !ok {
		if !t.has(key) {
			t.missing(key, `an array of "host:port"`)
		}
		return nil
	}
	if len(list) == 0 {
		t.errorf(key, `empty (at least one "host:port")`)
		return nil
	}
	seen := make(map[string]bool)
	valid := true
	for i, s := range list {
		if msg := checkHostPort(s, false); msg != "" {
			t.errorAt(lines[i], key, "%s (an IP address or hostname and a port 1-65535, such as \"10.0.0.1:3306\")", msg)
			valid = false
			continue
		}
		k := canonicalHostPort(s)
		if seen[k] {
			t.errorAt(lines[i], key, "%q is listed twice (each destination once)", s)
			valid = false
		}
		seen[k] = true
	}
	if !valid {
		return nil
	}
	return list
}

// checkHostPort returns what is wrong with s as host:port, or "". The host
// is an IP address or a hostname; emptyHost allows ":8081" (all addresses).
func checkHostPort(s string, emptyHost bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("%q is not host:port", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Sprintf("%q has a bad port", s)
	}
	switch {
	case host == "" && emptyHost:
		return ""
	case host == "":
		return fmt.Sprintf("%q has no host", s)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	// A name whose last label is all digits can only be a mistyped
	// address (RFC 3696 2): a resolver would fail on it for ever.
	if labels := strings.Split(strings.TrimSuffix(host, "."), "."); strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Sprintf("%q is not a valid IP address", s)
	}
	if !validHostname(host) {
		return fmt.Sprintf("%q has a bad host", s)
	}
	return ""
}

// canonicalHostPort gives one spelling per destination, so "10.0.0.1:03306"
// and "10.0.0.1:3306" count as the same. s must pass checkHostPort.
func canonicalHostPort(s string) string {
	host, port, _ := net.SplitHostPort(s)
	p, _ := strconv.Atoi(port)
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	} else {
		host = strings.ToLower(strings.TrimSuffix(host, "."))
	}
	return net.JoinHostPort(host, strconv.Itoa(p))
}

// validHostname reports whether s is a DNS name (RFC 1123 labels).
func validHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// validInterface reports whether s can be a Linux interface name.
func validInterface(s string) bool {
	return s != "" && len(s) < 16 && s != "." && s != ".." &&
		!strings.ContainsAny(s, "/: \t\n") // ':' marks an alias label, not a device
}

func (d *decoder) vrrp(t *table, name string) *VRRP {
	v := &VRRP{Name: name}
	d.vrrpT[v] = t

	if s, ok := t.str("interface"); ok {
		if validInterface(s) {
			v.Interface = s
		} else {
			t.errorf("interface", "%q is not an interface name (such as eth1; at most 15 bytes, no '/', ':' or spaces)", s)
		}
	} else if !t.has("interface") {
		t.missing("interface", "a network interface such as eth1")
	}
	v.VirtualRouterID, _ = t.integer("virtual_router_id", 1, 255, "")
	if !t.has("virtual_router_id") {
		t.missing("virtual_router_id", "1-255, the same on both routers")
	}
	v.Priority, _ = t.integer("priority", 1, 255, "")
	v.AdvertInt, _ = t.duration("advert_int", true)
	if n, ok := t.integer("version", 2, 3, ""); ok {
		v.Version = n
	}
	if s, ok := t.str("auth_pass"); ok {
		if len(s) < 1 || len(s) > 8 {
			t.errorf("auth_pass", "%d bytes (1-8 bytes)", len(s))
		} else {
			v.AuthPass = s
		}
	}
	v.State, _ = t.oneOf("state", "a state", "MASTER", "BACKUP")
	v.Nopreempt, _ = t.boolean("nopreempt")
	if dur, ok := t.duration("preempt_delay", false); ok {
		if dur > 1000*time.Second {
			t.errorf("preempt_delay", "%s is too long (0-1000s)", t.written("preempt_delay"))
		} else {
			v.PreemptDelay = dur
		}
	}
	v.VirtualIPAddress = d.vips(t)
	if !t.has("virtual_ipaddress") {
		t.missing("virtual_ipaddress", `an array of IPv4 addresses such as ["172.168.1.20/24"]`)
	}
	if s, ok := t.str("unicast_src_ip"); ok {
		if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
			t.errorf("unicast_src_ip", "%q is not an IPv4 address (such as 172.168.1.11)", s)
		} else {
			v.UnicastSrcIP = a
		}
	}
	if list, lines, ok := t.strs("unicast_peers"); ok {
		for i, s := range list {
			a, err := netip.ParseAddr(s)
			switch {
			case err != nil || !a.Is4():
				t.errorAt(lines[i], "unicast_peers", "%q is not an IPv4 address (such as 172.168.1.12)", s)
			case slices.Contains(v.UnicastPeers, a):
				t.errorAt(lines[i], "unicast_peers", "%q is listed twice (each peer once)", s)
			default:
				v.UnicastPeers = append(v.UnicastPeers, a)
			}
		}
	}
	d.trackRoutes(t, v)
	if list, lines, ok := t.strs("track_interface"); ok {
		for i, s := range list {
			if !validInterface(s) {
				t.errorAt(lines[i], "track_interface", "%q is not an interface name (such as eth1)", s)
				continue
			}
			v.TrackInterface = append(v.TrackInterface, s)
		}
	}
	v.GarpMasterRepeat, _ = t.integer("garp_master_repeat", 1, 100, "")
	v.GarpMasterDelay, _ = t.durationIn("garp_master_delay", time.Millisecond, time.Hour, true)
	v.GarpMasterRefresh, _ = t.durationIn("garp_master_refresh", time.Second, 24*time.Hour, true)
	v.NotifyMaster = d.notify(t, "notify_master")
	v.NotifyBackup = d.notify(t, "notify_backup")
	v.NotifyFault = d.notify(t, "notify_fault")
	v.NotifyStop = d.notify(t, "notify_stop")
	v.Notify = d.notify(t, "notify")
	v.NotifyTimeout, _ = t.durationIn("notify_timeout", time.Millisecond, time.Hour, false)
	t.done(vrrpHints)
	return v
}

func (d *decoder) vips(t *table) []netip.Prefix {
	const key = "virtual_ipaddress"
	list, lines, ok := t.strs(key)
	if !ok {
		return nil
	}
	if len(list) == 0 {
		t.errorf(key, `empty (at least one IPv4 address such as "172.168.1.20/24")`)
	}
	var out []netip.Prefix
	for i, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			var a netip.Addr
			if a, err = netip.ParseAddr(s); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		switch {
		case err != nil || !p.Addr().Is4():
			t.errorAt(lines[i], key, "%q is not an IPv4 address (a.b.c.d or a.b.c.d/len)", s)
		case p.Addr().IsUnspecified() || p.Addr().IsMulticast() || p.Addr() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			t.errorAt(lines[i], key, "%q is not a unicast address (a host address such as 172.168.1.20/24)", s)
		case slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Addr() == p.Addr() }):
			t.errorAt(lines[i], key, "%q is listed twice (each address once)", s)
		default:
			out = append(out, p)
		}
	}
	return out
}

// trackRoutes reads track_routes: a table of route = weight, or an array
// of route names (weight 0: the instance goes to Fault).
func (d *decoder) trackRoutes(t *table, v *VRRP) {
	const key = "track_routes"
	n := t.get(key)
	if n == nil {
		return
	}
	v.TrackRoutes = make(map[string]int)
	lines := make(map[string]int)
	d.tracks[v] = lines
	if n.kids != nil {
		sub := d.table(n.key, n)
		for _, name := range sortedKeys(n) {
			if w, ok := sub.integer(name, -253, 253, "a weight"); ok {
				v.TrackRoutes[name] = w
				lines[name] = sub.line(name)
			}
		}
		return
	}
	if _, ok := n.val.([]any); !ok {
		t.typeError(key, n, `a table { route = weight } or an array ["route"]`)
		return
	}
	names, elemLines, ok := t.strs(key)
	if !ok {
		return
	}
	for i, name := range names {
		if _, dup := v.TrackRoutes[name]; dup {
			t.errorAt(elemLines[i], key, "%q is listed twice (each route once)", name)
			continue
		}
		v.TrackRoutes[name] = 0
		lines[name] = elemLines[i]
	}
}

// notify reads a notify script: a string split on whitespace, or an array
// of program and arguments. The program must be an absolute path because
// scripts run without a shell or PATH lookup.
func (d *decoder) notify(t *table, key string) []string {
	n := t.get(key)
	if n == nil {
		return nil
	}
	var argv []string
	if s, ok := n.val.(string); ok {
		argv = strings.Fields(s)
	} else if _, ok := n.val.([]any); ok {
		argv, _, ok = t.strs(key)
		if !ok {
			return nil
		}
	} else {
		t.typeError(key, n, `a command line such as "/etc/hamr/notify.sh master", or an array`)
		return nil
	}
	switch {
	case len(argv) == 0:
		t.errorf(key, `empty (a command such as "/etc/hamr/notify.sh")`)
		return nil
	case !filepath.IsAbs(argv[0]):
		t.errorf(key, "%q is not an absolute path (the program must be absolute, such as /etc/hamr/notify.sh; no shell runs it)", argv[0])
		return nil
	}
	return argv
}

// CheckToken returns what makes tok unusable as a bearer token, or "".
// HTTP trims blanks around a header value and clients refuse control
// characters, so a token with either could never match: every request,
// hamr ctl's included, would be refused.
func CheckToken(tok string) string {
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c == 0x7f {
			return fmt.Sprintf("byte %d of the token is %q (no blanks or control characters: HTTP cannot carry them in a token)", i+1, c)
		}
	}
	return ""
}
