package main

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// metricDef describes one row of the results table.
type metricDef struct {
	Workload string `json:"workload"`
	Metric   string `json:"metric"`
	Unit     string `json:"unit"`
	Lower    bool   `json:"lower_is_better"`
	Chart    bool   `json:"chart"` // charted as ratio to direct
	Goal     bool   `json:"goal"`  // the workload's main metric: hamr/HAProxy >= 1.10
}

// Row is one metric measured for every contender over every round.
type Row struct {
	metricDef
	Rounds map[string][]*float64 `json:"rounds"`           // contender -> value per round (null: not measured)
	Median map[string]float64    `json:"median"`           // contender -> median
	Ratios map[string]float64    `json:"ratios,omitempty"` // "hamr/direct", "hamr/haproxy", "haproxy/direct"
	// Each round's ratio, in round order (rounds where either side was
	// not measured are left out): how far apart the rounds were.
	RoundRatios map[string][]float64 `json:"round_ratios,omitempty"`
}

// Report is everything the suite writes to JSON.
type Report struct {
	Started  time.Time         `json:"started"`
	Duration string            `json:"duration"`
	Command  string            `json:"command"`
	Machine  map[string]string `json:"machine"`
	Rounds   int               `json:"rounds"`
	Quick    bool              `json:"quick"`
	Rows     []*Row            `json:"rows"`
	Targets  []Target          `json:"targets"`
	Errors   []string          `json:"errors,omitempty"`

	mu    sync.Mutex
	round int // current round, from 1; add files values under it
}

func (r *Report) setRound(n int) {
	r.mu.Lock()
	r.round = n
	r.mu.Unlock()
}

// Target is one of the project's goals checked against the medians.
type Target struct {
	What string  `json:"what"`
	Want string  `json:"want"`
	Got  float64 `json:"got"`
	Met  bool    `json:"met"`
	// For a ratio target: in how many of how many rounds that round's
	// ratio met it.
	RoundsMet int    `json:"rounds_met,omitempty"`
	Rounds    int    `json:"rounds,omitempty"`
	Reason    string `json:"reason,omitempty"` // why it could not be checked
}

func (r *Report) add(def metricDef, contender string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	i := max(r.round, 1) - 1
	var row *Row
	for _, x := range r.Rows {
		if x.Workload == def.Workload && x.Metric == def.Metric {
			row = x
			break
		}
	}
	if row == nil {
		row = &Row{metricDef: def, Rounds: make(map[string][]*float64)}
		r.Rows = append(r.Rows, row)
	}
	vals := row.Rounds[contender]
	for len(vals) <= i {
		vals = append(vals, nil)
	}
	vals[i] = &v
	row.Rounds[contender] = vals
}

func (r *Report) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.Errors = append(r.Errors, msg)
	r.mu.Unlock()
	fmt.Fprintln(os.Stderr, "bench: "+msg)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratio compares a to b so that > 1 always means a is better: a/b when
// higher is better, b/a when lower is better.
func ratio(a, b float64, lower bool) float64 {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	if lower {
		a, b = b, a
	}
	switch {
	case a == 0 && b == 0:
		return 1 // a tie: no errors on either side, say
	case b == 0:
		return math.NaN() // no finite ratio (JSON has no infinity)
	}
	return a / b
}

// values returns the measured values of a contender's rounds.
func values(v []*float64) []float64 {
	var out []float64
	for _, x := range v {
		if x != nil {
			out = append(out, *x)
		}
	}
	return out
}

