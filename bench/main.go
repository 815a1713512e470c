// Command bench measures hamr side by side with a direct connection and
// with HAProxy in mode tcp, in one run, on the loopback interface.
//
//	go run ./bench            # full run, about 6 minutes
//	go run ./bench -quick     # smoke run, about 30 seconds
//
// Contenders alternate within each round (direct, hamr, HAProxy for every
// workload) so machine drift affects them alike; the table shows medians
// over rounds and ratios oriented so that > 1 means the first is better.
// See docs/bench.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// options are the command-line settings of one run.
type options struct {
	rounds       int
	quick        bool
	jsonPath     string
	svgPath      string
	contenders   []string
	workloads    []string
	bulkBytes    int64
	bulkReps     int
	sysbenchTime time.Duration
	sysbenchThr  []int
	connTime     time.Duration
	idleSessions int
	idleSettle   time.Duration
	foWarm       time.Duration
	foAfter      time.Duration
	foKills      int
	hamrBin      string
	src          string
	noInstall    bool
	keep         bool
	render       string
	progress     io.Writer
}

// threads is hamr's GOMAXPROCS and HAProxy's nbthread: the two proxies
// always get the same number of threads.
var threads = runtime.NumCPU()

// loops is hamr's [io] threads, its event loops per route; 0 (the
// default, hamr's own) runs one per P, as many as HAProxy's threads.
var loops = 0

// kernelRelay turns on hamr's experimental [io] kernel_relay.
var kernelRelay = false

var allWorkloads = []string{"bulk", "pointselect", "connrate", "idle", "failover"}

