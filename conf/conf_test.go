package conf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// route is a valid route for cases that test something else. It starts on
// the line after the case's own text.
const route = `
[routing.rw]
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.1:3306"]
`

// vrrpOK is a valid VRRP instance body; cases append keys to it.
const vrrpOK = `[vrrp.VI_1]
interface = "eth1"
virtual_router_id = 51
virtual_ipaddress = ["172.168.1.20/24"]
`

// TestErrors checks that each kind of problem is reported at the right
// line and key, and that nothing else is reported.
func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // "LINE key: part of the message", one per error, in order
	}{
		{"syntax", "[global]\ndrain_timeout = \"1s\n" + route,
			[]string{`2 global.drain_timeout: strings cannot contain newlines`}},
		{"broken header", "[logger]\nlevel = \"info\"\n[routing.rw\n",
			[]string{`3 : expected '.' or ']' to end table name`}},
		{"duplicate key", route + "bind_port = 7002\n",
			[]string{`6 routing.rw.bind_port: has already been defined`}},
		{"unquoted value", "[routing.rw]\nbind_port = 7001\nbind_address = 0.0.0.0\n",
			[]string{`3 routing.rw.bind_address: Invalid float value: "0.0.0.0" (quote strings: bind_address = "0.0.0.0")`}},
		{"unquoted list", "[routing.rw]\nbind_port = 7001\ndestinations = 10.0.0.1:3306,10.0.0.2:3306\n",
			[]string{`3 routing.rw.destinations: (quote strings: destinations = ["10.0.0.1:3306", "10.0.0.2:3306"])`}},
		{"mysqlrouter section", "[logger]\n[routing:rw]\nbind_port = 7001\n",
			[]string{`2 routing:rw: mysqlrouter-style section (use [routing.rw])`}},
		{"quoted mysqlrouter section", "[\"routing:rw\"]\nbind_port = 7001\n" + route,
			[]string{`1 "routing:rw": use [routing.rw]`}},
		{"unknown section", "[rooting.x]\na = 1\n" + route,
			[]string{`1 rooting: unknown key (did you mean routing?)`}},
		{"keepalived section", "[vrrp_instance.VI_1]\na = 1\n" + route,
			[]string{`1 vrrp_instance: use [vrrp.NAME]`}},
		{"unknown key", route + "bind_prot = 1\n",
			[]string{`6 routing.rw.bind_prot: unknown key (did you mean bind_port?)`}},
		{"unknown key case", route + "Connect_Timeout = \"1s\"\n",
			[]string{`6 routing.rw.Connect_Timeout: did you mean connect_timeout?`}},
		{"unknown key far", "[global]\nfoo = 1\n" + route,
			[]string{`2 global.foo: unknown key (allowed: drain_timeout)`}},
		{"mysqlrouter key", route + "routing_strategy = \"round-robin\"\n",
			[]string{`6 routing.rw.routing_strategy: use strategy`}},
		{"client_connect_timeout", route + "client_connect_timeout = 9\nmax_connect_errors = 100\n",
			[]string{`6 routing.rw.client_connect_timeout: not supported`,
				`7 routing.rw.max_connect_errors: not applicable`}},
		{"bare integer duration", "[health]\ninterval = 500\n" + route,
			[]string{`2 health.interval: 500 has no unit (quote it with a unit: "500s" or "500ms")`}},
		{"bad duration", "[health]\ntimeout = \"1 second\"\n" + route,
			[]string{`2 health.timeout: "1 second" is not a duration`}},
		{"zero durations", "[global]\ndrain_timeout = \"0s\"\n[health]\ninterval = \"0s\"\ntimeout = \"-1s\"\n" + route + "connect_timeout = \"0\"\n",
			[]string{`2 global.drain_timeout: "0s" is not allowed (a duration above 0`,
				`4 health.interval: "0s" is not allowed`,
				`5 health.timeout: "-1s" is not allowed`,
				`11 routing.rw.connect_timeout: "0" is not allowed`}},
		{"negative lag", route[:len(route)-1] + "\n" + `[routing.ro]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.2:3306"]
max_replication_lag = "-1s"
`, []string{`10 routing.ro.max_replication_lag: "-1s" is negative (0 or more`}},
		{"wrong types", `[routing.rw]
bind_port = "7001"
mode = "read-write"
destinations = "10.0.0.1:3306"
close_listener_when_down = "yes"
max_connections = 1.5
`, []string{`2 routing.rw.bind_port: "7001" is a string (an integer 1-65535)`,
			`4 routing.rw.destinations: "10.0.0.1:3306" is a string (an array of strings`,
			`5 routing.rw.close_listener_when_down: "yes" is a string (true or false)`,
			`6 routing.rw.max_connections: 1.5 is a float (an integer 1 or more)`}},
		{"port out of range", `[routing.rw]
bind_port = 70000
mode = "read-write"
destinations = ["10.0.0.1:3306"]
[routing.ro]
bind_port = 0
mode = "read-only"
destinations = ["10.0.0.1:3306"]
`, []string{`2 routing.rw.bind_port: 70000 is not a port (1-65535)`,
			`6 routing.ro.bind_port: 0 is not a port (1-65535)`}},
		{"required keys", "[routing.rw]\nbind_address = \"127.0.0.1\"\n",
			[]string{`1 routing.rw.bind_port: missing (required: a port 1-65535)`,
				`1 routing.rw.mode: missing (required: read-write | read-only)`,
				`1 routing.rw.destinations: missing (required`}},
		{"bind_address", route + "bind_address = \"localhost\"\n",
			[]string{`6 routing.rw.bind_address: "localhost" is not an IP address (an IP literal such as 127.0.0.1, or 0.0.0.0 for all)`}},
		{"destinations", `[routing.rw]
bind_port = 7001
mode = "read-write"
destinations = [
  "10.0.0.1:3306",
  "10.0.0.1",
  "10.0.0.2:0",
  ":3306",
  "db_1.example.com:3306",
  "-bad-.example.com:3306",
  "[::1]:3306",
  "10.0.0.1:03306",
]
`, []string{`6 routing.rw.destinations: "10.0.0.1" is not host:port (an IP address or hostname and a port 1-65535`,
			`7 routing.rw.destinations: "10.0.0.2:0" has a bad port`,
			`8 routing.rw.destinations: ":3306" has no host`,
			`10 routing.rw.destinations: "-bad-.example.com:3306" has a bad host`,
			`12 routing.rw.destinations: "10.0.0.1:03306" is listed twice`}},
		{"empty destinations", "[routing.rw]\nbind_port = 7001\nmode = \"read-write\"\ndestinations = []\n",
			[]string{`4 routing.rw.destinations: empty (at least one "host:port")`}},
		{"duplicate bind", route + `
[routing.b]
bind_address = "127.0.0.1"
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.2:3306"]
`, []string{`9 routing.b.bind_port: 127.0.0.1:7001 is also bound by routing.rw`}},
		{"wildcard bind", route + `
[routing.b]
bind_address = "0.0.0.0"
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.2:3306"]
[routing.c]
bind_address = "10.1.1.1"
bind_port = 7002
mode = "read-write"
destinations = ["10.0.0.2:3306"]
`, []string{`9 routing.b.bind_port: 0.0.0.0:7001 is also bound by routing.rw`}},
		{"float and huge integers", "[health]\nrise = 2.0\nfall = 3000000000\n" + route,
			[]string{`2 health.rise: 2.0 is a float (an integer 1 or more)`,
				`3 health.fall: 3000000000 is too large (1-2147483647)`}},
		{"admin port", "[admin]\naddress = \":7001\"\n" + route + `
[routing.b]
bind_port = 8081
mode = "read-write"
destinations = ["10.0.0.2:3306"]
`, []string{`5 routing.rw.bind_port: 127.0.0.1:7001 is also the admin endpoint's ([admin] address = ":7001"`}},
		{"default admin port", route + `
[routing.b]
bind_port = 8081
mode = "read-write"
destinations = ["10.0.0.2:3306"]
`, []string{`8 routing.b.bind_port: 127.0.0.1:8081 is also the admin endpoint's ([admin] address = "127.0.0.1:8081"`}},
		{"mode and strategy", `[routing.rw]
bind_port = 7001
mode = "readwrite"
strategy = "first_available"
destinations = ["10.0.0.1:3306"]
`, []string{`3 routing.rw.mode: "readwrite" is not a mode (read-write | read-only; did you mean read-write?)`,
			`4 routing.rw.strategy: "first_available" is not a strategy (first-available | next-available | round-robin | round-robin-with-fallback; did you mean first-available?)`}},
		{"strategy vs mode", `[routing.rw]
bind_port = 7001
mode = "read-write"
strategy = "round-robin"
destinations = ["10.0.0.1:3306"]
[routing.ro]
bind_port = 7002
mode = "read-only"
strategy = "next-available"
destinations = ["10.0.0.1:3306"]
`, []string{`4 routing.rw.strategy: "round-robin" does not fit mode "read-write" (first-available | next-available)`,
			`9 routing.ro.strategy: "next-available" does not fit mode "read-only" (round-robin | round-robin-with-fallback)`}},
		{"fallback", route + `fallback = "ro"
[routing.ro]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.1:3306"]
fallback = "rx"
[routing.ro2]
bind_port = 7003
mode = "read-only"
destinations = ["10.0.0.1:3306"]
fallback = "ro"
[routing.ro3]
bind_port = 7004
mode = "read-only"
strategy = "round-robin"
destinations = ["10.0.0.1:3306"]
fallback = "rw"
[routing.ro4]
bind_port = 7005
mode = "read-only"
strategy = "round-robin-with-fallback"
destinations = ["10.0.0.1:3306"]
`, []string{`6 routing.rw.fallback: set on a read-write route (read-only routes only)`,
			`11 routing.ro.fallback: "rx" is not a route (the name of a read-write route; did you mean rw?)`,
			`16 routing.ro2.fallback: "ro" is a read-only route (a read-write route)`,
			`20 routing.ro3.strategy: "round-robin" ignores fallback (round-robin-with-fallback, or leave strategy out)`,
			`26 routing.ro4.strategy: "round-robin-with-fallback" without fallback`}},
		{"replication lag", route + `max_replication_lag = "5s"
[routing.ro]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.1:3306"]
max_replication_lag = "5s"
`, []string{`6 routing.rw.max_replication_lag: set on a read-write route`,
			`11 routing.ro.max_replication_lag: needs health level "role" to read replication lag (the level here is "tcp")`}},
		{"level needs user", "[health]\nlevel = \"role\"\n" + route + "[routing.rw.health]\nlevel = \"login\"\n" +
			"[routing.rw2]\nbind_port = 7003\nmode = \"read-write\"\ndestinations = [\"10.0.0.1:3306\"]\n",
			[]string{`2 health.level: "role" needs a user`,
				`9 routing.rw.health.level: "login" needs a user`}},
		{"small counts", "[health]\nrise = 0\nfall = -1\n" + route + "max_connections = 0\n",
			[]string{`2 health.rise: 0 is too small (1 or more)`,
				`3 health.fall: -1 is too small (1 or more)`,
				`9 routing.rw.max_connections: 0 is too small (1 or more)`}},
		{"nothing to route", "[logger]\nlevel = \"debug\"\n",
			[]string{`1 routing: no [routing.NAME] section: nothing to route`}},
		{"empty routing", "[logger]\n[routing]\n",
			[]string{`2 routing: nothing to route`}},
		{"route name", "[routing.\"my route\"]\nbind_port = 1\n",
			[]string{`1 routing."my route": "my route" is not a route name (letters, digits, '_' and '-')`}},
		{"not a table", "routing = 5\n",
			[]string{`1 routing: 5 is an integer (a table: [routing])`,
				`1 routing: nothing to route`}},
		{"logger and admin", `[logger]
level = "INFO"
[admin]
address = "localhost"
token = "x"
token_file = "token"
` + route, []string{`2 logger.level: "INFO" is not a level (debug | info | warn | error; did you mean info?)`,
			`4 admin.address: "localhost" is not host:port (host:port with a port 1-65535`,
			`6 admin.token_file: "token" is not an absolute path`,
			`6 admin.token_file: set together with token (one or the other)`}},
		{"vrrp required", "[vrrp.VI_1]\npriority = 100\n" + route,
			[]string{`1 vrrp.VI_1.interface: missing`,
				`1 vrrp.VI_1.virtual_router_id: missing`,
				`1 vrrp.VI_1.virtual_ipaddress: missing`}},
		{"vrrp ranges", vrrpOK + `priority = 0
version = 4
garp_master_repeat = 101
preempt_delay = "1001s"
notify_timeout = "0s"
state = "master"
` + route, []string{`5 vrrp.VI_1.priority: 0 is too small (1-255)`,
			`6 vrrp.VI_1.version: 4 is too large (2-3)`,
			`7 vrrp.VI_1.garp_master_repeat: 101 is too large (1-100)`,
			`8 vrrp.VI_1.preempt_delay: "1001s" is too long (0-1000s)`,
			`9 vrrp.VI_1.notify_timeout: "0s" is not allowed`,
			`10 vrrp.VI_1.state: "master" is not a state (MASTER | BACKUP; did you mean MASTER?)`}},
		{"vrid range", "[vrrp.VI_1]\ninterface = \"eth1\"\nvirtual_router_id = 256\nvirtual_ipaddress = [\"10.0.0.9\"]\n" + route,
			[]string{`3 vrrp.VI_1.virtual_router_id: 256 is too large (1-255)`}},
		{"auth_pass", vrrpOK + "auth_pass = \"secret12\"\n[vrrp.VI_2]\ninterface = \"eth1\"\nvirtual_router_id = 52\nversion = 2\nauth_pass = \"secret123\"\nvirtual_ipaddress = [\"10.0.0.9\"]\n" + route,
			[]string{`5 vrrp.VI_1.auth_pass: set with version 3 (version = 2 only`,
				`10 vrrp.VI_2.auth_pass: 9 bytes (1-8 bytes)`}},
		{"advert_int", vrrpOK + "version = 2\nadvert_int = \"1500ms\"\n[vrrp.VI_2]\ninterface = \"eth1\"\nvirtual_router_id = 52\nadvert_int = \"15ms\"\nvirtual_ipaddress = [\"10.0.0.9\"]\n[vrrp.VI_3]\ninterface = \"eth1\"\nvirtual_router_id = 53\nadvert_int = \"41s\"\nvirtual_ipaddress = [\"10.0.0.10\"]\n" + route,
			[]string{`6 vrrp.VI_1.advert_int: "1500ms" does not fit version 2 (whole seconds 1s-255s`,
				`10 vrrp.VI_2.advert_int: "15ms" does not fit version 3 (a multiple of 10ms from 10ms to 40.95s)`,
				`15 vrrp.VI_3.advert_int: "41s" does not fit version 3`}},
		{"advert_int integer", vrrpOK + "advert_int = 1\n" + route,
			[]string{`5 vrrp.VI_1.advert_int: 1 has no unit (quote it with a unit: "1s"`}},
		{"preempt", vrrpOK + "state = \"MASTER\"\nnopreempt = true\npreempt_delay = \"5s\"\n" + route,
			[]string{`5 vrrp.VI_1.state: MASTER with nopreempt`,
				`7 vrrp.VI_1.preempt_delay: set with nopreempt`}},
		{"durations out of range", "[global]\ndrain_timeout = \"48h\"\n[health]\ninterval = \"1ns\"\ntimeout = \"5ms\"\n" + route +
			"connect_timeout = \"2562047h\"\nmax_replication_lag = \"500ms\"\n" + vrrpOK + "garp_master_refresh = \"1ns\"\nnotify_timeout = \"2h\"\n",
			[]string{`2 global.drain_timeout: "48h" is too long (1ms to 24h)`,
				`4 health.interval: "1ns" is too short (10ms to 1h)`,
				`5 health.timeout: "5ms" is too short (10ms to 1h)`,
				`11 routing.rw.connect_timeout: "2562047h" is too long (1ms to 1h)`,
				`12 routing.rw.max_replication_lag: "500ms" is too short (0 for off, or 1s to 8760h)`,
				`17 vrrp.VI_1.garp_master_refresh: "1ns" is too short (0 for off, or 1s to 24h)`,
				`18 vrrp.VI_1.notify_timeout: "2h" is too long (1ms to 1h)`}},
		{"io", "[io]\nthreads = 2000\nbackend = \"poll\"\n" + route,
			[]string{`2 io.threads: 2000 is too large (0-1024)`,
				`3 io.backend: unknown key (allowed: kernel_relay, threads)`}},
		{"io kernel_relay not a boolean", "[io]\nkernel_relay = \"yes\"\n" + route,
			[]string{`2 io.kernel_relay: `}},
		{"io threads negative", "[io]\nthreads = -1\n" + route,
			[]string{`2 io.threads: -1 is too small (0-1024)`}},
		{"mistyped addresses", "[admin]\naddress = \"127.0.0.300:8081\"\n[routing.rw]\nbind_port = 7001\nmode = \"read-write\"\ndestinations = [\"10.0.0.256:3306\", \"192.168.1.1000:3306\", \"db1.example.com:3306\"]\n",
			[]string{`2 admin.address: "127.0.0.300:8081" is not a valid IP address`,
				`6 routing.rw.destinations: "10.0.0.256:3306" is not a valid IP address`,
				`6 routing.rw.destinations: "192.168.1.1000:3306" is not a valid IP address`}},
		{"unusable token", "[admin]\ntoken = \"secret \"\n" + route,
			[]string{`2 admin.token: byte 7 of the token is ' ' (no blanks or control characters`}},
		{"owner nopreempt", vrrpOK + "priority = 255\nnopreempt = true\n" + route,
			[]string{`6 vrrp.VI_1.nopreempt: set with priority 255`}},
		{"addresses", `[vrrp.VI_1]
interface = "eth1/x"
virtual_router_id = 51
virtual_ipaddress = [
  "::1",
  "300.1.1.1/24",
  "224.0.0.18",
  "10.0.0.1/24",
  "10.0.0.1/32",
]
unicast_src_ip = "10.0.0.2"
unicast_peers = ["10.0.0.3", "fe80::1", "10.0.0.2"]
` + route, []string{`2 vrrp.VI_1.interface: "eth1/x" is not an interface name`,
			`5 vrrp.VI_1.virtual_ipaddress: "::1" is not an IPv4 address (a.b.c.d or a.b.c.d/len)`,
			`6 vrrp.VI_1.virtual_ipaddress: "300.1.1.1/24" is not an IPv4 address`,
			`7 vrrp.VI_1.virtual_ipaddress: "224.0.0.18" is not a unicast address`,
			`9 vrrp.VI_1.virtual_ipaddress: "10.0.0.1/32" is listed twice`,
			`12 vrrp.VI_1.unicast_peers: "fe80::1" is not an IPv4 address`,
			`12 vrrp.VI_1.unicast_peers: 10.0.0.2 is this router's unicast_src_ip`}},
		{"track_routes table", vrrpOK + "track_routes = { rw = -254, rx = 10 }\n" + route,
			[]string{`5 vrrp.VI_1.track_routes.rw: -254 is not a weight (-253-253)`,
				`5 vrrp.VI_1.track_routes: "rx" is not a route (the name of a route; did you mean rw?)`}},
		{"track_routes type", vrrpOK + "track_routes = \"rw\"\n" + route,
			[]string{`5 vrrp.VI_1.track_routes: "rw" is a string (a table { route = weight } or an array ["route"])`}},
		{"track_routes array", vrrpOK + "track_routes = [\n  \"rw\",\n  \"nope\",\n  \"rw\",\n]\ntrack_interface = [\"eth1\", \"\"]\n" + route,
			[]string{`7 vrrp.VI_1.track_routes: "nope" is not a route`,
				`8 vrrp.VI_1.track_routes: "rw" is listed twice`,
				`10 vrrp.VI_1.track_interface: "" is not an interface name`}},
		{"keepalived keys", vrrpOK + "track_script = [\"chk\"]\nauthentication = 1\nunicast_peer = []\n" + route,
			[]string{`5 vrrp.VI_1.track_script: unknown key (use track_routes)`,
				`6 vrrp.VI_1.authentication: unknown key (use auth_pass with version = 2)`,
				`7 vrrp.VI_1.unicast_peer: unknown key (use unicast_peers)`}},
		{"notify", vrrpOK + "notify_master = \"notify.sh master\"\nnotify_backup = \"  \"\nnotify_fault = [\"/bin/x\", 1]\nnotify = 5\n" + route,
			[]string{`5 vrrp.VI_1.notify_master: "notify.sh" is not an absolute path`,
				`6 vrrp.VI_1.notify_backup: empty`,
				`7 vrrp.VI_1.notify_fault: element 1 is an integer (an array of strings)`,
				`8 vrrp.VI_1.notify: 5 is an integer (a command line`}},
		{"duplicate vrid", vrrpOK + "[vrrp.VI_2]\ninterface = \"eth1\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"172.168.1.20\"]\n[vrrp.VI_3]\ninterface = \"eth2\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"172.168.1.21\"]\n" + route,
			[]string{`7 vrrp.VI_2.virtual_router_id: 51 is also used by vrrp.VI_1 on eth1`,
				`8 vrrp.VI_2.virtual_ipaddress: 172.168.1.20 is also held by vrrp.VI_1`}},
		{"array of tables", "[[routing]]\nx = 1\n",
			[]string{`1 routing: an array of tables (a table: [routing])`,
				`1 routing: nothing to route`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("hamr.toml", []byte(tt.src))
			if err == nil {
				t.Fatalf("no error; got %+v", c)
			}
			if c != nil {
				t.Errorf("got a Config with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want *Errors: %v", err, err)
			}
			if len(errs.List) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs.List), len(tt.want), err)
			}
			for i, e := range errs.List {
				line, rest, _ := strings.Cut(tt.want[i], " ")
				key, msg, _ := strings.Cut(rest, ": ")
				if e.File != "hamr.toml" || fmt.Sprint(e.Line) != line || e.Key != key || !strings.Contains(e.Msg, msg) {
					t.Errorf("error %d:\n got %s\nwant line %s key %q msg containing %q", i, e, line, key, msg)
				}
			}
		})
	}
}

