package conf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../examples/*")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(route + "[routing.rw.health]\nlevel = \"role\"\n"))
	f.Add([]byte(vrrpOK + "track_routes = { rw = -30 }\nversion = 2\nadvert_int = \"2s\"\n" + route))
	f.Add([]byte("[routing:rw]\n"))
	f.Add([]byte(`[global]
drain_timeout = "5s"
[admin]
address = ":8081"
token_file = "/etc/hamr/token"
[routing.a]
bind_address = "::"
bind_port = 7001
mode = "read-write"
strategy = "next-available"
destinations = ["[::1]:3306", "db1.example.com:3306"]
close_listener_when_down = true
[routing.b]
bind_address = "10.0.0.1"
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.2:3306"]
fallback = "a"
max_replication_lag = "1s"
[routing.b.health]
level = "role"
user = "u"
[vrrp.V]
interface = "eth0"
virtual_router_id = 7
version = 2
auth_pass = "pw"
advert_int = "3s"
state = "MASTER"
preempt_delay = "10s"
virtual_ipaddress = ["10.0.0.1", "10.0.0.5/24"]
unicast_src_ip = "10.0.0.3"
unicast_peers = ["10.0.0.4"]
track_interface = ["eth0"]
garp_master_refresh = "60s"
notify = ["/bin/n", "x y"]
`))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err == nil {
			checkValid(t, c)
			return
		}
		var errs *Errors
		if !errors.As(err, &errs) || len(errs.List) == 0 {
			t.Fatalf("error %T without problems: %v", err, err)
		}
		lines := strings.Count(string(data), "\n") + 1
		for i, e := range errs.List {
			if e.Line < 1 || e.Line > lines || e.Msg == "" {
				t.Errorf("bad error %q (file has %d lines)", e, lines)
			}
			if i > 0 && e.Line < errs.List[i-1].Line {
				t.Errorf("errors not sorted by line:\n%v", err)
			}
		}
	})
}

// checkValid fails t unless c satisfies everything the rest of hamr may
// assume of a Config that Parse returned without error.
func checkValid(t *testing.T, c *Config) {
	t.Helper()
	bad := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	}
	if c.Global.DrainTimeout <= 0 {
		bad("drain timeout %v", c.Global.DrainTimeout)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Logger.Level) {
		bad("logger level %q", c.Logger.Level)
	}
	if c.Admin.Address == "" || c.Admin.Token != "" && c.Admin.TokenFile != "" {
		bad("admin %+v", c.Admin)
	}
	checkHealth := func(name string, h Health) {
		t.Helper()
		if h.Interval <= 0 || h.Timeout <= 0 || h.Rise < 1 || h.Fall < 1 ||
			!slices.Contains([]string{LevelTCP, LevelLogin, LevelRole}, h.Level) ||
			h.Level != LevelTCP && h.User == "" {
			bad("%s health %+v", name, h)
		}
	}
	checkHealth("global", c.Health)

	if len(c.Routes) == 0 {
		bad("no routes")
	}
	routes := map[string]*Route{}
	binds := map[netip.AddrPort]bool{}
	for i, r := range c.Routes {
		if i > 0 && c.Routes[i-1].Name >= r.Name {
			bad("routes not sorted or not unique: %q, %q", c.Routes[i-1].Name, r.Name)
		}
		routes[r.Name] = r
		a, err := netip.ParseAddr(r.BindAddress)
		if err != nil || r.BindPort < 1 || r.BindPort > 65535 {
			bad("route %s binds %q port %d", r.Name, r.BindAddress, r.BindPort)
		}
		if _, _, err := net.SplitHostPort(r.Addr()); err != nil {
			bad("route %s Addr %q: %v", r.Name, r.Addr(), err)
		}
		ap := netip.AddrPortFrom(a.Unmap(), uint16(r.BindPort))
		wild := netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(r.BindPort))
		wild6 := netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(r.BindPort))
		if binds[ap] || binds[wild] || binds[wild6] || a.IsUnspecified() && slices.ContainsFunc(c.Routes[:i], func(o *Route) bool { return o.BindPort == r.BindPort }) {
			bad("route %s: %s bound twice", r.Name, ap)
		}
		binds[ap] = true
		switch {
		case r.Mode == ModeReadWrite && (r.Strategy == FirstAvailable || r.Strategy == NextAvailable):
		case r.Mode == ModeReadOnly && r.Strategy == RoundRobin && r.Fallback == "":
		case r.Mode == ModeReadOnly && r.Strategy == RoundRobinWithFallback && r.Fallback != "":
		default:
			bad("route %s: mode %q strategy %q fallback %q", r.Name, r.Mode, r.Strategy, r.Fallback)
		}
		if len(r.Destinations) == 0 {
			bad("route %s: no destinations", r.Name)
		}
		for _, d := range r.Destinations {
			if host, _, err := net.SplitHostPort(d); err != nil || host == "" {
				bad("route %s: destination %q", r.Name, d)
			}
		}
		if r.ConnectTimeout <= 0 || r.MaxConnections < 1 || r.MaxReplicationLag < 0 ||
			r.MaxReplicationLag > 0 && (r.Health.Level != LevelRole || r.Mode != ModeReadOnly) {
			bad("route %+v", *r)
		}
		checkHealth("route "+r.Name, r.Health)
	}
	for _, r := range c.Routes {
		if r.Fallback != "" && (routes[r.Fallback] == nil || routes[r.Fallback].Mode != ModeReadWrite) {
			bad("route %s: fallback %q", r.Name, r.Fallback)
		}
	}

	for i, v := range c.VRRP {
		if i > 0 && c.VRRP[i-1].Name >= v.Name {
			bad("VRRP not sorted or not unique")
		}
		if v.Interface == "" || v.VirtualRouterID < 1 || v.VirtualRouterID > 255 ||
			v.Priority < 1 || v.Priority > 255 || v.State != "MASTER" && v.State != "BACKUP" ||
			len(v.VirtualIPAddress) == 0 || v.GarpMasterRepeat < 1 || v.GarpMasterRepeat > 100 ||
			v.GarpMasterDelay < 0 || v.GarpMasterRefresh < 0 || v.NotifyTimeout <= 0 ||
			v.PreemptDelay < 0 || v.PreemptDelay > 1000*time.Second {
			bad("vrrp %+v", *v)
		}
		switch v.Version {
		case 2:
			if v.AdvertInt < time.Second || v.AdvertInt > 255*time.Second || v.AdvertInt%time.Second != 0 ||
				len(v.AuthPass) > 8 {
				bad("vrrp v2 %+v", *v)
			}
		case 3:
			if v.AdvertInt < 10*time.Millisecond || v.AdvertInt > 40950*time.Millisecond ||
				v.AdvertInt%(10*time.Millisecond) != 0 || v.AuthPass != "" {
				bad("vrrp v3 %+v", *v)
			}
		default:
			bad("vrrp version %d", v.Version)
		}
		for _, p := range v.VirtualIPAddress {
			if !p.IsValid() || !p.Addr().Is4() {
				bad("vrrp %s: VIP %v", v.Name, p)
			}
		}
		for _, a := range append(slices.Clone(v.UnicastPeers), v.UnicastSrcIP) {
			if a.IsValid() && !a.Is4() {
				bad("vrrp %s: address %v", v.Name, a)
			}
		}
		for name, w := range v.TrackRoutes {
			if routes[name] == nil || w < -253 || w > 253 {
				bad("vrrp %s: track %q weight %d", v.Name, name, w)
			}
		}
		for _, argv := range [][]string{v.NotifyMaster, v.NotifyBackup, v.NotifyFault, v.NotifyStop, v.Notify} {
			if argv != nil && (len(argv) == 0 || !filepath.IsAbs(argv[0])) {
				bad("vrrp %s: notify %q", v.Name, argv)
			}
		}
		for _, o := range c.VRRP[:i] {
			if o.Interface == v.Interface && o.VirtualRouterID == v.VirtualRouterID {
				bad("vrrp %s and %s share VRID %d on %s", o.Name, v.Name, v.VirtualRouterID, v.Interface)
			}
		}
	}
}
