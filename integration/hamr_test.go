package integration

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/hamr-project/hamr/internal/logbuf"
)

// Health settings the tests use unless they say otherwise: fast enough that
// a transition takes a few hundred milliseconds.
const (
	checkInterval = 100 * time.Millisecond
	rise          = 2
	fall          = 2
)

// hamrConfig is a hamr TOML file the tests write.
type hamrConfig struct {
	Admin     string        // host:port of the admin endpoint
	Token     string        // [admin] token; the helpers send it
	TokenFile string        // [admin] token_file, instead of Token
	Drain     time.Duration // [global] drain_timeout; default 1s
	Threads   int           // [io] threads; 0 leaves it out
	Level     string        // health level: tcp, login or role; default login
	Interval  time.Duration // health interval; default checkInterval
	Health    string        // extra [health] lines
	Routes    []routeConfig
}

type routeConfig struct {
	Name  string
	Port  int
	Mode  string // read-write or read-only
	Dests []string
	Extra string // extra lines for the section, e.g. `max_connections = 2`
	Bind  string // bind_address; 127.0.0.1 if empty
}

func (c hamrConfig) TOML() string {
	level := c.Level
	if level == "" {
		level = "login"
	}
	interval := c.Interval
	if interval == 0 {
		interval = checkInterval
	}
	drain := c.Drain
	if drain == 0 {
		drain = time.Second
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ndrain_timeout = %q\n\n[logger]\nlevel = \"debug\"\n\n", drain.String())
	if c.Threads > 0 {
		fmt.Fprintf(&b, "[io]\nthreads = %d\n\n", c.Threads)
	}
	fmt.Fprintf(&b, "[admin]\naddress = %q\n", c.Admin)
	if c.Token != "" {
		fmt.Fprintf(&b, "token = %q\n", c.Token)
	}
	if c.TokenFile != "" {
		fmt.Fprintf(&b, "token_file = %q\n", c.TokenFile)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "[health]\ninterval = %q\ntimeout = \"1s\"\nrise = %d\nfall = %d\nlevel = %q\nuser = %q\n%s\n",
		interval.String(), rise, fall, level, MonitorUser, c.Health)
	for _, r := range c.Routes {
		dests := make([]string, len(r.Dests))
		for i, d := range r.Dests {
			dests[i] = strconv.Quote(d)
		}
		bind := r.Bind
		if bind == "" {
			bind = "127.0.0.1"
		}
		fmt.Fprintf(&b, "[routing.%s]\nbind_address = %q\nbind_port = %d\nmode = %q\ndestinations = [%s]\nconnect_timeout = \"1s\"\n%s\n",
			r.Name, bind, r.Port, r.Mode, strings.Join(dests, ", "), r.Extra)
	}
	return b.String()
}

// rwRO returns the usual two routes over a topology: rw on every server
// (primary first), ro over the replicas falling back to rw. It allocates
// the listen ports.
func rwRO(t testing.TB, topo *Topology) (rw, ro routeConfig) {
	t.Helper()
	ports := freePorts(t, 2)
	var all []string
	for i := range topo.Servers {
		all = append(all, topo.Addr(i))
	}
	rw = routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: all}
	ro = routeConfig{Name: "ro", Port: ports[1], Mode: "read-only", Dests: all[1:], Extra: `fallback = "rw"`}
	return rw, ro
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// hamrProc is a running `hamr run -c FILE`.
type hamrProc struct {
	t      testing.TB
	Config string // path of the config file
	Admin  string
	Token  string // bearer token sent to the admin endpoint, if any
	cmd    *exec.Cmd
	done   chan struct{}
	log    lockedBuffer
}