func TestErrorFormat(t *testing.T) {
	src := "[routing.rw]\nbind_port = 70000\nmode = \"rw\"\ndestinations = [\"10.0.0.1:3306\"]\n"
	_, err := Parse("hamr.toml", []byte(src))
	want := `hamr.toml:2: routing.rw.bind_port: 70000 is not a port (1-65535)
hamr.toml:3: routing.rw.mode: "rw" is not a mode (read-write | read-only)`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

// TestManyProblems checks that one run reports problems of every stage
// (types, values, cross-checks) together, sorted by line.
func TestManyProblems(t *testing.T) {
	src := `[vrrp.VI_1]
interface = "eth1"
virtual_router_id = 51
virtual_ipaddress = ["172.168.1.20/24"]
track_routes = ["nope"]

[routing.ro]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.2:3306"]
fallback = "rw"

[health]
interval = 500

[routing.rw]
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.1:3306", "10.0.0.1:3306"]
bind_adress = "0.0.0.0"
`
	_, err := Parse("x.toml", []byte(src))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v, want *Errors", err)
	}
	var lines []int
	for _, e := range errs.List {
		lines = append(lines, e.Line)
	}
	if want := []int{5, 14, 19, 20}; !reflect.DeepEqual(lines, want) {
		t.Errorf("lines %v, want %v:\n%v", lines, want, err)
	}
}