// finish computes medians, ratios and targets. A ratio is the median over
// rounds of that round's ratio: within a round the contenders ran back to
// back, so drift between rounds cancels out.
func (r *Report) finish() {
	for _, row := range r.Rows {
		row.Median = make(map[string]float64)
		row.Ratios = make(map[string]float64)
		row.RoundRatios = make(map[string][]float64)
		for c, v := range row.Rounds {
			if vs := values(v); len(vs) > 0 {
				row.Median[c] = median(vs)
			}
		}
		for _, p := range [][2]string{{hamr, direct}, {hamr, haproxy}, {haproxy, direct}} {
			a, b := row.Rounds[p[0]], row.Rounds[p[1]]
			var rs []float64
			for i := 0; i < len(a) && i < len(b); i++ {
				if a[i] == nil || b[i] == nil {
					continue
				}
				if x := ratio(*a[i], *b[i], row.Lower); !math.IsNaN(x) {
					rs = append(rs, x)
				}
			}
			if len(rs) > 0 {
				row.Ratios[p[0]+"/"+p[1]] = median(rs)
				row.RoundRatios[p[0]+"/"+p[1]] = rs
			}
		}
	}
	r.Targets = r.checkTargets()
}

func (r *Report) row(workload, metric string) *Row {
	for _, row := range r.Rows {
		if row.Workload == workload && row.Metric == metric {
			return row
		}
	}
	return nil
}

