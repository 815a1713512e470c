package main

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hamr-project/hamr/conf"
)

const sysbenchSample = `sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Latency histogram (values are in milliseconds)
       value  ------------- distribution ------------- count
       0.070 |**                                       10
       0.100 |****************************************  80
       0.200 |*****                                    9
       1.000 |*                                        1
 
SQL statistics:
    queries performed:
        read:                            1000
        total:                           1000
    transactions:                        1000   (999.00 per sec.)
    queries:                             1000   (999.50 per sec.)
    ignored errors:                      2      (0.00 per sec.)
    reconnects:                          1      (0.00 per sec.)

Latency (ms):
         min:                                    0.07
         avg:                                    0.10
         max:                                    1.00
         99th percentile:                        0.20
`

func TestParseSysbench(t *testing.T) {
	r, err := parseSysbench(sysbenchSample)
	if err != nil {
		t.Fatal(err)
	}
	want := sysbenchResult{queries: 1000, qps: 999.5, p50: 0.1, p99: 0.2, errors: 3}
	if r != want {
		t.Errorf("parseSysbench = %+v, want %+v", r, want)
	}
	if _, err := parseSysbench("FATAL: error 2002"); err == nil {
		t.Error("parseSysbench accepted output without results")
	}
}

func TestRatioOrientation(t *testing.T) {
	if got := ratio(2, 1, false); got != 2 {
		t.Errorf("higher-is-better ratio = %v, want 2", got)
	}
	if got := ratio(2, 1, true); got != 0.5 {
		t.Errorf("lower-is-better ratio = %v, want 0.5", got)
	}
	if got := ratio(0, 0, true); got != 1 {
		t.Errorf("0 errors against 0 = %v, want 1 (a tie)", got)
	}
	if got := ratio(0, 8, true); !math.IsNaN(got) {
		t.Errorf("0 errors against 8 = %v, want NaN (no finite ratio)", got)
	}
	if got := ratio(8, 0, true); got != 0 {
		t.Errorf("8 errors against 0 = %v, want 0", got)
	}
	if got := median([]float64{3, 1, 2, 10}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
	// Ratios pair contenders round by round: a slow round slows both.
	var rep Report
	def := metricDef{Workload: "w", Metric: "m"}
	for i, v := range [][2]float64{{10, 8}, {2, 1}, {30, 20}} {
		rep.setRound(i + 1)
		rep.add(def, hamr, v[0])
		rep.add(def, haproxy, v[1])
	}
	rep.setRound(4)
	rep.add(def, hamr, 5) // HAProxy failed in round 4: not paired
	rep.finish()
	row := rep.row("w", "m")
	if got := row.Ratios["hamr/haproxy"]; got != 1.5 {
		t.Errorf("paired ratio = %v, want 1.5 (median of 1.25, 2, 1.5)", got)
	}
	if got := row.Median[hamr]; got != 7.5 {
		t.Errorf("median hamr = %v, want 7.5", got)
	}
	if got := row.RoundRatios["hamr/haproxy"]; !slices.Equal(got, []float64{1.25, 2, 1.5}) {
		t.Errorf("round ratios = %v, want [1.25 2 1.5]", got)
	}
}

// TestTargetRounds: a ratio target says how many rounds met it on their
// own, and the table shows the rounds' range beside the median.
func TestTargetRounds(t *testing.T) {
	var rep Report
	def := metricDef{Workload: "w", Metric: "rate", Goal: true}
	for i, v := range [][2]float64{{12, 10}, {10, 10}, {23, 20}} { // 1.2, 1.0, 1.15
		rep.setRound(i + 1)
		rep.add(def, hamr, v[0])
		rep.add(def, haproxy, v[1])
	}
	rep.finish()
	var tg *Target
	for i := range rep.Targets {
		if rep.Targets[i].What == "w rate: hamr/HAProxy" {
			tg = &rep.Targets[i]
		}
	}
	if tg == nil {
		t.Fatalf("no target for the goal row: %+v", rep.Targets)
	}
	if !tg.Met || tg.RoundsMet != 2 || tg.Rounds != 3 {
		t.Errorf("target = %+v, want met, in 2 of 3 rounds", *tg)
	}
	var b strings.Builder
	rep.writeTargets(&b, true)
	if !strings.Contains(b.String(), "| w rate: hamr/HAProxy | >= 1.10 | 1.150 | met (2 of 3 rounds) |") {
		t.Errorf("targets table:\n%s", b.String())
	}
	b.Reset()
	if err := rep.writeTable(&b, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| 1.15 (1.00-1.20) |") {
		t.Errorf("results table lacks the rounds' range:\n%s", b.String())
	}
}

// TestQuickFlags: -quick shrinks every size the command line did not set.
func TestQuickFlags(t *testing.T) {
	o, err := parseFlags([]string{"-quick", "-idle", "50"})
	if err != nil {
		t.Fatal(err)
	}
	q := quickOptions(options{})
	if o.idleSessions != 50 || o.rounds != q.rounds || o.sysbenchTime != q.sysbenchTime {
		t.Errorf("-quick -idle 50: idle %d, rounds %d, sysbench %v; want 50, %d, %v",
			o.idleSessions, o.rounds, o.sysbenchTime, q.rounds, q.sysbenchTime)
	}
}

// TestFlagErrors: a value out of range is refused, naming what is wrong.
func TestFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-rounds", "0"}, "-rounds 0"},
		{[]string{"-failover-kills", "0"}, "-failover-kills 0"},
		{[]string{"-failover-kills", "21"}, "-failover-kills 21"},
		{[]string{"-failover-after", "0s"}, "-failover-after 0s"},
		{[]string{"-contenders", "hamr,nginx"}, `"nginx"`},
		{[]string{"-workloads", "bulk,tpcc"}, `"tpcc"`},
	} {
		if _, err := parseFlags(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want one with %q", c.args, err, c.want)
		}
	}
}

