package health

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// changes records OnChange calls.
type changes struct {
	mu  sync.Mutex
	ups []bool
	ch  chan Status
}

func newChanges() *changes { return &changes{ch: make(chan Status, 100)} }

func (c *changes) on(up bool, st Status) {
	c.mu.Lock()
	c.ups = append(c.ups, up)
	c.mu.Unlock()
	select {
	case c.ch <- st:
	default:
	}
}

func (c *changes) get() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bool(nil), c.ups...)
}

// wait returns the next OnChange status, failing the test if none comes
// within a generous bound (a hang, not a timing assertion).
func (c *changes) wait(t *testing.T) Status {
	t.Helper()
	select {
	case st := <-c.ch:
		return st
	case <-time.After(20 * time.Second):
		t.Fatal("no OnChange call")
		return Status{}
	}
}

func TestHysteresis(t *testing.T) {
	// Steps: "+" a good check, "-" a bad check, "p" a passive Fail.
	// want: up after each step; calls: the OnChange arguments.
	tests := []struct {
		name       string
		rise, fall int
		steps      string
		want       string // "u" up, "d" down after each step
		calls      []bool
		down       bool // Options.StartDown
		resume     bool // Options.Resume
	}{
		{"first good changes nothing", 2, 2, "+", "u", nil, false, false},
		{"first bad applies at once", 3, 3, "-", "d", []bool{false}, false, false},
		{"fall 2", 2, 2, "+-+--", "uuuud", []bool{false}, false, false},
		{"rise 2", 2, 2, "-+-++", "ddddu", []bool{false, true}, false, false},
		{"rise 3 fall 1", 3, 1, "+-++++", "uddduu", []bool{false, true}, false, false},
		{"rise 1 fall 1 flips", 1, 1, "+-+-", "udud", []bool{false, true, false}, false, false},
		{"passive then rise", 2, 2, "+p++", "uddu", []bool{false, true}, false, false},
		{"passive resets rise", 2, 2, "-+p++", "ddddu", []bool{false, true}, false, false},
		{"passive before first check", 2, 2, "p++", "ddu", []bool{false, true}, false, false},
		{"passive while down", 2, 2, "--p+", "dddd", []bool{false}, false, false},
		{"good after passive then bad", 2, 3, "p+-++", "ddddu", []bool{false, true}, false, false},
		// A checker taking over (a reload) keeps the hysteresis.
		{"resume up: fall applies", 2, 3, "--+---", "uuuuud", []bool{false}, false, true},
		{"resume down: rise applies", 3, 2, "++-+++", "dddddu", []bool{true}, true, true},
		{"start down without resume", 3, 2, "+", "u", []bool{true}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.steps) != len(tt.want) {
				t.Fatalf("bad case: %d steps, %d wants", len(tt.steps), len(tt.want))
			}
			ch := newChanges()
			c := NewChecker(Config{Addr: "db:3306", Rise: tt.rise, Fall: tt.fall},
				Options{OnChange: ch.on, StartDown: tt.down, Resume: tt.resume})
			for i, s := range tt.steps {
				switch s {
				case '+':
					c.apply(result{ok: true, class: classOK, reason: "ok", role: RoleUnknown}, time.Now())
				case '-':
					c.apply(failed(classDial, "dial: connection refused"), time.Now())
				case 'p':
					c.Fail(errors.New("connection refused"))
				}
				if got, want := c.Status().Up, tt.want[i] == 'u'; got != want {
					t.Fatalf("after step %d (%s): up = %v, want %v", i, tt.steps[:i+1], got, want)
				}
			}
			if got := ch.get(); fmt.Sprint(got) != fmt.Sprint(tt.calls) {
				t.Errorf("OnChange calls = %v, want %v", got, tt.calls)
			}
		})
	}
}

func TestFailReason(t *testing.T) {
	c := NewChecker(Config{Addr: "db:3306"}, Options{})
	c.Fail(errors.New("connection refused"))
	st := c.Status()
	if st.Up || st.Reason != "passive: dial failed: connection refused" {
		t.Errorf("status = %+v", st)
	}
}

func boolp(b bool) *bool { return &b }

