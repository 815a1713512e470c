package conf

import (
	"net/netip"
	"time"
)

// Config is a whole hamr configuration file after defaults are applied and
// validation has passed. Load returns it; nothing else constructs one outside
// tests.
type Config struct {
	File   string   // path the configuration was read from
	Global Global   // [global]
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
	DrainTimeout time.Duration
}

// Logger is the [logger] section.
type Logger struct {
	Level string // debug | info | warn | error; default info
}

// Admin is the [admin] section: the HTTP endpoint for /metrics, /status and
// operator commands.
type Admin struct {
	Address   string // host:port; default 127.0.0.1:8081; "" never (use "off" to disable)
	Token     string // optional bearer token
	TokenFile string // optional file holding the bearer token (trimmed)
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
	Interval time.Duration // default 500ms
	Timeout  time.Duration // default 1s
	Rise     int           // default 2
	Fall     int           // default 2
	Level    string        // tcp | login | role; default login if User set, else tcp
	User     string
	Password string
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
	BindAddress  string   // default 127.0.0.1
	BindPort     int      // required, 1-65535
	Mode         string   // read-write | read-only; required
	Strategy     string   // default first-available (read-write) or round-robin (read-only)
	Destinations []string // host:port, at least one, no duplicates

	ConnectTimeout        time.Duration // per dial attempt; default 1s
	MaxConnections        int           // per route; default 512; 0 never after defaults
	Fallback              string        // name of a read-write route; read-only routes only
	MaxReplicationLag     time.Duration // 0 = not checked; needs health level role
	CloseListenerWhenDown bool          // close the port while no destination is up

	Health Health // effective: [health] with [routing.NAME.health] merged over it
}

// Addr is the route's listen address as host:port.
func (r *Route) Addr() string {
	return netip.AddrPortFrom(netip.MustParseAddr(r.BindAddress), uint16(r.BindPort)).String()
}

// VRRP is one [vrrp.NAME] section: a keepalived vrrp_instance.
type VRRP struct {
	Name             string
	Interface        string        // required
	VirtualRouterID  int           // required, 1-255
	Priority         int           // 1-255, default 100; 255 = address owner
	AdvertInt        time.Duration // default 1s; v2: whole seconds; v3: multiple of 10ms, <= 40.95s
	Version          int           // 2 or 3; default 3
	AuthPass         string        // v2 only, simple PASS, 1-8 bytes
	State            string        // initial hint, MASTER | BACKUP (keepalived compatibility); default BACKUP
	Nopreempt        bool
	PreemptDelay     time.Duration  // default 0
	VirtualIPAddress []netip.Prefix // required; a bare address gets /32
	UnicastSrcIP     netip.Addr     // optional; default the interface's first IPv4 address
	UnicastPeers     []netip.Addr   // optional: send to each instead of 224.0.0.18

	// TrackRoutes maps a route name to a priority weight applied while that
	// route has no healthy destination. Weight 0 puts the instance in Fault.
	TrackRoutes    map[string]int
	TrackInterface []string // link down -> Fault

	GarpMasterRepeat  int           // default 5
	GarpMasterDelay   time.Duration // default 5s; 0 = no second burst
	GarpMasterRefresh time.Duration // default 0 = off

	// Notify scripts: a program and its arguments split on spaces, run
	// without a shell.
	NotifyMaster  []string
	NotifyBackup  []string
	NotifyFault   []string
	NotifyStop    []string
	Notify        []string      // gets INSTANCE NAME STATE PRIORITY appended
	NotifyTimeout time.Duration // default 10s
}
