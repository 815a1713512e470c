package conf

import (
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Config is a whole hamr configuration file after defaults are applied and
// validation has passed. Load and Parse return it; nothing else constructs
// one outside tests. README.md (Configuration) describes every key.
type Config struct {
	File   string   // path the configuration was read from
	Global Global   // [global]
	IO     IO       // [io]
	Logger Logger   // [logger]
	Admin  Admin    // [admin]
	Health Health   // [health]: defaults for every route
	Routes []*Route // [routing.NAME], sorted by Name
	VRRP   []*VRRP  // [vrrp.NAME], sorted by Name
}

// Global holds process-wide settings ([global]).
type Global struct {
	// DrainTimeout is how long SIGTERM waits for open sessions to end
	// before closing them. Default 30s.
	DrainTimeout time.Duration // > 0
}

// IO is the [io] section, as MySQL Router's.
type IO struct {
	// Threads is the number of event loops of each route: the threads
	// that accept, connect and relay its clients. 0 (the default) runs
	// one per CPU hamr may use (GOMAXPROCS). Read at start only.
	Threads int // 0-1024

	// KernelRelay (experimental, default false) hands each IPv4 session
	// to the kernel after its first replies (a BPF sockmap program
	// relays its bytes), so that queries cross hamr without waking it.
	// The kernel applies no flow control across that relay: when one
	// side reads slower than the other sends, the bytes wait in this
	// host's kernel memory without bound. Where the kernel refuses the
	// program (no CAP_BPF or CAP_NET_ADMIN, an old kernel) hamr logs why
	// and relays in user space. Read at start only.
	KernelRelay bool
}

// Logger is the [logger] section.
type Logger struct {
	Level string // debug | info | warn | error; default info
}

// Admin is the [admin] section: the HTTP endpoint for /metrics, /status and
// operator commands.
type Admin struct {
	Address   string // host:port; default 127.0.0.1:8081; "off" disables; "" never
	Token     string // optional bearer token; not with TokenFile
	TokenFile string // optional absolute path of a file holding the bearer token (trimmed); not with Token
}

// Health levels.
const (
	LevelTCP   = "tcp"
	LevelLogin = "login"
	LevelRole  = "role"
)

// Health is the [health] section, and the effective per-route health
// settings after [routing.NAME.health] overrides are merged over it.
type Health struct {
	Interval time.Duration // > 0; default 500ms
	Timeout  time.Duration // > 0; default 1s
	Rise     int           // passes to mark a destination up, >= 1; default 2
	Fall     int           // failures to mark it down, >= 1; default 2
	Level    string        // tcp | login | role; default login if User set, else tcp
	User     string        // MySQL user for login and role; required by them
	Password string        // default ""
}

// Route modes.
const (
	ModeReadWrite = "read-write"
	ModeReadOnly  = "read-only"
)

// Routing strategies.
const (
	FirstAvailable         = "first-available"
	NextAvailable          = "next-available"
	RoundRobin             = "round-robin"
	RoundRobinWithFallback = "round-robin-with-fallback"
)

// Route is one [routing.NAME] section.
type Route struct {
	Name         string
	BindAddress  string   // IP literal in netip's canonical form; default 127.0.0.1
	BindPort     int      // required, 1-65535
	Mode         string   // read-write | read-only; required
	Strategy     string   // default first-available (read-write), round-robin (read-only), round-robin-with-fallback (read-only with Fallback)
	Destinations []string // host:port as written (host an IP or hostname), at least one, no duplicates

	ConnectTimeout        time.Duration // per dial attempt, > 0; default 1s
	MaxConnections        int           // per route, >= 1; default 512
	Fallback              string        // name of a read-write route; read-only routes only; default none
	MaxReplicationLag     time.Duration // read-only routes; needs health level role; default 0 = not checked
	CloseListenerWhenDown bool          // close the port while no destination is up; default false

	Health Health // effective: [health] with [routing.NAME.health] merged over it
}

// Addr is the route's listen address as host:port, with IPv6 addresses in
// brackets.
func (r *Route) Addr() string {
	return net.JoinHostPort(r.BindAddress, strconv.Itoa(r.BindPort))
}

// SharesPort reports whether r and o listen on the same port of the
// same address; an unspecified address (0.0.0.0 or ::) takes the port on
// every address. Routes whose bind_address does not parse share nothing.
func (r *Route) SharesPort(o *Route) bool {
	a, err := netip.ParseAddr(r.BindAddress)
	if err != nil {
		return false
	}
	b, err := netip.ParseAddr(o.BindAddress)
	if err != nil {
		return false
	}
	a, b = a.Unmap(), b.Unmap()
	return r.BindPort == o.BindPort && (a == b || a.IsUnspecified() || b.IsUnspecified())
}

// VRRP is one [vrrp.NAME] section: a keepalived vrrp_instance.
type VRRP struct {
	Name             string
	Interface        string         // required
	VirtualRouterID  int            // required, 1-255
	Priority         int            // 1-255, default 100; 255 = address owner
	AdvertInt        time.Duration  // default 1s; v2: whole seconds 1-255s; v3: multiple of 10ms, 10ms-40.95s
	Version          int            // 2 or 3; default 3
	AuthPass         string         // v2 only, simple PASS, 1-8 bytes; default none
	State            string         // initial hint, MASTER | BACKUP (keepalived compatibility); default BACKUP
	Nopreempt        bool           // default false; never with State MASTER
	PreemptDelay     time.Duration  // 0-1000s; default 0; never with Nopreempt
	VirtualIPAddress []netip.Prefix // IPv4, required; a bare address gets /32; host bits kept
	UnicastSrcIP     netip.Addr     // IPv4, optional; zero: the interface's first IPv4 address
	UnicastPeers     []netip.Addr   // IPv4, optional: send to each instead of 224.0.0.18

	// TrackRoutes maps a route name to a priority weight (-253..253)
	// applied while that route has no healthy destination. Weight 0 puts
	// the instance in Fault. Every name is a route in Config.Routes.
	// Default nil.
	TrackRoutes    map[string]int
	TrackInterface []string // link down -> Fault; default none

	GarpMasterRepeat  int           // 1-100; default 5
	GarpMasterDelay   time.Duration // default 5s; 0 = no second burst
	GarpMasterRefresh time.Duration // default 0 = off

	// Notify scripts: an absolute program path and its arguments (a TOML
	// string split on whitespace, or an array), run without a shell.
	// nil when not set.
	NotifyMaster  []string
	NotifyBackup  []string
	NotifyFault   []string
	NotifyStop    []string
	Notify        []string      // gets INSTANCE NAME STATE PRIORITY appended
	NotifyTimeout time.Duration // > 0; default 10s
}