func TestConfigs(t *testing.T) {
	routes := []route{
		{name: "bulk", port: 7001, dests: []string{"127.0.0.1:9000"}},
		{name: "fo", port: 7002, dests: []string{"127.0.0.1:3306", "127.0.0.1:3307"}, mysql: true, failover: true},
	}
	h := haproxyConfig(routes, 2, 20000)
	for _, s := range []string{"nbthread 2", "mode tcp", "option splice-auto", "tune.pipesize 1048576",
		"timeout connect", "server s0 127.0.0.1:9000 check inter 500\n", "option mysql-check user " + checkUser,
		"option redispatch 1", "check inter 100 fall 1 rise 1 observe layer4 error-limit 1 on-error mark-down backup"} {
		if !strings.Contains(h, s) {
			t.Errorf("haproxy config lacks %q:\n%s", s, h)
		}
	}
	if c := hamrConfig("127.0.0.1:8081", routes); strings.Contains(c, "[io]") {
		t.Errorf("default hamr config has an [io] section:\n%s", c)
	}
	loops, kernelRelay = 3, true
	defer func() { loops, kernelRelay = 0, false }()
	if _, err := conf.Parse("bench.toml", []byte(hamrConfig("127.0.0.1:8081", routes))); err != nil {
		t.Errorf("hamr config with [io] does not parse: %v", err)
	}
	c := hamrConfig("127.0.0.1:8081", routes)
	for _, s := range []string{"[io]\nthreads = 3\nkernel_relay = true\n"} {
		if !strings.Contains(c, s) {
			t.Errorf("hamr config lacks %q:\n%s", s, c)
		}
	}
	for _, s := range []string{"[routing.bulk]", "bind_port = 7001", `destinations = ["127.0.0.1:3306", "127.0.0.1:3307"]`,
		"[routing.fo.health]", `level = "login"`, `user = "` + checkUser + `"`, "max_connections = 20000"} {
		if !strings.Contains(c, s) {
			t.Errorf("hamr config lacks %q:\n%s", s, c)
		}
	}
}