func TestDefaults(t *testing.T) {
	src := `
[routing.rw]
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.1:3306"]

[routing.ro]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.2:3306"]

[routing.ro2]
bind_port = 7003
mode = "read-only"
destinations = ["10.0.0.2:3306"]
fallback = "rw"

[vrrp.VI_1]
interface = "eth1"
virtual_router_id = 51
virtual_ipaddress = ["172.168.1.20"]
track_routes = ["rw"]
notify_master = "/etc/hamr/n.sh master  now"
`
	c, err := Parse("d.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	health := Health{Interval: 500 * time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2, Level: LevelTCP}
	want := &Config{
		File:   "d.toml",
		Global: Global{DrainTimeout: 30 * time.Second},
		Logger: Logger{Level: "info"},
		Admin:  Admin{Address: "127.0.0.1:8081"},
		Health: health,
		Routes: []*Route{
			{Name: "ro", BindAddress: "127.0.0.1", BindPort: 7002, Mode: ModeReadOnly, Strategy: RoundRobin,
				Destinations: []string{"10.0.0.2:3306"}, ConnectTimeout: time.Second, MaxConnections: 512, Health: health},
			{Name: "ro2", BindAddress: "127.0.0.1", BindPort: 7003, Mode: ModeReadOnly, Strategy: RoundRobinWithFallback,
				Destinations: []string{"10.0.0.2:3306"}, ConnectTimeout: time.Second, MaxConnections: 512, Fallback: "rw", Health: health},
			{Name: "rw", BindAddress: "127.0.0.1", BindPort: 7001, Mode: ModeReadWrite, Strategy: FirstAvailable,
				Destinations: []string{"10.0.0.1:3306"}, ConnectTimeout: time.Second, MaxConnections: 512, Health: health},
		},
		VRRP: []*VRRP{{
			Name: "VI_1", Interface: "eth1", VirtualRouterID: 51, Priority: 100, AdvertInt: time.Second,
			Version: 3, State: "BACKUP",
			VirtualIPAddress: []netip.Prefix{netip.MustParsePrefix("172.168.1.20/32")},
			TrackRoutes:      map[string]int{"rw": 0},
			GarpMasterRepeat: 5, GarpMasterDelay: 5 * time.Second,
			NotifyMaster:  []string{"/etc/hamr/n.sh", "master", "now"},
			NotifyTimeout: 10 * time.Second,
		}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got\n%s\nwant\n%s", dump(c), dump(want))
	}
	if got := c.Routes[2].Addr(); got != "127.0.0.1:7001" {
		t.Errorf("Addr() = %q", got)
	}
}

func dump(c *Config) string {
	s := fmt.Sprintf("%+v\n", *c)
	for _, r := range c.Routes {
		s += fmt.Sprintf("%+v\n", *r)
	}
	for _, v := range c.VRRP {
		s += fmt.Sprintf("%+v\n", *v)
	}
	return s
}

// TestIO checks the [io] keys and their defaults: threads 0, the kernel
// relay off.
func TestIO(t *testing.T) {
	const route = "[routing.rw]\nbind_port = 7001\nmode = \"read-write\"\ndestinations = [\"10.0.0.1:3306\"]\n"
	for src, want := range map[string]IO{
		route:                                  {},
		"[io]\nthreads = 1\n" + route:          {Threads: 1},
		"[io]\nthreads = 0\n" + route:          {},
		"[io]\nkernel_relay = false\n" + route: {},
		"[io]\nkernel_relay = true\n" + route:  {KernelRelay: true},
	} {
		c, err := Parse("t.toml", []byte(src))
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		if c.IO != want {
			t.Errorf("%q: [io] = %+v, want %+v", src, c.IO, want)
		}
	}
}

// TestHealthMerge checks that [routing.NAME.health] overrides only the
// keys it sets, and that the level default follows the merged user.
func TestHealthMerge(t *testing.T) {
	src := `
[health]
interval = "2s"
rise = 3
user = "mon"
password = "pw"

[routing.a]
bind_port = 7001
mode = "read-write"
destinations = ["10.0.0.1:3306"]

[routing.b]
bind_port = 7002
mode = "read-only"
destinations = ["10.0.0.1:3306"]
max_replication_lag = "10s"
[routing.b.health]
interval = "100ms"
level = "role"
password = "other"

[routing.c]
bind_port = 7003
mode = "read-only"
destinations = ["10.0.0.1:3306"]
[routing.c.health]
level = "tcp"
fall = 5
`
	c, err := Parse("m.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	g := Health{Interval: 2 * time.Second, Timeout: time.Second, Rise: 3, Fall: 2, Level: LevelLogin, User: "mon", Password: "pw"}
	want := map[string]Health{
		"":  g,
		"a": g,
		"b": {Interval: 100 * time.Millisecond, Timeout: time.Second, Rise: 3, Fall: 2, Level: LevelRole, User: "mon", Password: "other"},
		"c": {Interval: 2 * time.Second, Timeout: time.Second, Rise: 3, Fall: 5, Level: LevelTCP, User: "mon", Password: "pw"},
	}
	got := map[string]Health{"": c.Health}
	for _, r := range c.Routes {
		got[r.Name] = r.Health
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	// A user only in the route's table makes that route's default login.
	src = route + "[routing.rw.health]\nuser = \"mon\"\n"
	c, err = Parse("m.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Health.Level != LevelTCP || c.Routes[0].Health.Level != LevelLogin {
		t.Errorf("levels: global %q, route %q; want tcp, login", c.Health.Level, c.Routes[0].Health.Level)
	}

	// A role level in [health] needs no user there when every route
	// brings its own.
	src = "[health]\nlevel = \"role\"\n" + route + "[routing.rw.health]\nuser = \"a\"\n"
	c, err = Parse("m.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Routes[0].Health; h.Level != LevelRole || h.User != "a" {
		t.Errorf("route health: level %q, user %q; want role, a", h.Level, h.User)
	}
}

func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			checkValid(t, c)
		})
	}
}