// quickOptions is the smoke-run configuration: every workload once, tiny.
func quickOptions(o options) options {
	o.quick = true
	o.rounds = 1
	o.bulkBytes = 64 << 20
	o.bulkReps = 1
	o.sysbenchTime = 2 * time.Second
	o.connTime = time.Second
	o.idleSessions = 200
	o.foWarm = 700 * time.Millisecond
	o.foAfter = 2 * time.Second
	o.foKills = 1
	return o
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	var contenders, workloads string
	fs.IntVar(&o.rounds, "rounds", 3, "rounds; each runs every workload for every contender")
	fs.BoolVar(&o.quick, "quick", false, "smoke run: one round, tiny sizes (~30 s)")
	fs.StringVar(&o.jsonPath, "json", "", "results file (default bench/results.json in the module)")
	fs.StringVar(&o.svgPath, "svg", "", "chart file (default bench/results.svg in the module)")
	fs.StringVar(&contenders, "contenders", "direct,hamr,haproxy", "comma-separated contenders")
	fs.StringVar(&workloads, "workloads", strings.Join(allWorkloads, ","), "comma-separated workloads")
	fs.Int64Var(&o.bulkBytes, "bulk-bytes", 1_000_000_000, "bytes per bulk measurement")
	fs.IntVar(&o.bulkReps, "bulk-reps", 3, "interleaved bulk measurements per round, summed")
	fs.DurationVar(&o.sysbenchTime, "sysbench-time", 10*time.Second, "duration of each sysbench run")
	fs.DurationVar(&o.connTime, "conn-time", 5*time.Second, "duration of each connection-rate run")
	fs.IntVar(&o.idleSessions, "idle", 10000, "idle sessions to open")
	fs.DurationVar(&o.idleSettle, "idle-settle", time.Second, "wait after opening idle sessions before weighing the proxy")
	fs.DurationVar(&o.foWarm, "failover-warm", time.Second, "load before the primary is killed")
	fs.DurationVar(&o.foAfter, "failover-after", 2*time.Second, "load after the primary is killed")
	fs.IntVar(&o.foKills, "failover-kills", 3, "primaries killed per round under each proxy; the round keeps the medians")
	fs.StringVar(&o.hamrBin, "hamr", "", "use this hamr binary instead of building ./cmd/hamr")
	fs.IntVar(&threads, "threads", runtime.NumCPU(), "hamr's GOMAXPROCS and HAProxy's nbthread")
	fs.IntVar(&loops, "io-threads", 0, "hamr's [io] threads (event loops per route); 0: hamr's default, one per P")
	fs.BoolVar(&kernelRelay, "kernel-relay", false, "run hamr with [io] kernel_relay = true (experimental)")
	fs.BoolVar(&o.noInstall, "no-install", false, "do not apt-get install missing tools")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, datadirs)")
	fs.StringVar(&o.render, "render", "", "measure nothing: print FILE (a results.json) as Markdown")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.sysbenchThr = []int{8, 32}
	if o.quick {
		// Quick sizes, except for what a flag set: -quick -idle 50.
		set := make(map[string]bool)
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		q := quickOptions(o)
		for name, take := range map[string]func(){
			"rounds":         func() { o.rounds = q.rounds },
			"bulk-bytes":     func() { o.bulkBytes = q.bulkBytes },
			"bulk-reps":      func() { o.bulkReps = q.bulkReps },
			"sysbench-time":  func() { o.sysbenchTime = q.sysbenchTime },
			"conn-time":      func() { o.connTime = q.connTime },
			"idle":           func() { o.idleSessions = q.idleSessions },
			"failover-warm":  func() { o.foWarm = q.foWarm },
			"failover-after": func() { o.foAfter = q.foAfter },
			"failover-kills": func() { o.foKills = q.foKills },
		} {
			if !set[name] {
				take()
			}
		}
	}
	o.contenders = splitList(contenders)
	o.workloads = splitList(workloads)
	for _, c := range o.contenders {
		if c != direct && c != hamr && c != haproxy {
			return o, fmt.Errorf("unknown contender %q (want direct, hamr, haproxy)", c)
		}
	}
	for _, w := range o.workloads {
		if !slices.Contains(allWorkloads, w) {
			return o, fmt.Errorf("unknown workload %q (want %s)", w, strings.Join(allWorkloads, ", "))
		}
	}
	switch {
	case threads < 1 || threads > 1024:
		return o, fmt.Errorf("-threads %d: want 1 to 1024", threads)
	case loops < 0 || loops > 1024:
		return o, fmt.Errorf("-io-threads %d: want 0 to 1024", loops)
	case o.rounds < 1 || o.rounds > 20:
		return o, fmt.Errorf("-rounds %d: want 1 to 20", o.rounds)
	case o.bulkBytes < 1<<20 || o.bulkBytes > 100<<30:
		return o, fmt.Errorf("-bulk-bytes %d: want 1 MiB to 100 GiB", o.bulkBytes)
	case o.bulkReps < 1 || o.bulkReps > 20:
		return o, fmt.Errorf("-bulk-reps %d: want 1 to 20", o.bulkReps)
	case o.idleSessions < 1 || o.idleSessions > 50000:
		return o, fmt.Errorf("-idle %d: want 1 to 50000", o.idleSessions)
	case o.sysbenchTime < time.Second || o.sysbenchTime > 10*time.Minute:
		return o, fmt.Errorf("-sysbench-time %v: want 1s to 10m", o.sysbenchTime)
	case o.idleSettle < 0 || o.idleSettle > time.Minute:
		return o, fmt.Errorf("-idle-settle %v: want 0 to 1m", o.idleSettle)
	case o.connTime <= 0 || o.connTime > 10*time.Minute:
		return o, fmt.Errorf("-conn-time %v: want up to 10m", o.connTime)
	case o.foKills < 1 || o.foKills > 20:
		return o, fmt.Errorf("-failover-kills %d: want 1 to 20", o.foKills)
	case o.foWarm <= 0 || o.foWarm > time.Minute || o.foAfter <= 0 || o.foAfter > time.Minute:
		return o, fmt.Errorf("-failover-warm %v, -failover-after %v: want up to 1m each", o.foWarm, o.foAfter)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.render != "" {
		if err := render(os.Stdout, o.render); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	o.progress = os.Stderr
	if err := resolvePaths(&o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "bench: interrupted, stopping (again to force)")
		cancel()
		<-sigs
		stopAll()
		os.Exit(130)
	}()
	rep, err := run(ctx, o)
	cancel()
	stopAll()
	if rep != nil {
		fmt.Println()
		_ = rep.writeTable(os.Stdout, false)
		fmt.Println("\nTargets (hamr):")
		rep.writeTargets(os.Stdout, false)
		if len(rep.Errors) > 0 {
			fmt.Println("\nErrors:")
			for _, e := range rep.Errors {
				fmt.Println("  " + e)
			}
		}
		fmt.Printf("\nwrote %s and %s\n", o.jsonPath, o.svgPath)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// render prints a saved results.json as Markdown: the table, the targets
// and the errors.
func render(w io.Writer, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	rep.finish() // targets as this version of the suite defines them
	if err := rep.writeTable(w, true); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n| target | want | hamr | verdict |\n|---|---|---|---|\n")
	rep.writeTargets(w, true)
	if len(rep.Errors) > 0 {
		fmt.Fprintf(w, "\nReported by the run:\n\n")
		for _, e := range rep.Errors {
			fmt.Fprintf(w, "- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	return nil
}

// target is one contender as the workloads see it.
type target struct {
	name  string
	px    *proxy            // nil for direct
	addrs map[string]string // route name -> address to connect to
}

// cpu returns the CPU seconds the proxy has cost so far: its process's,
// and the kernel's workers' (kworker threads), which run hamr's kernel
// relay; ok is false for direct. Workers are counted for every proxy
// alike, with whatever else they did meanwhile (little, on an idle
// machine).
func (t *target) cpu() (float64, bool) {
	if t.px == nil {
		return 0, false
	}
	v, err := procCPU(t.px.pid())
	if err != nil {
		return 0, false
	}
	return v + kworkerCPU(), true
}

// env is the shared state of a run: servers, binaries, the report.
type env struct {
	o       options
	tmp     string
	hamrBin string
	rep     *Report
	bulk    *bulkServer
	idle    *idleServer
	primary *mariadb
	foA     *mariadb
	foB     *mariadb
}

func (e *env) logf(format string, args ...any) {
	if e.o.progress != nil {
		fmt.Fprintf(e.o.progress, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}

func (e *env) wants(w string) bool    { return slices.Contains(e.o.workloads, w) }
func (e *env) contends(c string) bool { return slices.Contains(e.o.contenders, c) }
func (e *env) needsMariaDB() bool     { return e.wants("pointselect") || e.wants("connrate") }
func (e *env) needsFailoverDBs() bool {
	return e.wants("failover") && (e.contends(hamr) || e.contends(haproxy))
}
func (e *env) proxyKinds() (k []string) {
	for _, c := range []string{hamr, haproxy} {
		if e.contends(c) && (c != hamr || e.hamrBin != "") {
			k = append(k, c)
		}
	}
	return k
}

// rotated returns s starting at its element k (mod len(s)).
func rotated[T any](s []T, k int) []T {
	if len(s) == 0 {
		return s
	}
	k %= len(s)
	return slices.Concat(s[k:], s[:k])
}

// resolvePaths fills in the default output and source paths.
func resolvePaths(o *options) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if o.src == "" {
		o.src = root
	}
	if o.jsonPath == "" {
		o.jsonPath = filepath.Join(root, "bench", "results.json")
	}
	if o.svgPath == "" {
		o.svgPath = filepath.Join(root, "bench", "results.svg")
	}
	return nil
}

// run performs a whole benchmark and writes the JSON and SVG files. The
// report is returned even when err is not nil, with what was measured.
func run(ctx context.Context, o options) (*Report, error) {
	start := time.Now()
	if err := resolvePaths(&o); err != nil {
		return nil, err
	}
	rep := &Report{
		Started: start.UTC().Truncate(time.Second),
		Command: strings.TrimSpace("go run ./bench " + strings.Join(os.Args[1:], " ")),
		Machine: machineInfo(),
		Rounds:  o.rounds,
		Quick:   o.quick,
	}
	e := &env{o: o, rep: rep}
	err := e.setupAndRun(ctx)
	stopAll()
	rep.Duration = time.Since(start).Round(time.Second).String()
	rep.finish()
	if werr := rep.writeJSON(o.jsonPath); werr != nil && err == nil {
		err = werr
	}
	if werr := rep.writeSVG(o.svgPath); werr != nil && err == nil {
		err = werr
	}
	return rep, err
}

func (e *env) setupAndRun(ctx context.Context) error {
	o := e.o
	lim, err := raiseNofileMax(200_000)
	if err != nil {
		e.logf("%v", err)
	}
	e.rep.Machine["nofile"] = fmt.Sprint(lim)
	// The suite holds both ends of every idle session (two fds) and a proxy
	// holds at least two per session: keep clear of the limit.
	if maxIdle := (int(lim) - 3000) / 2 / 1000 * 1000; e.wants("idle") && o.idleSessions > maxIdle {
		e.rep.errorf("idle sessions: %d do not fit RLIMIT_NOFILE %d; measuring %d", o.idleSessions, lim, max(maxIdle, 100))
		e.o.idleSessions = max(maxIdle, 100)
	}
	if !o.noInstall {
		if err := ensureTools(o.progress); err != nil {
			return err
		}
	}
	tmp, err := os.MkdirTemp("", "hamr-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	e.tmp = tmp
	if o.keep {
		e.logf("keeping %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	defer stopAll()

	if e.contends(hamr) {
		e.hamrBin = o.hamrBin
		if e.hamrBin == "" {
			e.logf("building hamr from %s/cmd/hamr", o.src)
			if e.hamrBin, err = buildHamr(ctx, o.src, tmp); err != nil {
				e.rep.errorf("hamr: %v", err)
			}
		}
	}
	if e.contends(haproxy) {
		if _, err := lookPath("haproxy"); err != nil {
			e.rep.errorf("haproxy: %v", err)
			e.o.contenders = slices.DeleteFunc(e.o.contenders, func(c string) bool { return c == haproxy })
		}
	}

	if e.bulk, err = startBulkServer(); err != nil {
		return err
	}
	defer e.bulk.close()
	if e.idle, err = startIdleServer(); err != nil {
		return err
	}
	defer e.idle.close()
	if err := e.startDatabases(ctx); err != nil {
		return err
	}
	defer func() {
		for _, m := range []*mariadb{e.primary, e.foA, e.foB} {
			if m != nil {
				m.stop()
			}
		}
	}()

	for round := 1; round <= o.rounds; round++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.logf("round %d of %d", round, o.rounds)
		e.rep.setRound(round)
		if err := e.round(ctx, round); err != nil {
			return err
		}
	}
	return nil
}

// startDatabases starts the MariaDB servers the chosen workloads need.
func (e *env) startDatabases(ctx context.Context) error {
	if !e.needsMariaDB() && !e.needsFailoverDBs() {
		return nil
	}
	e.logf("installing MariaDB data directory")
	base := filepath.Join(e.tmp, "db-base")
	if err := installMariaDB(base); err != nil {
		return err
	}
	var dbs []*mariadb
	if e.needsMariaDB() {
		e.primary = &mariadb{name: "mariadb-primary", dir: filepath.Join(e.tmp, "db-primary"), ramMiB: 256}
		dbs = append(dbs, e.primary)
	}
	if e.needsFailoverDBs() {
		e.foA = &mariadb{name: "mariadb-a", dir: filepath.Join(e.tmp, "db-a"), ramMiB: 64}
		e.foB = &mariadb{name: "mariadb-b", dir: filepath.Join(e.tmp, "db-b"), ramMiB: 64}
		dbs = append(dbs, e.foA, e.foB)
	}
	for _, m := range dbs {
		if err := copyDatadir(base, m.dir); err != nil {
			return err
		}
	}
	e.logf("starting %d MariaDB servers", len(dbs))
	var wg sync.WaitGroup
	errs := make([]error, len(dbs))
	for i, m := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = m.start(); errs[i] == nil {
				errs[i] = m.setup(ctx)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if e.primary != nil && e.wants("pointselect") {
		e.logf("sysbench prepare (%d table x %d rows)", sysbenchTables, sysbenchRows)
		if err := sysbenchPrepare(ctx, e.primary.addr()); err != nil {
			return err
		}
	}
	return nil
}

// round runs every workload once for every contender.
func (e *env) round(ctx context.Context, round int) error {
	routes := []route{
		{name: "bulk", dests: []string{e.bulk.addr()}},
		{name: "idle", dests: []string{e.idle.addr()}},
	}
	backends := map[string]string{"bulk": e.bulk.addr(), "idle": e.idle.addr()}
	if e.primary != nil {
		routes = append(routes, route{name: "sql", dests: []string{e.primary.addr()}, mysql: true})
		backends["sql"] = e.primary.addr()
	}
	var targets []*target
	for _, c := range e.o.contenders {
		if c == direct {
			targets = append(targets, &target{name: direct, addrs: backends})
			continue
		}
		if c == hamr && e.hamrBin == "" {
			continue
		}
		rs := slices.Clone(routes)
		px, err := startProxy(c, e.hamrBin, filepath.Join(e.tmp, fmt.Sprintf("%s-%d", c, round)), rs)
		if err != nil {
			e.rep.errorf("round %d: %v", round, err)
			continue
		}
		defer px.stop()
		targets = append(targets, &target{name: c, px: px, addrs: px.routes})
	}
	// Who goes first changes from round to round: what one contender
	// leaves behind (TIME_WAIT sockets, a warm cache) does not always
	// land on the same next one.
	targets = rotated(targets, round)
	steps := []struct {
		name string
		fn   func(context.Context, []*target) error
	}{
		{"bulk", e.runBulk},
		{"pointselect", e.runPointSelect},
		{"connrate", e.runConnRate},
	}
	for _, s := range steps {
		if !e.wants(s.name) {
			continue
		}
		if err := s.fn(ctx, targets); err != nil {
			return err
		}
	}
	for _, t := range targets {
		if t.px != nil && t.px.proc.exited() {
			e.rep.errorf("round %d: %s exited during the round: %s", round, t.name, t.px.proc.tail(600))
		}
		t.px.stop()
	}
	if e.wants("idle") {
		if err := e.runIdle(ctx, round); err != nil {
			return err
		}
	}
	if e.wants("failover") && e.foA != nil {
		return e.runFailover(ctx, round)
	}
	return nil
}

// alive reports whether t can still be measured; a proxy that died is
// reported once per workload and skipped.
func (e *env) alive(t *target, what string) bool {
	if t.px != nil && t.px.proc.exited() {
		e.rep.errorf("%s: %s is not running: %s", what, t.name, t.px.proc.tail(400))
		return false
	}
	return true
}

type bulkSum struct {
	elapsed time.Duration
	cpu     float64
	hasCPU  bool
}

func (e *env) runBulk(ctx context.Context, targets []*target) error {
	for _, t := range targets { // warm up connections, pipes and page cache
		if e.alive(t, "bulk warm-up") {
			if _, err := bulkTransfer(ctx, t.addrs["bulk"], opDownload, 1, 16<<20); err != nil {
				e.rep.errorf("bulk warm-up %s: %v", t.name, err)
			}
		}
	}
	for _, dir := range []struct {
		op   byte
		name string
	}{{opUpload, "c→s"}, {opDownload, "s→c"}} {
		for _, streams := range []int{1, 4} {
			wl := fmt.Sprintf("bulk %s %d stream", dir.name, streams)
			if streams > 1 {
				wl += "s"
			}
			// Several interleaved passes per round: loopback throughput
			// on a shared machine swings from one second to the next.
			sums := make(map[string][]bulkSum)
			for rep := range e.o.bulkReps {
				for _, t := range rotated(targets, rep) {
					if err := ctx.Err(); err != nil {
						return err
					}
					if !e.alive(t, wl) {
						continue
					}
					cpu0, hasCPU := t.cpu()
					elapsed, err := bulkTransfer(ctx, t.addrs["bulk"], dir.op, streams, e.o.bulkBytes)
					cpu1, _ := t.cpu()
					if err != nil {
						e.rep.errorf("%s %s: %v", wl, t.name, err)
						continue
					}
					sums[t.name] = append(sums[t.name], bulkSum{elapsed, cpu1 - cpu0, hasCPU})
				}
			}
			for _, t := range targets {
				ss := sums[t.name]
				if len(ss) == 0 {
					continue
				}
				var elapsed time.Duration
				var cpu float64
				for _, x := range ss {
					elapsed += x.elapsed
					cpu += x.cpu
				}
				bytes := float64(e.o.bulkBytes) * float64(len(ss))
				gbits := bytes * 8 / elapsed.Seconds() / 1e9
				e.rep.add(metricDef{Workload: wl, Metric: "throughput", Unit: "Gbit/s", Chart: true, Goal: true}, t.name, gbits)
				line := fmt.Sprintf("%-22s %-8s %6.2f Gbit/s", wl, t.name, gbits)
				if ss[0].hasCPU {
					perGB := cpu / (bytes / 1e9)
					e.rep.add(metricDef{Workload: wl, Metric: "proxy CPU", Unit: "CPU-s/GB", Lower: true}, t.name, perGB)
					line += fmt.Sprintf("  %.3f CPU-s/GB", perGB)
				}
				e.logf("%s", line)
			}
		}
	}
	return nil
}

func (e *env) runPointSelect(ctx context.Context, targets []*target) error {
	if e.primary == nil {
		return nil
	}
	for _, thr := range e.o.sysbenchThr {
		wl := fmt.Sprintf("point_select %d thr", thr)
		for _, t := range targets {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !e.alive(t, wl) {
				continue
			}
			cpu0, hasCPU := t.cpu()
			r, err := sysbenchRun(ctx, t.addrs["sql"], thr, e.o.sysbenchTime)
			cpu1, _ := t.cpu()
			if err != nil {
				e.rep.errorf("%s %s: %v", wl, t.name, err)
				continue
			}
			e.rep.add(metricDef{Workload: wl, Metric: "QPS", Unit: "queries/s", Chart: true, Goal: true}, t.name, r.qps)
			e.rep.add(metricDef{Workload: wl, Metric: "p50 latency", Unit: "ms", Lower: true}, t.name, r.p50)
			e.rep.add(metricDef{Workload: wl, Metric: "p99 latency", Unit: "ms", Lower: true}, t.name, r.p99)
			line := fmt.Sprintf("%-22s %-8s %8.0f QPS  p50 %.3f ms  p99 %.3f ms", wl, t.name, r.qps, r.p50, r.p99)
			if hasCPU {
				us := (cpu1 - cpu0) / r.queries * 1e6
				e.rep.add(metricDef{Workload: wl, Metric: "proxy CPU", Unit: "µs/query", Lower: true}, t.name, us)
				line += fmt.Sprintf("  %.1f µs CPU/query", us)
			}
			if r.errors > 0 {
				e.rep.errorf("%s %s: %v sysbench errors", wl, t.name, r.errors)
			}
			e.logf("%s", line)
		}
	}
	return nil
}

func (e *env) runConnRate(ctx context.Context, targets []*target) error {
	if e.primary == nil {
		return nil
	}
	const wl = "connect+SELECT 1+close"
	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.alive(t, wl) {
			continue
		}
		cpu0, hasCPU := t.cpu()
		r, err := connRate(ctx, t.addrs["sql"], 4, e.o.connTime)
		cpu1, _ := t.cpu()
		if err != nil {
			e.rep.errorf("%s %s: %v", wl, t.name, err)
			continue
		}
		e.rep.add(metricDef{Workload: wl, Metric: "rate", Unit: "conn/s", Chart: true, Goal: true}, t.name, r.rate)
		line := fmt.Sprintf("%-22s %-8s %8.0f conn/s  %d errors", wl, t.name, r.rate, r.errors)
		if hasCPU {
			us := (cpu1 - cpu0) / float64(r.conns) * 1e6
			e.rep.add(metricDef{Workload: wl, Metric: "proxy CPU", Unit: "µs/conn", Lower: true}, t.name, us)
			line += fmt.Sprintf("  %.0f µs CPU/conn", us)
		}
		if r.errors > 0 {
			e.rep.errorf("%s %s: %d failed connections", wl, t.name, r.errors)
		}
		e.logf("%s", line)
	}
	return nil
}

// runIdle weighs idle sessions on a fresh instance of each proxy, so that
// nothing earlier workloads left behind (buffers, pooled splice pipes)
// counts in the baseline or hides the sessions' own cost.
func (e *env) runIdle(ctx context.Context, round int) error {
	const wl = "idle sessions"
	for _, kind := range rotated(e.proxyKinds(), round) {
		n := e.o.idleSessions
		r, err := e.idleOnce(ctx, kind, round, n)
		if err != nil && n >= 400 && ctx.Err() == nil {
			// Still weigh a session, with fewer of them.
			e.rep.errorf("%s %s: %d sessions: %v; measuring %d on a fresh %s", wl, kind, n, err, n/4, kind)
			n /= 4
			r, err = e.idleOnce(ctx, kind, round, n)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			e.rep.errorf("%s %s: %v", wl, kind, err)
			continue
		}
		kib := r.rssPerSession / 1024
		e.rep.add(metricDef{Workload: wl, Metric: "proxy RSS", Unit: "KiB/session", Lower: true, Goal: true}, kind, kib)
		e.rep.add(metricDef{Workload: wl, Metric: "proxy fds", Unit: "fds/session", Lower: true}, kind, r.fdsPerSession)
		e.logf("%-22s %-8s %6.1f KiB/session  %.2f fds/session (%d sessions)", wl, kind, kib, r.fdsPerSession, n)
	}
	return nil
}

func (e *env) idleOnce(ctx context.Context, kind string, round, n int) (idleResult, error) {
	rs := []route{{name: "idle", dests: []string{e.idle.addr()}}}
	px, err := startProxy(kind, e.hamrBin, filepath.Join(e.tmp, fmt.Sprintf("%s-idle-%d-%d", kind, round, n)), rs)
	if err != nil {
		return idleResult{}, err
	}
	defer px.stop()
	return measureIdle(ctx, px.routes["idle"], px.pid(), e.idle, n, e.o.idleSettle)
}

// runFailover kills A under each proxy -failover-kills times, the
// proxies taking turns, each time through a fresh instance with A
// restarted; the round keeps each proxy's medians, so that one kill
// the kernel made slow (see failoverResult.death) does not decide it.
func (e *env) runFailover(ctx context.Context, round int) error {
	const wl = "failover (kill primary)"
	kinds := e.proxyKinds()
	got := make(map[string][]failoverResult)
	for k := range e.o.foKills {
		for _, kind := range rotated(kinds, round+k) {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := e.killPrimary(ctx, kind, fmt.Sprintf("%s-fo-%d-%d", kind, round, k))
			if err != nil {
				e.rep.errorf("%s %s: %v", wl, kind, err)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
			if r != nil {
				got[kind] = append(got[kind], *r)
			}
		}
	}
	for _, kind := range kinds {
		rs := got[kind]
		if len(rs) == 0 {
			continue
		}
		pick := func(f func(failoverResult) float64) float64 {
			v := make([]float64, 0, len(rs))
			for _, r := range rs {
				if x := f(r); !math.IsNaN(x) {
					v = append(v, x)
				}
			}
			return median(v)
		}
		e.rep.add(metricDef{Workload: wl, Metric: "client errors", Unit: "count", Lower: true}, kind,
			pick(func(r failoverResult) float64 { return float64(r.errors) }))
		e.rep.add(metricDef{Workload: wl, Metric: "longest gap", Unit: "ms", Lower: true, Goal: true}, kind,
			pick(func(r failoverResult) float64 { return ms(r.maxGap) }))
		e.rep.add(metricDef{Workload: wl, Metric: "first error to first query on B", Unit: "ms", Lower: true}, kind,
			pick(func(r failoverResult) float64 {
				if !r.recovered {
					return math.NaN()
				}
				return ms(r.recovery)
			}))
	}
	return nil
}

// killPrimary runs one failover measurement through a fresh proxy of
// kind, starting A first if the last one killed it. It returns what it
// measured, if anything, with an error for what went wrong.
func (e *env) killPrimary(ctx context.Context, kind, dir string) (*failoverResult, error) {
	const wl = "failover (kill primary)"
	if e.foA.proc == nil || e.foA.proc.exited() {
		if err := e.foA.start(); err != nil {
			return nil, fmt.Errorf("restart %s: %w", e.foA.name, err)
		}
	}
	rs := []route{{name: "fo", dests: []string{e.foA.addr(), e.foB.addr()}, mysql: true, failover: true}}
	px, err := startProxy(kind, e.hamrBin, filepath.Join(e.tmp, dir), rs)
	if err != nil {
		return nil, err
	}
	defer px.stop()
	addr := px.routes["fo"]
	if err := waitServedBy(ctx, addr, e.foA.port, 10*time.Second); err != nil {
		return nil, err
	}
	r, err := failover(ctx, addr, e.foA, e.foB.port, 8, e.o.foWarm, e.o.foAfter)
	px.stop()
	if err == nil && !r.onBackup {
		err = errors.New("the last successful query was not served by B")
	}
	if r.ok == 0 {
		return nil, err // measured nothing
	}
	e.logf("%-22s %-8s %d errors, longest gap %.1f ms, A reaped after %.1f ms, first on B after %.1f ms (%.1f ms after the first error), %d queries",
		wl, kind, r.errors, ms(r.maxGap), ms(r.death), ms(r.firstOnB), ms(r.recovery), r.ok)
	return &r, err
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// machineInfo describes the machine for the report.
func machineInfo() map[string]string {
	m := map[string]string{
		"nproc":      fmt.Sprint(runtime.NumCPU()),
		"go":         runtime.Version(),
		"gomaxprocs": fmt.Sprint(threads), // hamr's, and HAProxy's nbthread
	}
	if loops > 0 {
		m["io_threads"] = fmt.Sprint(loops)
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	for name, args := range map[string][]string{
		"haproxy":  {"haproxy", "-v"},
		"mariadb":  {"mariadbd", "--version"},
		"sysbench": {"sysbench", "--version"},
	} {
		if v := commandVersion(args[0], args[1:]...); v != "" {
			m[name] = v
		}
	}
	return m
}

func commandVersion(name string, args ...string) string {
	p, err := lookPath(name)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := execOutput(ctx, p, args...)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(line)
}