// TestQuickRun runs the -quick suite against direct, hamr and (when
// installed, or installed because CI=true) HAProxy, and checks that every
// workload produced sane values. It does not judge the numbers.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts MariaDB, hamr and HAProxy; not in -short")
	}
	ci := os.Getenv("CI") == "true"
	if !ci {
		for _, bin := range []string{"mariadbd", "mariadb-install-db", "sysbench"} {
			if _, err := lookPath(bin); err != nil {
				t.Skipf("%s not installed (set CI=true to install it)", bin)
			}
		}
	}
	contenders := []string{direct, hamr}
	if _, err := lookPath("haproxy"); err == nil || ci {
		contenders = append(contenders, haproxy)
	}
	dir := t.TempDir()
	o, err := parseFlags([]string{"-quick", "-no-install=" + map[bool]string{true: "false", false: "true"}[ci],
		"-contenders", strings.Join(contenders, ","),
		"-json", filepath.Join(dir, "r.json"), "-svg", filepath.Join(dir, "r.svg")})
	if err != nil {
		t.Fatal(err)
	}
	o.progress = testWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	start := time.Now()
	rep, err := run(ctx, o)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("quick run took %v", time.Since(start).Round(time.Second))
	// A run that reports trouble (sysbench errors, a proxy that died, a
	// failover B did not serve) is a failed smoke test; only the lowered
	// idle count is expected on a machine with a small fd limit.
	for _, e := range rep.Errors {
		if strings.Contains(e, "do not fit RLIMIT_NOFILE") {
			t.Logf("reported: %s", e)
			continue
		}
		t.Errorf("reported: %s", e)
	}

	// Every workload has a positive main value for every contender it
	// applies to.
	want := map[string][]string{
		"bulk c→s 1 stream/throughput":          contenders,
		"bulk s→c 4 streams/throughput":         contenders,
		"point_select 8 thr/QPS":                contenders,
		"point_select 32 thr/p99 latency":       contenders,
		"connect+SELECT 1+close/rate":           contenders,
		"idle sessions/proxy fds":               contenders[1:],
		"failover (kill primary)/longest gap":   contenders[1:],
		"point_select 8 thr/proxy CPU":          contenders[1:],
		"bulk c→s 4 streams/proxy CPU":          contenders[1:],
		"connect+SELECT 1+close/proxy CPU":      contenders[1:],
		"failover (kill primary)/client errors": contenders[1:],
		"idle sessions/proxy RSS":               contenders[1:],
		"bulk s→c 1 stream/throughput":          contenders,
		"bulk c→s 4 streams/throughput":         contenders,
		"point_select 32 thr/QPS":               contenders,
		"point_select 8 thr/p50 latency":        contenders,
	}
	for key, cs := range want {
		wl, metric, _ := strings.Cut(key, "/")
		row := rep.row(wl, metric)
		if row == nil {
			t.Errorf("no row %q", key)
			continue
		}
		for _, c := range cs {
			v, ok := row.Median[c]
			switch {
			case !ok:
				t.Errorf("%s: no value for %s", key, c)
			case math.IsNaN(v) || v < 0 && !strings.Contains(metric, "RSS"): // RSS can shrink
				t.Errorf("%s: %s = %v", key, c, v)
			case v == 0 && !strings.Contains(metric, "errors") && !strings.Contains(metric, "CPU") && !strings.Contains(metric, "RSS"):
				// CPU can round to 0 ticks in a tiny run; RSS can shrink.
				t.Errorf("%s: %s = 0", key, c)
			}
		}
	}
	if row := rep.row("idle sessions", "proxy fds"); row != nil {
		for c, v := range row.Median {
			if v < 1.5 { // a proxied session needs a client and a server socket
				t.Errorf("idle sessions: %s holds %.2f fds per session, want >= 2", c, v)
			}
		}
	}
	if row := rep.row("bulk c→s 1 stream", "throughput"); row != nil {
		if _, ok := row.Ratios["hamr/direct"]; !ok {
			t.Error("no hamr/direct ratio")
		}
	}

	b, err := os.ReadFile(o.jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results JSON: %v", err)
	}
	if len(back.Rows) != len(rep.Rows) || len(back.Targets) == 0 {
		t.Errorf("results JSON has %d rows and %d targets, want %d and > 0", len(back.Rows), len(back.Targets), len(rep.Rows))
	}
	svg, err := os.ReadFile(o.svgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(svg), "<svg") || strings.Count(string(svg), "<rect") < 3*7 {
		t.Errorf("chart has too few bars:\n%.300s", svg)
	}
}

// testWriter sends the suite's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