func TestLevels(t *testing.T) {
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()
	running := fakeReplica{io: "Yes", sql: "Yes", lag: int64(3)}
	tests := []struct {
		name     string
		cfg      Config // Addr defaults to the fake's
		state    fakeState
		up       bool
		reason   string // prefix
		role     Role
		readOnly bool
		lag      time.Duration
		lagKnown bool
	}{
		{name: "tcp", cfg: Config{Level: LevelTCP}, up: true, reason: "ok", role: RoleUnknown},
		{name: "tcp refused", cfg: Config{Level: LevelTCP, Addr: refused}, reason: "dial: connection refused", role: RoleUnknown},
		{name: "login", cfg: Config{Level: LevelLogin, User: "mon"}, up: true, reason: "ok", role: RoleUnknown},
		{name: "login refused", cfg: Config{Level: LevelLogin, User: "mon", Addr: refused}, reason: "dial: connection refused", role: RoleUnknown},
		{name: "login password", cfg: Config{Level: LevelLogin, User: "pw", Password: "secret"}, up: true, reason: "ok", role: RoleUnknown},
		{name: "login bad password", cfg: Config{Level: LevelLogin, User: "pw", Password: "nope"}, reason: "login: ERROR 1045", role: RoleUnknown},
		{name: "login unknown user", cfg: Config{Level: LevelLogin, User: "who"}, reason: "login: ERROR", role: RoleUnknown},

		{name: "writer writable", cfg: Config{Level: LevelRole, User: "mon", Writer: true}, up: true, reason: "ok", role: RolePrimary},
		{name: "writer read_only", cfg: Config{Level: LevelRole, User: "mon", Writer: true},
			state: fakeState{readOnly: true}, reason: "read_only is ON", role: RoleReadOnly, readOnly: true},
		{name: "writer read_only replica", cfg: Config{Level: LevelRole, User: "mon", Writer: true},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{running}},
			reason: "read_only is ON", role: RoleReplica, readOnly: true, lag: 3 * time.Second, lagKnown: true},
		{name: "writer super_read_only", cfg: Config{Level: LevelRole, User: "mon", Writer: true},
			state: fakeState{superReadOnly: boolp(true)}, reason: "super_read_only is ON", role: RoleReadOnly, readOnly: true},
		{name: "writer read_only NULL", cfg: Config{Level: LevelRole, User: "mon", Writer: true},
			state: fakeState{readOnlyNull: true}, reason: "query: ", role: RoleUnknown},
		{name: "writer mysql writable", cfg: Config{Level: LevelRole, User: "mon", Writer: true},
			state: fakeState{superReadOnly: boolp(false)}, up: true, reason: "ok", role: RolePrimary},

		{name: "reader primary in list", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			up: true, reason: "ok", role: RolePrimary},
		{name: "reader read-only no replication", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state: fakeState{readOnly: true}, up: true, reason: "ok", role: RoleReadOnly, readOnly: true},
		{name: "reader replica", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state: fakeState{readOnly: true, replicas: []fakeReplica{running}},
			up:    true, reason: "ok", role: RoleReplica, readOnly: true, lag: 3 * time.Second, lagKnown: true},
		{name: "reader lagging", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: int64(12)}}},
			reason: "lag 12s > 10s", role: RoleReplica, readOnly: true, lag: 12 * time.Second, lagKnown: true},
		{name: "reader lag not checked", cfg: Config{Level: LevelRole, User: "mon"},
			state: fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: int64(5000)}}},
			up:    true, reason: "ok", role: RoleReplica, readOnly: true, lag: 5000 * time.Second, lagKnown: true},
		{name: "reader lag NULL", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: nil}}},
			reason: "lag unknown", role: RoleReplica, readOnly: true},
		{name: "reader lag 2^64-1", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: uint64(math.MaxUint64)}}},
			reason: "lag unknown", role: RoleReplica, readOnly: true},
		{name: "reader lag negative", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: int64(-1)}}},
			reason: "lag unknown", role: RoleReplica, readOnly: true},
		{name: "reader lag NULL not checked", cfg: Config{Level: LevelRole, User: "mon"},
			state: fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "Yes", lag: nil}}},
			up:    true, reason: "ok", role: RoleReplica, readOnly: true},
		{name: "reader SQL thread stopped", cfg: Config{Level: LevelRole, User: "mon"},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Yes", sql: "No", lag: nil}}},
			reason: "replication SQL thread stopped", role: RoleReplica, readOnly: true},
		{name: "reader IO thread connecting", cfg: Config{Level: LevelRole, User: "mon", MaxLag: time.Second},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "Connecting", sql: "Yes", lag: nil}}},
			reason: "replication IO thread connecting", role: RoleReplica, readOnly: true},
		{name: "reader both threads stopped", cfg: Config{Level: LevelRole, User: "mon"},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{{io: "No", sql: "No", lag: nil}}},
			reason: "replication IO thread stopped, SQL thread stopped", role: RoleReplica, readOnly: true},
		{name: "reader second channel stopped", cfg: Config{Level: LevelRole, User: "mon"},
			state:  fakeState{readOnly: true, replicas: []fakeReplica{running, {io: "Yes", sql: "No", lag: nil}}},
			reason: "replication SQL thread stopped", role: RoleReplica, readOnly: true, lag: 3 * time.Second},
		{name: "reader legacy server", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 10 * time.Second},
			state: fakeState{readOnly: true, legacy: true, superReadOnly: boolp(true), replicas: []fakeReplica{running}},
			up:    true, reason: "ok", role: RoleReplica, readOnly: true, lag: 3 * time.Second, lagKnown: true},
		{name: "reader legacy lagging", cfg: Config{Level: LevelRole, User: "mon", MaxLag: 2 * time.Second},
			state:  fakeState{readOnly: true, legacy: true, replicas: []fakeReplica{running}},
			reason: "lag 3s > 2s", role: RoleReplica, readOnly: true, lag: 3 * time.Second, lagKnown: true},
	}
	f := newFakeDB(t, nil, "", map[string]string{"mon": "", "pw": "secret"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.set(func(s *fakeState) { *s = tt.state })
			cfg := tt.cfg
			if cfg.Addr == "" {
				cfg.Addr = f.addr
			}
			cfg.Rise, cfg.Fall = 3, 3 // the first check still applies at once
			quits := f.quits.Load()
			c := NewChecker(cfg, Options{})
			c.checkOnce(context.Background())
			st := c.Status()
			if st.Up != tt.up || !strings.HasPrefix(st.Reason, tt.reason) || st.Role != tt.role ||
				st.ReadOnly != tt.readOnly || st.Lag != tt.lag || st.LagKnown != tt.lagKnown {
				t.Errorf("status = %+v\nwant up=%v reason=%q… role=%s readOnly=%v lag=%v lagKnown=%v",
					st, tt.up, tt.reason, tt.role, tt.readOnly, tt.lag, tt.lagKnown)
			}
			if st.Checked.IsZero() {
				t.Error("Checked not set")
			}
			// Every session that logged in ended with COM_QUIT. The
			// server counts it when it sees the close, so wait for it.
			if cfg.Level != LevelTCP && cfg.Addr == f.addr && !strings.HasPrefix(tt.reason, "login:") {
				waitFor(t, "COM_QUIT", func() bool { return f.quits.Load() == quits+1 })
			}
		})
	}
}

