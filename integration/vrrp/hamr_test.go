package vrrp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// hamrBin is hamr built once by TestMain; hamrErr says why it is missing.
var (
	hamrBin string
	hamrErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hvr-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	hamrBin, hamrErr = buildHamr(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildHamr builds ./cmd/hamr of this module into dir.
func buildHamr(dir string) (string, error) {
	// World-readable, so the capability test can run it as another user.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	bin := filepath.Join(dir, "hamr")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/hamr")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/hamr: %w\n%s", err, out)
	}
	return bin, nil
}

// requireHamr fails the test when hamr could not be built.
func requireHamr(t testing.TB) {
	t.Helper()
	if hamrErr != nil {
		t.Fatalf("hamr is needed: %v", hamrErr)
	}
}

const adminAddr = "127.0.0.1:8081" // on each namespace's own loopback

// drainTimeout is long on purpose: sessions a client opened through the
// VIP just before a stop cannot finish once the VIP has moved (the
// client's packets go to the other host), so hamr must close them at once
// instead of waiting for it. Tests expect an exit within stopWait.
const drainTimeout = 30 * time.Second

// stopWait bounds a graceful stop: resign, close the VIP's sessions, exit.
const stopWait = 5 * time.Second

// hamrConf is the TOML for one router: VI_1 and a read-write route on
// VIP:7001 to the responder on the host's loopback.
func hamrConf(h *host, c routerConf) string {
	var b strings.Builder
	labSections(&b)
	fmt.Fprintf(&b, "[vrrp.VI_1]\ninterface = %q\nvirtual_router_id = %d\npriority = %d\n", h.link, vrid, c.priority)
	fmt.Fprintf(&b, "advert_int = %q\nversion = %d\n", c.advert, c.version)
	if c.version == 2 {
		fmt.Fprintf(&b, "auth_pass = %q\n", authPass)
	}
	if c.nopreempt {
		b.WriteString("nopreempt = true\n")
	}
	if len(c.peers) > 0 {
		fmt.Fprintf(&b, "unicast_peers = [\"%s\"]\n", strings.Join(c.peers, `", "`))
	}
	if c.track {
		b.WriteString("track_routes = [\"rw\"]\n")
	}
	fmt.Fprintf(&b, "virtual_ipaddress = [%q]\n\n", vipPrefix)
	backend := backendAdr
	if c.backend != "" {
		backend = c.backend
	}
	fmt.Fprintf(&b, "[routing.rw]\nbind_address = %q\nbind_port = %d\nmode = \"read-write\"\ndestinations = [%q]\n",
		vipAddr, vipPort, backend)
	return b.String()
}

// labConf is a configuration for hamr on one lab host beside hamrConf's:
// the lab's [global], [logger] and [admin], tcp health checks, VI_1 on
// the host's link with the lab VIP at priority prio, and routes as
// written.
type labConf struct {
	prio   int
	health string // more [health] lines, such as fastChecks
	vrrp   string // more [vrrp.VI_1] lines
	routes string // [routing.NAME] sections
}

// labSections writes the [global], [logger] and [admin] sections every
// hamr of the lab runs with.
func labSections(b *strings.Builder) {
	fmt.Fprintf(b, "[global]\ndrain_timeout = %q\n\n", drainTimeout)
	fmt.Fprintf(b, "[logger]\nlevel = \"debug\"\n\n[admin]\naddress = %q\n\n", adminAddr)
}

// fastChecks are [health] lines that notice a change within 100 ms.
const fastChecks = "interval = \"100ms\"\nrise = 1\nfall = 1"

// writeConf writes c for hamr on h as name.toml in the lab directory and
// returns its path.
func (l *lab) writeConf(h *host, name string, c labConf) string {
	l.t.Helper()
	var b strings.Builder
	labSections(&b)
	fmt.Fprintf(&b, "[health]\nlevel = \"tcp\"\n%s\n\n", c.health)
	fmt.Fprintf(&b, "[vrrp.VI_1]\ninterface = %q\nvirtual_router_id = %d\npriority = %d\n", h.link, vrid, c.prio)
	fmt.Fprintf(&b, "advert_int = %q\nvirtual_ipaddress = [%q]\n%s\n\n%s", fast.advert, vipPrefix, c.vrrp, c.routes)
	return l.writeFile(name, b.String())
}

// startConf writes c (see writeConf) and runs `hamr run` with it on h.
func (l *lab) startConf(h *host, name string, c labConf) *router {
	l.t.Helper()
	return l.runHamr(h, "hamr-"+name, l.writeConf(h, name, c))
}

// writeHamrConf writes a config for h into the lab directory.
func (l *lab) writeHamrConf(h *host, name string, c routerConf) string {
	l.t.Helper()
	return l.writeFile(name, hamrConf(h, c.withDefaults()))
}

// writeFile writes conf as name.toml in the lab directory and returns its
// path.
func (l *lab) writeFile(name, conf string) string {
	l.t.Helper()
	path := filepath.Join(l.dir, name+".toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// runHamr runs `hamr run -c path` on h as process name.
func (l *lab) runHamr(h *host, name, path string) *router {
	l.t.Helper()
	r := l.start("hamr", h, name, hamrBin, "run", "-c", path)
	r.admin, r.conf = adminAddr, path
	return r
}

// startHamr runs `hamr run` on h with VI_1 configured from c. The
// responder behind its route must already be running (see withBackends).
func (l *lab) startHamr(h *host, c routerConf) *router {
	l.t.Helper()
	requireHamr(l.t)
	name := fmt.Sprintf("hamr-%s-%d", h.id, labSeq.Add(1))
	return l.runHamr(h, name, l.writeHamrConf(h, name, c))
}

// withBackends starts the responders hamr's routes forward to.
func (l *lab) withBackends() {
	l.r1.respond(l.t, backendAdr)
	l.r2.respond(l.t, backendAdr)
}

// vrrpStatus is one element of the "vrrp" array of GET /status.
type vrrpStatus struct {
	Name              string   `json:"name"`
	Interface         string   `json:"interface"`
	VRID              int      `json:"vrid"`
	Version           int      `json:"version"`
	State             string   `json:"state"`
	Priority          int      `json:"priority"`
	EffectivePriority int      `json:"effective_priority"`
	Master            string   `json:"master"`
	VIPs              []string `json:"vips"`
	Transitions       int      `json:"transitions"`
}

// status fetches VI_1's status from hamr's admin endpoint.
func (r *router) status() (vrrpStatus, error) {
	var st struct {
		VRRP []vrrpStatus `json:"vrrp"`
	}
	if err := r.getStatus(&st); err != nil {
		return vrrpStatus{}, err
	}
	for _, v := range st.VRRP {
		if v.Name == "VI_1" {
			return v, nil
		}
	}
	return vrrpStatus{}, fmt.Errorf("GET /status: no VI_1 in %+v", st)
}

// sessions returns the open sessions of route in hamr's /status: those
// of a route a reload removed if it is still draining, else of the
// running route of that name.
func (r *router) sessions(route string) (int, error) {
	var st struct {
		Routes []struct {
			Name     string `json:"name"`
			Sessions int    `json:"sessions"`
		} `json:"routes"`
	}
	if err := r.getStatus(&st); err != nil {
		return 0, err
	}
	for _, rs := range st.Routes {
		if rs.Name == route {
			return rs.Sessions, nil
		}
	}
	return 0, fmt.Errorf("GET /status: no route %s", route)
}

// getStatus decodes GET /status of hamr's admin endpoint, inside r's
// namespace, into v.
func (r *router) getStatus(v any) error {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return r.h.dial(ctx, addr, time.Second)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := http.Client{Transport: tr, Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + r.admin + "/status")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET /status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /status: %s: %s", resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET /status: %w", err)
	}
	return nil
}

func (r *router) hamrState() (string, error) {
	st, err := r.status()
	return st.State, err
}
