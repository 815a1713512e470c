package integration

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
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
	Admin    string        // host:port of the admin endpoint
	Level    string        // health level: tcp, login or role; default login
	Interval time.Duration // health interval; default checkInterval
	Health   string        // extra [health] lines
	Routes   []routeConfig
}

type routeConfig struct {
	Name  string
	Port  int
	Mode  string // read-write or read-only
	Dests []string
	Extra string // extra lines for the section, e.g. `max_connections = 2`
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
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\ndrain_timeout = \"1s\"\n\n[logger]\nlevel = \"debug\"\n\n")
	fmt.Fprintf(&b, "[admin]\naddress = %q\n\n", c.Admin)
	fmt.Fprintf(&b, "[health]\ninterval = %q\ntimeout = \"1s\"\nrise = %d\nfall = %d\nlevel = %q\nuser = %q\n%s\n",
		interval.String(), rise, fall, level, MonitorUser, c.Health)
	for _, r := range c.Routes {
		dests := make([]string, len(r.Dests))
		for i, d := range r.Dests {
			dests[i] = strconv.Quote(d)
		}
		fmt.Fprintf(&b, "[routing.%s]\nbind_address = \"127.0.0.1\"\nbind_port = %d\nmode = %q\ndestinations = [%s]\nconnect_timeout = \"1s\"\n%s\n",
			r.Name, r.Port, r.Mode, strings.Join(dests, ", "), r.Extra)
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
	h := &hamrProc{t: t, Config: filepath.Join(t.TempDir(), "hamr.toml"), Admin: cfg.Admin}
	h.writeConfig(cfg)
	h.cmd = exec.Command(hamrBin, "run", "-c", h.Config)
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
	h.writeFile(cfg.TOML())
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

// ctl runs `hamr ctl --admin ADDR args...` and returns its combined output.
func (h *hamrProc) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hamrBin, append([]string{"ctl", "--admin", h.Admin}, args...)...)
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
	Primary      string       `json:"primary"`
	Sessions     int          `json:"sessions"`
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

func (h *hamrProc) status() (*status, error) {
	resp, err := httpClient.Get("http://" + h.Admin + "/status")
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

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

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