// runChecker runs c until the test ends, and waits for Run to return.
func runChecker(t *testing.T, c *Checker) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitFor polls cond for a generous bound; it fails only on a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestInjectedDial(t *testing.T) {
	f := newFakeDB(t, nil, "", map[string]string{"mon": "pw"})
	var mu sync.Mutex
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, network+" "+addr)
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, "tcp", f.addr)
	}
	c := NewChecker(Config{Addr: "db1.invalid:3306", Level: LevelLogin, User: "mon", Password: "pw"}, Options{Dial: dial})
	c.checkOnce(context.Background())
	if st := c.Status(); !st.Up || st.Reason != "ok" {
		t.Errorf("status = %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(dialed) != "[tcp db1.invalid:3306]" {
		t.Errorf("dialed %v", dialed)
	}
}

func TestCachingSHA2(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewServer("8.0.36-fake", mysql.DEFAULT_COLLATION_ID, mysql.AUTH_CACHING_SHA2_PASSWORD, key, nil)
	f := newFakeDB(t, srv, mysql.AUTH_CACHING_SHA2_PASSWORD, map[string]string{"mon": "s3cret"})
	for _, tt := range []struct {
		pass   string
		up     bool
		reason string
	}{
		{"s3cret", true, "ok"},
		{"s3cret", true, "ok"}, // second login: the server's fast-auth cache
		{"wrong", false, "login: ERROR 1045"},
	} {
		c := NewChecker(Config{Addr: f.addr, Level: LevelLogin, User: "mon", Password: tt.pass}, Options{})
		c.checkOnce(context.Background())
		if st := c.Status(); st.Up != tt.up || !strings.HasPrefix(st.Reason, tt.reason) {
			t.Errorf("password %q: status = %+v, want up=%v reason %q", tt.pass, st, tt.up, tt.reason)
		}
	}
}