func TestRouterExamples(t *testing.T) {
	c, err := Load("../examples/router01.toml")
	if err != nil {
		t.Fatal(err)
	}
	v := c.VRRP[0]
	if v.Priority != 120 || !v.Nopreempt || v.VirtualRouterID != 51 || v.Version != 3 ||
		v.VirtualIPAddress[0] != netip.MustParsePrefix("172.168.1.20/24") {
		t.Errorf("router01 VRRP: %+v", *v)
	}
	c2, err := Load("../examples/router02.toml")
	if err != nil {
		t.Fatal(err)
	}
	// The two routers differ only in priority.
	c2.File, c2.VRRP[0].Priority = c.File, v.Priority
	if !reflect.DeepEqual(c, c2) {
		t.Errorf("router01 and router02 differ beyond priority:\n%s\n%s", dump(c), dump(c2))
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	var errs *Errors
	if err == nil || errors.As(err, &errs) {
		t.Errorf("got %v, want a plain file error", err)
	}
}

func TestSharesPort(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		pa   int
		pb   int
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", 7001, 7001, true},
		{"127.0.0.1", "127.0.0.1", 7001, 7002, false},
		{"127.0.0.1", "127.0.0.2", 7001, 7001, false},
		{"0.0.0.0", "127.0.0.1", 7001, 7001, true},
		{"10.0.0.5", "::", 7001, 7001, true},
		{"::ffff:127.0.0.1", "127.0.0.1", 7001, 7001, true},
		{"not-an-ip", "127.0.0.1", 7001, 7001, false},
	} {
		a := &Route{BindAddress: tc.a, BindPort: tc.pa}
		b := &Route{BindAddress: tc.b, BindPort: tc.pb}
		if got := a.SharesPort(b); got != tc.want {
			t.Errorf("%s:%d shares the port of %s:%d = %v, want %v", tc.a, tc.pa, tc.b, tc.pb, got, tc.want)
		}
		if got := b.SharesPort(a); got != tc.want {
			t.Errorf("%s:%d shares the port of %s:%d = %v, want %v", tc.b, tc.pb, tc.a, tc.pa, got, tc.want)
		}
	}
}

