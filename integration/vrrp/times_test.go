package vrrp

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTakeoverTimes measures crash and graceful takeovers at advert 1 s
// and 100 ms, keepalived↔keepalived and hamr↔hamr in the same lab, and
// writes the medians into the "VRRP takeover" section of bench/RESULTS.md. It takes about three
// minutes, so it runs only when asked:
//
//	HAMR_TAKEOVER_TIMES=1 go test -run TestTakeoverTimes -v ./integration/vrrp
//
// HAMR_TAKEOVER_RUNS sets the runs per cell (default 5 at 100 ms, 3 at 1 s).
func TestTakeoverTimes(t *testing.T) {
	if os.Getenv("HAMR_TAKEOVER_TIMES") != "1" {
		t.Skip("a measurement, not a check: set HAMR_TAKEOVER_TIMES=1 to run it")
	}
	requireHamr(t)
	runs := map[time.Duration]int{time.Second: 3, 100 * time.Millisecond: 5}
	if s := os.Getenv("HAMR_TAKEOVER_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("HAMR_TAKEOVER_RUNS=%q: want a positive number", s)
		}
		runs[time.Second], runs[100*time.Millisecond] = n, n
	}

	type cell struct {
		graceful bool
		advert   time.Duration
	}
	var cells []cell
	for _, graceful := range []bool{false, true} {
		for _, advert := range []time.Duration{time.Second, 100 * time.Millisecond} {
			cells = append(cells, cell{graceful, advert})
		}
	}
	loadBefore := loadavg()
	kinds := []string{kindKeepalived, kindHamr}
	results := map[cell]map[string][]time.Duration{}
	for _, c := range cells {
		results[c] = map[string][]time.Duration{}
		for _, kind := range kinds {
			for i := range runs[c.advert] {
				name := fmt.Sprintf("%s/%s/%v/%d", kind, scenario(c.graceful), c.advert, i)
				t.Run(name, func(t *testing.T) {
					l := newLab(t)
					d := l.takeover(kind, kind, routerConf{advert: c.advert}, c.graceful)
					t.Logf("%v", d.Round(time.Millisecond))
					if timer := rfcTimer(c.advert, 100, c.graceful); d > 2*timer+200*time.Millisecond {
						t.Logf("slow takeover (RFC timer %v): the routers' logs follow", timer)
						for _, r := range l.routers {
							r.logTail()
						}
					}
					results[c][kind] = append(results[c][kind], d)
				})
			}
		}
	}

	var b strings.Builder
	b.WriteString("## VRRP takeover\n\n")
	b.WriteString("Written by `HAMR_TAKEOVER_TIMES=1 go test -run TestTakeoverTimes -v ./integration/vrrp`\n")
	fmt.Fprintf(&b, "on %s (%s; load average %s before, %s after).\n\n",
		time.Now().UTC().Format("2006-01-02"), machine(), loadBefore, loadavg())
	b.WriteString("Milliseconds from the signal sent to the master r1 (priority 120) until\n")
	b.WriteString("the client in a third namespace gets its first TCP answer from r2\n")
	b.WriteString("(priority 100) through the VIP; a new connection every 5 ms, each with\n")
	b.WriteString("a 50 ms connect timeout. The signal is sent just after the client saw\n")
	b.WriteString("one of r1's adverts, so a crash costs the whole Master_Down_Interval\n")
	b.WriteString("(a crash at a random moment costs on average half an advert less).\n")
	b.WriteString("VRRPv3, multicast, one bridge, the same lab for both. Median of the\n")
	b.WriteString("runs, with min–max and the number of runs. The RFC 5798 timer is what\n")
	b.WriteString("the backup must wait: Master_Down_Interval (3 × advert + skew) after a\n")
	b.WriteString("crash, Skew_Time ((256 − 100) / 256 × advert) after a priority 0 advert.\n")
	b.WriteString("With keepalived the answer comes from a responder listening on the VIP\n")
	b.WriteString("itself; with hamr it goes through hamr's route (accept, dial a responder\n")
	b.WriteString("on loopback, relay), as it does in production, which adds about 1 ms.\n\n")
	b.WriteString("| scenario | advert | keepalived ms | hamr ms | RFC timer ms |\n")
	b.WriteString("|---|---|---|---|---|\n")
	for _, c := range cells {
		fmt.Fprintf(&b, "| %s | %v | %s | %s | %d |\n", scenario(c.graceful), c.advert,
			summary(results[c][kindKeepalived]), summary(results[c][kindHamr]),
			rfcTimer(c.advert, 100, c.graceful).Milliseconds())
	}
	t.Logf("\n%s", b.String())
	if t.Failed() {
		t.Fatal("some runs failed: bench/RESULTS.md not updated")
	}
	if err := writeSection(filepath.Join("..", "..", "bench", "RESULTS.md"), "## VRRP takeover", b.String()); err != nil {
		t.Fatal(err)
	}
	for _, c := range cells {
		k, h := median(results[c][kindKeepalived]), median(results[c][kindHamr])
		if h > k {
			t.Logf("hamr slower than keepalived: %s at %v: %v vs %v", scenario(c.graceful), c.advert, h, k)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	return fmt.Sprintf("%d (%d–%d, n=%d)", median(ds).Milliseconds(),
		slices.Min(ds).Milliseconds(), slices.Max(ds).Milliseconds(), len(ds))
}

// machine describes where the numbers were taken.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	ka := "keepalived"
	if out, err := exec.Command("keepalived", "--version").CombinedOutput(); err == nil {
		ka, _, _ = strings.Cut(strings.TrimSpace(string(out)), " (")
	}
	return fmt.Sprintf("%s; %s, %d CPUs", ka, model, runtime.NumCPU())
}

// loadavg is the one-minute load average: on a shared machine, numbers
// taken under load show scheduling delays, not VRRP.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// writeSection replaces the section of the Markdown file path that starts
// with the line heading (up to the next heading of the same level, or the
// end) with text, or appends text when there is no such section.
func writeSection(path, heading, text string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	start := strings.Index(doc, heading+"\n")
	if start < 0 {
		if doc != "" && !strings.HasSuffix(doc, "\n\n") {
			doc += "\n"
		}
		return os.WriteFile(path, []byte(doc+text), 0o644)
	}
	end := len(doc)
	if i := strings.Index(doc[start+len(heading):], "\n## "); i >= 0 {
		end = start + len(heading) + i + 1
	}
	if end < len(doc) {
		text += "\n"
	}
	return os.WriteFile(path, []byte(doc[:start]+text+doc[end:]), 0o644)
}