// TestClientPanic: a caching_sha2_password user on a server without RSA
// keys makes go-mysql's client panic on full authentication (it parses the
// server's non-PEM answer as a key). The check must fail, not crash.
func TestClientPanic(t *testing.T) {
	srv := server.NewServer("8.0.36-fake", mysql.DEFAULT_COLLATION_ID, mysql.AUTH_NATIVE_PASSWORD, nil, nil)
	f := newFakeDB(t, srv, mysql.AUTH_CACHING_SHA2_PASSWORD, map[string]string{"mon": "s3cret"})
	c := NewChecker(Config{Addr: f.addr, Level: LevelLogin, User: "mon", Password: "s3cret"}, Options{})
	c.checkOnce(context.Background())
	if st := c.Status(); st.Up || !strings.HasPrefix(st.Reason, "login: mysql client panic") {
		t.Errorf("status = %+v", st)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Addr: "db"}, "config: addr"},
		{Config{Addr: "db:3306", Level: "ping"}, `config: level "ping" is not a level`},
		{Config{Addr: "db:3306", Level: LevelRole}, "config: level role needs a user"},
		{Config{Addr: "db:3306", Rise: -1}, "config: rise -1 is negative"},
		{Config{Addr: "db:3306", Timeout: -time.Second}, "config: timeout -1s is negative"},
		{Config{Addr: "db:3306", Interval: -time.Second}, "config: interval -1s is negative"},
	} {
		if err := tt.cfg.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", tt.cfg)
		}
		// Run, as the daemon does: it must check (and fail), not panic.
		c := NewChecker(tt.cfg, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); c.Run(ctx) }()
		for deadline := time.Now().Add(5 * time.Second); c.Status().Checked.IsZero() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
		if st := c.Status(); st.Up || !strings.HasPrefix(st.Reason, tt.want) {
			t.Errorf("%+v: status = %+v, want reason %q…", tt.cfg, st, tt.want)
		}
	}
	if err := (Config{Addr: "db:3306", User: "mon"}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count fds: %v", err)
	}
	return len(ents)
}

func TestHungServer(t *testing.T) {
	for _, level := range []string{LevelLogin, LevelRole} {
		t.Run(level, func(t *testing.T) {
			s := newHungServer(t)
			m := NewMetrics(prometheus.NewRegistry())
			ch := newChanges()
			c := NewChecker(Config{Addr: s.addr, Level: level, User: "mon", Timeout: 100 * time.Millisecond, Fall: 2},
				Options{Metrics: m, Route: "rw", OnChange: ch.on})
			before := openFDs(t)
			const n = 5
			for range n {
				c.checkOnce(context.Background())
				if st := c.Status(); st.Up || st.Reason != "login: timeout after 100ms" {
					t.Fatalf("status = %+v", st)
				}
			}
			if got := testutil.ToFloat64(m.checks.WithLabelValues("rw", s.addr, classTimeout)); got != n {
				t.Errorf("timeout checks = %v, want %d", got, n)
			}
			if got := ch.get(); fmt.Sprint(got) != "[false]" {
				t.Errorf("OnChange calls = %v, want [false]", got)
			}
			// Every connection the checks opened was closed by the client.
			waitFor(t, "the client to close its connections", func() bool { return s.closed.Load() == n })
			if got := s.accepted.Load(); got != n {
				t.Errorf("server accepted %d connections, want %d", got, n)
			}
			// Our side holds no more descriptors than before (the
			// server's ends are closed once it sees EOF).
			waitFor(t, "descriptors to be released", func() bool { return openFDs(t) <= before })
		})
	}
}

// TestHungDoesNotStall runs a checker stuck on a server that never answers
// beside one of a healthy server: the healthy one keeps checking, and
// cancelling Run ends the stuck check at once.
func TestHungDoesNotStall(t *testing.T) {
	s := newHungServer(t)
	f := newFakeDB(t, nil, "", map[string]string{"mon": "", "pw": "secret"})
	m := NewMetrics(prometheus.NewRegistry())
	hung := NewChecker(Config{Addr: s.addr, Level: LevelLogin, User: "mon", Timeout: time.Hour, Interval: 10 * time.Millisecond},
		Options{Metrics: m, Route: "rw"})
	good := NewChecker(Config{Addr: f.addr, Level: LevelRole, User: "mon", Writer: true, Interval: 10 * time.Millisecond},
		Options{Metrics: m, Route: "rw"})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range []*Checker{hung, good} {
		wg.Go(func() { c.Run(ctx) })
	}
	defer wg.Wait()
	defer cancel()

	waitFor(t, "the hung check to start", func() bool { return s.accepted.Load() == 1 })
	waitFor(t, "five good checks", func() bool {
		return testutil.ToFloat64(m.checks.WithLabelValues("rw", f.addr, classOK)) >= 5
	})
	if st := hung.Status(); !st.Up || !st.Checked.IsZero() {
		t.Errorf("hung status = %+v, want the initial state", st)
	}
	cancel()
	wg.Wait()
	// Cancelled checks are not results.
	if st := hung.Status(); !st.Up {
		t.Errorf("hung status after cancel = %+v", st)
	}
	waitFor(t, "the hung connection to be closed", func() bool { return s.closed.Load() == 1 })
}