// startHamr writes cfg into the test's directory, starts hamr on it and
// waits until its admin endpoint answers. It is stopped when the test ends.
func startHamr(t testing.TB, cfg hamrConfig) *hamrProc {
	t.Helper()
	if hamrBuildErr != nil {
		t.Fatalf("hamr binary not available: %v", hamrBuildErr)
	}
	if cfg.Admin == "" {
		cfg.Admin = Addr(freePorts(t, 1)[0])
	}
	h := &hamrProc{t: t, Config: filepath.Join(t.TempDir(), "hamr.toml"), Admin: cfg.Admin, Token: cfg.Token}
	h.writeConfig(cfg)
	h.cmd = exec.Command(hamrBin, "run", "-c", h.Config)
	h.cmd.Env = hamrEnv()
	h.cmd.Stdout = &h.log
	h.cmd.Stderr = &h.log
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start hamr: %v", err)
	}
	h.done = make(chan struct{})
	go func() {
		h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(h.stop)

	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := h.status()
		if err == nil {
			return h
		}
		select {
		case <-h.done:
			t.Fatalf("hamr exited during start-up (%v)", h.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hamr not ready after 15s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *hamrProc) writeConfig(cfg hamrConfig) {
	h.t.Helper()
	if cfg.Admin == "" {
		cfg.Admin = h.Admin
	}
	if cfg.Token == "" {
		cfg.Token = h.Token
	}
	h.writeFile(cfg.TOML())
}

// reload writes cfg and reloads it with `hamr ctl reload`; the reload
// must succeed. t is the (sub)test asking.
func (h *hamrProc) reload(t testing.TB, cfg hamrConfig) {
	t.Helper()
	h.writeConfig(cfg)
	if out, err := h.ctl("reload"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
}

func (h *hamrProc) writeFile(text string) {
	h.t.Helper()
	if err := os.WriteFile(h.Config, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// stop sends SIGTERM and waits; SIGKILL after 15 s. hamr must exit 0.
func (h *hamrProc) stop() {
	if h.t.Failed() {
		h.t.Logf("hamr output:\n%s", h.log.String())
	}
	select {
	case <-h.done:
		return
	default:
	}
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		h.t.Errorf("SIGTERM hamr: %v", err)
	}
	select {
	case <-h.done:
		if !h.cmd.ProcessState.Success() {
			h.t.Errorf("hamr exited with %v after SIGTERM; want exit 0\n%s", h.cmd.ProcessState, h.log.tail(20))
		}
	case <-time.After(15 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
		h.t.Errorf("hamr did not exit within 15s of SIGTERM; killed\n%s", h.log.tail(20))
	}
}

// signal sends sig to the hamr process.
func (h *hamrProc) signal(sig syscall.Signal) {
	h.t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		h.t.Fatalf("signal hamr: %v", err)
	}
}

// ctl runs `hamr ctl --admin ADDR [--token T] args...` and returns its
// combined output.
func (h *hamrProc) ctl(args ...string) (string, error) {
	pre := []string{"--admin", h.Admin}
	if h.Token != "" {
		pre = append(pre, "--token", h.Token)
	}
	return runCtl(nil, append(pre, args...)...)
}

// hamrEnv returns the environment for a hamr process: the test's, without
// HAMR_ADMIN_TOKEN, plus env. A hamr built with -race would sleep 1 s at
// exit (the race detector's atexit_sleep_ms), which would hide how fast it
// stops and slow every test down; races are still reported and still make
// it exit non-zero.
func hamrEnv(env ...string) []string {
	var out []string
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "HAMR_ADMIN_TOKEN="):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			out = append(out, kv)
		}
	}
	return append(append(out, "GORACE="+gorace), env...)
}

// runCtl runs `hamr ctl args...` with hamrEnv(env...) and returns its combined output. A non-zero
// exit is an error wrapping *exec.ExitError.
func runCtl(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hamrBin, append([]string{"ctl"}, args...)...)
	cmd.Env = hamrEnv(env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("hamr ctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// The /status document (docs/cli.md).
type status struct {
	Routes []routeStatus `json:"routes"`
}

type routeStatus struct {
	Name         string       `json:"name"`
	Bind         string       `json:"bind"`
	Mode         string       `json:"mode"`
	Listening    bool         `json:"listening"`
	Draining     bool         `json:"draining"`
	Primary      string       `json:"primary"`
	Sessions     int          `json:"sessions"`
	Fallback     int          `json:"fallback_sessions"`
	Destinations []destStatus `json:"destinations"`
}

type destStatus struct {
	Address  string `json:"address"`
	Up       bool   `json:"up"`
	Reason   string `json:"reason"`
	ReadOnly *bool  `json:"read_only"`
	Sessions int    `json:"sessions"`
	Primary  bool   `json:"primary"`
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// get sends GET path to the admin endpoint, with h.Token if set.
func (h *hamrProc) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+h.Admin+path, nil)
	if err != nil {
		return nil, err
	}
	if h.Token != "" {
		req.Header.Set("Authorization", "Bearer "+h.Token)
	}
	return httpClient.Do(req)
}

func (h *hamrProc) status() (*status, error) {
	resp, err := h.get("/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: %s", resp.Status)
	}
	var st status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /status: %w", err)
	}
	return &st, nil
}

// route returns the named route from /status.
func (h *hamrProc) route(name string) (routeStatus, error) {
	st, err := h.status()
	if err != nil {
		return routeStatus{}, err
	}
	for _, r := range st.Routes {
		if r.Name == name {
			return r, nil
		}
	}
	return routeStatus{}, fmt.Errorf("route %s not in /status", name)
}

// destUp reports whether /status shows addr up in route.
func (h *hamrProc) destUp(route, addr string) (bool, error) {
	r, err := h.route(route)
	if err != nil {
		return false, err
	}
	for _, d := range r.Destinations {
		if d.Address == addr {
			return d.Up, nil
		}
	}
	return false, fmt.Errorf("destination %s not in route %s", addr, route)
}

// waitDest waits until /status shows addr in route up (or down).
func (h *hamrProc) waitDest(route, addr string, up bool, timeout time.Duration) {
	h.t.Helper()
	waitFor(h.t, timeout, fmt.Sprintf("%s %s up=%v in /status", route, addr, up), func() (bool, error) {
		got, err := h.destUp(route, addr)
		return err == nil && got == up, err
	})
}

func (h *hamrProc) logContains(s string) bool { return strings.Contains(h.log.String(), s) }