// TestLoadAdmin: ctl's view of a file is its [admin] section; problems
// elsewhere do not hide it, problems in it are reported.
func TestLoadAdmin(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	broken := write("broken.toml", "[admin]\naddress = \"127.0.0.1:9901\"\ntoken = \"t\"\n\n[routing.rw]\nbind_port = 70000\n")
	a, err := LoadAdmin(broken)
	if err != nil || a.Address != "127.0.0.1:9901" || a.Token != "t" {
		t.Errorf("LoadAdmin with a broken route: %+v, %v; want the [admin] section", a, err)
	}
	if a, err := LoadAdmin(write("none.toml", "[routing.rw]\nmode = 1\n")); err != nil || a.Address != "127.0.0.1:8081" {
		t.Errorf("LoadAdmin without [admin]: %+v, %v; want the default address", a, err)
	}
	_, err = LoadAdmin(write("bad.toml", "[admin]\naddress = \"localhost\"\n\n[routing.rw]\nbind_port = 70000\n"))
	if err == nil || !strings.Contains(err.Error(), "admin.address") || strings.Contains(err.Error(), "routing") {
		t.Errorf("LoadAdmin with a bad address: %v; want only the [admin] problem", err)
	}
	if _, err := LoadAdmin(write("syntax.toml", "[admin\n")); err == nil {
		t.Error("LoadAdmin accepted a file that is not TOML")
	}
	// A syntax error elsewhere (mysqlrouter.conf's unquoted address) is
	// the daemon's to judge; one inside [admin] is reported at its line.
	elsewhere := "[logger]\nlevel = \"info\"\n\n[admin] # ctl\naddress = \"127.0.0.1:9902\"\ntoken = \"t\"\n\n[routing.rw]\nbind_address = 0.0.0.0\n"
	if a, err := LoadAdmin(write("elsewhere.toml", elsewhere)); err != nil || a.Address != "127.0.0.1:9902" || a.Token != "t" {
		t.Errorf("LoadAdmin with a syntax error in a route: %+v, %v; want the [admin] section", a, err)
	}
	dotted := "admin.address = \"127.0.0.1:9903\"\n\n[routing.rw]\nbind_address = 0.0.0.0\n"
	if a, err := LoadAdmin(write("dotted.toml", dotted)); err != nil || a.Address != "127.0.0.1:9903" {
		t.Errorf("LoadAdmin with admin.address as a dotted key and a syntax error elsewhere: %+v, %v; want 127.0.0.1:9903", a, err)
	}
	for name, src := range map[string]string{
		"spaced.toml": "admin . address = \"127.0.0.1:9904\"\n\n[routing.rw]\nbind_address = 0.0.0.0\n",
		"inline.toml": "admin = { address = \"127.0.0.1:9904\", token = \"t\" }\n\n[routing.rw]\nbind_address = 0.0.0.0\n",
	} {
		if a, err := LoadAdmin(write(name, src)); err != nil || a.Address != "127.0.0.1:9904" {
			t.Errorf("LoadAdmin with %q and a syntax error elsewhere: %+v, %v; want 127.0.0.1:9904", src, a, err)
		}
	}
	_, err = LoadAdmin(write("inside.toml", "[routing.rw]\nbind_port = 1\n\n[admin]\naddress = 127.0.0.1\n"))
	if err == nil || !strings.Contains(err.Error(), ":5:") {
		t.Errorf("LoadAdmin with a syntax error in [admin]: %v; want it reported at line 5", err)
	}
}
