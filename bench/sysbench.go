package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// sysbenchTable is the size of the one table oltp_point_select reads.
const (
	sysbenchTables = 1
	sysbenchRows   = 10000
)

// sysbenchArgs are the connection and table options shared by prepare and run.
func sysbenchArgs(addr string) ([]string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("sysbench address %q: %w", addr, err)
	}
	return []string{
		"oltp_point_select",
		"--db-driver=mysql",
		"--mysql-host=" + host,
		"--mysql-port=" + port,
		"--mysql-user=" + dbUser,
		"--mysql-password=" + dbPassword,
		"--mysql-db=" + dbName,
		fmt.Sprintf("--tables=%d", sysbenchTables),
		fmt.Sprintf("--table-size=%d", sysbenchRows),
	}, nil
}

// sysbenchPrepare creates and fills the table once, directly on the server.
func sysbenchPrepare(ctx context.Context, addr string) error {
	args, err := sysbenchArgs(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sysbench", append(args, "prepare")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysbench prepare: %w: %s", err, lastLines(string(out), 5))
	}
	return nil
}

// sysbenchResult is what one run of oltp_point_select reports.
type sysbenchResult struct {
	queries float64 // total queries
	qps     float64
	p50     float64 // ms, from the histogram
	p99     float64 // ms, sysbench's own --percentile=99
	errors  float64 // ignored errors + reconnects
}

// sysbenchRun runs oltp_point_select with threads for d against addr.
func sysbenchRun(ctx context.Context, addr string, threads int, d time.Duration) (sysbenchResult, error) {
	args, err := sysbenchArgs(addr)
	if err != nil {
		return sysbenchResult{}, err
	}
	secs := int(d.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	args = append(args,
		fmt.Sprintf("--threads=%d", threads),
		fmt.Sprintf("--time=%d", secs),
		"--events=0",
		"--percentile=99",
		"--histogram=on",
		"--report-interval=0",
		"run")
	ctx, cancel := context.WithTimeout(ctx, d+60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sysbench", args...).CombinedOutput()
	if err != nil {
		return sysbenchResult{}, fmt.Errorf("sysbench run via %s: %w: %s", addr, err, lastLines(string(out), 5))
	}
	return parseSysbench(string(out))
}

// parseSysbench reads the summary and the latency histogram of a run.
func parseSysbench(out string) (sysbenchResult, error) {
	var (
		r        sysbenchResult
		haveQ    bool
		haveP99  bool
		inHist   bool
		histVals []float64
		histCnts []float64
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "Latency histogram"):
			inHist = true
			continue
		case inHist && strings.Contains(line, "|"):
			// "0.160 |****                       123"
			l, rest, _ := strings.Cut(line, "|")
			f := strings.Fields(rest)
			v, err1 := strconv.ParseFloat(strings.TrimSpace(l), 64)
			if len(f) == 0 || err1 != nil {
				continue
			}
			n, err2 := strconv.ParseFloat(f[len(f)-1], 64)
			if err2 != nil {
				continue
			}
			histVals = append(histVals, v)
			histCnts = append(histCnts, n)
			continue
		case inHist && line == "":
			if len(histVals) > 0 {
				inHist = false
			}
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		switch strings.TrimSpace(key) {
		case "queries":
			// "queries:  123456 (12345.67 per sec.)"
			r.queries, _ = strconv.ParseFloat(f[0], 64)
			if len(f) > 1 {
				r.qps, _ = strconv.ParseFloat(strings.TrimPrefix(f[1], "("), 64)
			}
			haveQ = true
		case "99th percentile":
			r.p99, _ = strconv.ParseFloat(f[0], 64)
			haveP99 = true
		case "ignored errors", "reconnects":
			n, _ := strconv.ParseFloat(f[0], 64)
			r.errors += n
		}
	}
	if !haveQ || r.qps <= 0 {
		return r, fmt.Errorf("sysbench output has no query rate: %s", lastLines(out, 5))
	}
	if !haveP99 {
		return r, fmt.Errorf("sysbench output has no 99th percentile: %s", lastLines(out, 5))
	}
	r.p50 = histPercentile(histVals, histCnts, 50)
	if r.p50 <= 0 {
		return r, fmt.Errorf("sysbench output has no latency histogram")
	}
	return r, nil
}

// histPercentile returns the smallest bucket value at or below which pct
// percent of the counts lie.
func histPercentile(vals, cnts []float64, pct float64) float64 {
	type bucket struct{ v, n float64 }
	bs := make([]bucket, len(vals))
	var total float64
	for i := range vals {
		bs[i] = bucket{vals[i], cnts[i]}
		total += cnts[i]
	}
	if total == 0 {
		return 0
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].v < bs[j].v })
	want := total * pct / 100
	var acc float64
	for _, b := range bs {
		acc += b.n
		if acc >= want {
			return b.v
		}
	}
	return bs[len(bs)-1].v
}