// metrics reads /metrics into a map from series to value. A series is
// written as in the text format with its labels sorted by name, as
// series() writes it: `hamr_route_split_brain_total{route="rw"}`.
func (h *hamrProc) metrics() (map[string]float64, error) {
	resp, err := h.get("/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	m := make(map[string]float64)
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("GET /metrics: bad line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("GET /metrics: bad line %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, nil
}

// series names one metric series as metrics() keys it; labels are name,
// value pairs in any order. (The label values the tests use need no
// escaping.)
func series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	pairs := make([]string, 0, len(labels)/2)
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// metric returns the value of one series, 0 when it is absent (a counter
// never incremented).
func (h *hamrProc) metric(name string, labels ...string) (float64, error) {
	m, err := h.metrics()
	if err != nil {
		return 0, err
	}
	return m[series(name, labels...)], nil
}

// waitMetric waits until a series has the value want.
func (h *hamrProc) waitMetric(want float64, timeout time.Duration, name string, labels ...string) {
	h.t.Helper()
	waitFor(h.t, timeout, fmt.Sprintf("%s = %v in /metrics", series(name, labels...), want), func() (bool, error) {
		v, err := h.metric(name, labels...)
		if err == nil && v != want {
			err = fmt.Errorf("%s = %v", series(name, labels...), v)
		}
		return err == nil, err
	})
}

// waitExit waits up to timeout for hamr to exit and reports whether it did.
func (h *hamrProc) waitExit(timeout time.Duration) bool {
	select {
	case <-h.done:
		return true
	default:
	}
	if timeout <= 0 {
		return false
	}
	select {
	case <-h.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// waitFor polls cond every 20 ms until it holds, failing the test after
// timeout with the last error.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is hamr's output, as the tests read it.
type lockedBuffer struct{ logbuf.Buffer }

func (b *lockedBuffer) tail(n int) string { return lastLines([]byte(b.String()), n) }

// MySQL clients. Each connects anew through go-sql-driver's connector, not
// database/sql, whose pool would retry a failed connection behind the
// test's back.

// session is one client connection.
type session struct {
	conn driver.Conn
}

func connect(ctx context.Context, addr string) (*session, error) {
	cfg, err := mysql.ParseDSN(AppDSN(addr))
	if err != nil {
		return nil, err
	}
	cfg.ReadTimeout = 10 * time.Second
	cfg.WriteTimeout = 10 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &session{conn: conn}, nil
}

func (s *session) Close() error { return s.conn.Close() }

// value runs a query and returns the first column of its first row.
func (s *session) value(ctx context.Context, query string) (string, error) {
	rows, err := s.conn.(driver.QueryerContext).QueryContext(ctx, query, nil)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	dest := make([]driver.Value, len(rows.Columns()))
	if err := rows.Next(dest); err != nil {
		return "", fmt.Errorf("%s: %w", query, err)
	}
	if b, ok := dest[0].([]byte); ok {
		return string(b), nil
	}
	return fmt.Sprint(dest[0]), nil
}

// port returns the session's server's @@port.
func (s *session) port(ctx context.Context) (int, error) {
	v, err := s.value(ctx, "SELECT @@port")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

// portVia opens a new connection to addr, asks SELECT @@port and closes.
func portVia(ctx context.Context, addr string) (int, error) {
	s, err := connect(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	return s.port(ctx)
}

// mustPortVia is portVia failing the test on error.
func mustPortVia(t testing.TB, addr string) int {
	t.Helper()
	p, err := portVia(context.Background(), addr)
	if err != nil {
		t.Fatalf("SELECT @@port via %s: %v", addr, err)
	}
	return p
}

// mariadbCLI runs the mariadb command-line client against 127.0.0.1:port.
func mariadbCLI(port int, query string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mariadb", "--no-defaults", "--protocol=tcp", "-h127.0.0.1",
		"-P"+strconv.Itoa(port), "-u"+AppUser, "-p"+AppPassword, "--connect-timeout=5", "-N", "-B", "-e", query)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// mysqlError returns err as a server error packet, or fails the test.
func mysqlError(t testing.TB, err error) *mysql.MySQLError {
	t.Helper()
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		t.Fatalf("got error %v (%T); want a MySQL error packet", err, err)
	}
	return me
}

// closingServer listens on addr (127.0.0.1:0 picks a port) and closes
// every connection it accepts, enough for tcp health checks, until stop
// or the end of the test. It returns the address it listens on.
func closingServer(t testing.TB, addr string) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { ln.Close(); <-done }) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// holdServer listens on 127.0.0.1 and keeps every connection open, so
// that a session through hamr stays up without a database (health
// checks of level tcp connect too). release closes them all, and those
// that come later at once.
func holdServer(t testing.TB) (addr string, release func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	released := false
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if released {
				c.Close()
			} else {
				held = append(held, c)
			}
			mu.Unlock()
		}
	}()
	release = func() {
		mu.Lock()
		defer mu.Unlock()
		released = true
		for _, c := range held {
			c.Close()
		}
		held = nil
	}
	t.Cleanup(func() {
		ln.Close()
		release()
	})
	return ln.Addr().String(), release
}