func TestRun(t *testing.T) {
	f := newFakeDB(t, nil, "", map[string]string{"mon": "", "pw": "secret"})
	m := NewMetrics(prometheus.NewRegistry())
	ch := newChanges()
	c := NewChecker(Config{Addr: f.addr, Level: LevelRole, User: "mon", Writer: true, Interval: 5 * time.Millisecond, Rise: 2, Fall: 2},
		Options{Metrics: m, Route: "rw", OnChange: ch.on})
	runChecker(t, c)

	waitFor(t, "a first check", func() bool { return !c.Status().Checked.IsZero() })
	f.set(func(s *fakeState) { s.readOnly = true })
	if st := ch.wait(t); st.Up || st.Reason != "read_only is ON" || st.Role != RoleReadOnly {
		t.Errorf("down status = %+v", st)
	}
	if got := testutil.ToFloat64(m.up.WithLabelValues("rw", f.addr)); got != 0 {
		t.Errorf("hamr_destination_up = %v, want 0", got)
	}
	f.set(func(s *fakeState) { s.readOnly = false })
	if st := ch.wait(t); !st.Up || st.Reason != "ok" || st.Role != RolePrimary {
		t.Errorf("up status = %+v", st)
	}
	if got := testutil.ToFloat64(m.up.WithLabelValues("rw", f.addr)); got != 1 {
		t.Errorf("hamr_destination_up = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.transitions.WithLabelValues("rw", f.addr)); got != 2 {
		t.Errorf("transitions = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.role.WithLabelValues("rw", f.addr, string(RolePrimary))); got != 1 {
		t.Errorf("role primary = %v, want 1", got)
	}
	if got := ch.get(); fmt.Sprint(got) != "[false true]" {
		t.Errorf("OnChange calls = %v", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	if m2 := NewMetrics(reg); m2.up != m.up || m2.checks != m.checks {
		t.Error("second NewMetrics on one registry did not reuse the collectors")
	}
	c := NewChecker(Config{Addr: "db:3306", Rise: 1, Fall: 1}, Options{Metrics: m, Route: "ro"})
	c.apply(result{ok: true, class: classOK, reason: "ok", role: RoleReplica, lag: 4 * time.Second, lagKnown: true}, time.Now())
	m.check("ro", "db:3306", result{ok: true, class: classOK, role: RoleReplica, lag: 4 * time.Second, lagKnown: true}, 0.01)
	c.Fail(errors.New("refused"))
	if got := testutil.ToFloat64(m.up.WithLabelValues("ro", "db:3306")); got != 0 {
		t.Errorf("up = %v", got)
	}
	if got := testutil.ToFloat64(m.lag.WithLabelValues("ro", "db:3306")); got != 4 {
		t.Errorf("lag = %v", got)
	}
	if got := testutil.ToFloat64(m.role.WithLabelValues("ro", "db:3306", string(RoleReplica))); got != 1 {
		t.Errorf("role = %v", got)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
		t.Fatalf("gathered %d, %v", n, err)
	}
	m.Delete("ro", "db:3306")
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("after Delete: %d series (%v), want 0", n, err)
	}
	var nilM *Metrics
	nilM.Delete("ro", "db:3306") // no panic
}

// TestStartDown checks that a checker taking over a destination known to
// be down reports it up after its first good check (a reload must not
// leave a recovered destination down in the route).
func TestStartDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ch := newChanges()
	c := NewChecker(Config{Addr: ln.Addr().String(), Level: LevelTCP, Interval: time.Hour, Rise: 3, Fall: 3},
		Options{StartDown: true, OnChange: ch.on})
	if c.Status().Up {
		t.Fatal("StartDown checker starts up")
	}
	runChecker(t, c)
	if st := ch.wait(t); !st.Up {
		t.Fatalf("after the first good check: %+v, want up", st)
	}
}