// checkTargets evaluates the goals of docs/bench.md against the medians.
func (r *Report) checkTargets() []Target {
	var out []Target
	check := func(what, want string, got float64, ok bool, met func(float64) bool) *Target {
		t := Target{What: what, Want: want}
		if !ok || math.IsNaN(got) {
			t.Reason = "not measured"
		} else {
			t.Got, t.Met = got, met(got)
		}
		out = append(out, t)
		return &out[len(out)-1]
	}
	// checkRatio also counts the rounds whose own ratio met the target.
	checkRatio := func(what, want string, row *Row, key string, met func(float64) bool) {
		x, ok := row.Ratios[key]
		t := check(what, want, x, ok, met)
		for _, v := range row.RoundRatios[key] {
			t.Rounds++
			if met(v) {
				t.RoundsMet++
			}
		}
	}
	for _, row := range r.Rows {
		if !row.Goal {
			continue
		}
		checkRatio(row.Workload+" "+row.Metric+": hamr/HAProxy", ">= 1.10", row, hamr+"/"+haproxy,
			func(v float64) bool { return v >= 1.10 })
	}
	if row := r.row("point_select 8 thr", "QPS"); row != nil {
		checkRatio("point_select 8 thr QPS: hamr/direct", ">= 0.65", row, hamr+"/"+direct,
			func(v float64) bool { return v >= 0.65 })
	} else {
		check("point_select 8 thr QPS: hamr/direct", ">= 0.65", 0, false, nil)
	}
	for _, row := range r.Rows {
		v, ok := row.Median[hamr]
		switch row.Unit {
		case "CPU-s/GB":
			check(row.Workload+": hamr CPU-s per GB", "<= 0.35", v, ok, func(v float64) bool { return v <= 0.35 })
		case "µs/query":
			check(row.Workload+": hamr CPU µs per query", "<= 12", v, ok, func(v float64) bool { return v <= 12 })
		case "KiB/session":
			check("idle: hamr KiB per session", "<= 16", v, ok, func(v float64) bool { return v <= 16 })
		}
	}
	return out
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// writeTable prints the results as an aligned text table. With md it
// prints a Markdown table instead.
func (r *Report) writeTable(w io.Writer, md bool) error {
	head := []string{"workload", "metric", "direct", "hamr", "HAProxy", "hamr/direct", "hamr/HAProxy (rounds' range)", "HAProxy/direct"}
	var lines [][]string
	for _, row := range r.Rows {
		metric := row.Metric
		if row.Unit != "" {
			metric += " (" + row.Unit + ")"
		}
		if row.Lower {
			metric += " ↓"
		}
		line := []string{row.Workload, metric}
		for _, c := range []string{direct, hamr, haproxy} {
			if v, ok := row.Median[c]; ok {
				line = append(line, fmtNum(v))
			} else {
				line = append(line, "n/a")
			}
		}
		for _, k := range []string{"hamr/direct", "hamr/haproxy", "haproxy/direct"} {
			v, ok := row.Ratios[k]
			switch rs := row.RoundRatios[k]; {
			case !ok:
				line = append(line, "n/a")
			case k == "hamr/haproxy" && len(rs) > 1:
				// The column the targets read: show how far the rounds
				// were apart.
				line = append(line, fmt.Sprintf("%.2f (%.2f-%.2f)", v, slices.Min(rs), slices.Max(rs)))
			default:
				line = append(line, fmt.Sprintf("%.2f", v))
			}
		}
		lines = append(lines, line)
	}
	if md {
		fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
		fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(head)))
		for _, l := range lines {
			fmt.Fprintf(w, "| %s |\n", strings.Join(l, " | "))
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, l := range lines {
		fmt.Fprintln(tw, strings.Join(l, "\t"))
	}
	return tw.Flush()
}

// writeTargets prints each goal and whether hamr met it.
func (r *Report) writeTargets(w io.Writer, md bool) {
	for _, t := range r.Targets {
		verdict := "MISSED"
		switch {
		case t.Reason != "":
			verdict = t.Reason
		case t.Met:
			verdict = "met"
		}
		got := "-"
		if t.Reason == "" {
			got = fmtNum(t.Got)
		}
		if t.Rounds > 0 {
			verdict += fmt.Sprintf(" (%d of %d rounds)", t.RoundsMet, t.Rounds)
		}
		if md {
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", t.What, t.Want, got, verdict)
		} else {
			fmt.Fprintf(w, "  %-55s want %-8s got %-8s %s\n", t.What, t.Want, got, verdict)
		}
	}
}

func (r *Report) writeJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// writeSVG draws grouped bars: for every charted metric, the median of each
// contender divided by direct's (direct is 1.0 by definition).
func (r *Report) writeSVG(path string) error {
	var rows []*Row
	for _, row := range r.Rows {
		if _, ok := row.Median[direct]; row.Chart && ok {
			rows = append(rows, row)
		}
	}
	const (
		left, right, top, bottom = 60, 20, 50, 80
		groupW, barW             = 110, 26
		plotH                    = 300
	)
	width := left + right + groupW*max(len(rows), 1)
	height := top + plotH + bottom
	// Bar height: the contender's paired ratio to direct (see finish).
	rel := func(row *Row, c string) (float64, bool) {
		if c == direct {
			return 1, true
		}
		v, ok := row.Ratios[c+"/"+direct]
		return v, ok
	}
	maxY := 1.2
	for _, row := range rows {
		for _, c := range []string{hamr, haproxy} {
			if v, ok := rel(row, c); ok {
				maxY = max(maxY, v*1.1)
			}
		}
	}
	maxY = math.Ceil(maxY*4) / 4
	y := func(v float64) float64 { return top + plotH - v/maxY*plotH }
	colors := map[string]string{direct: "#9e9e9e", hamr: "#1f77b4", haproxy: "#ff7f0e"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">hamr vs HAProxy, relative to direct (higher is better)</text>`+"\n", left)
	for v := 0.0; v <= maxY+1e-9; v += 0.25 {
		stroke := "#e0e0e0"
		if v == 1 {
			stroke = "#606060"
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>`+"\n", left, y(v), width-right, y(v), stroke)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, y(v)+4, v)
	}
	for i, row := range rows {
		gx := left + i*groupW + (groupW-3*barW)/2
		for j, c := range []string{direct, hamr, haproxy} {
			rv, ok := rel(row, c)
			if !ok {
				continue
			}
			v := row.Median[c]
			x := gx + j*barW
			fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x, y(rv), barW-2, y(0)-y(rv), colors[c], html.EscapeString(row.Workload), c, fmtNum(v))
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="middle" font-size="9">%.2f</text>`+"\n", x+barW/2-1, y(rv)-3, rv)
		}
		cx := left + i*groupW + groupW/2
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", cx, top+plotH+16, html.EscapeString(row.Workload))
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#606060">%s</text>`+"\n", cx, top+plotH+30, html.EscapeString(row.Metric))
	}
	for j, c := range []string{direct, hamr, haproxy} {
		x := left + j*110
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			x, height-24, colors[c], x+16, height-14, c)
	}
	b.WriteString("</svg>\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	return nil
}
