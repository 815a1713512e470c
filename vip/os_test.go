package vip

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamr-project/hamr/conf"
	"github.com/hamr-project/hamr/internal/logbuf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGARPFrame(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet broadcast
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // from the interface MAC
		0x08, 0x06, // ARP
		0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4 request
		0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 172, 168, 1, 20, // sender
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 172, 168, 1, 20, // target
	}
	if got := garpFrame(mac, someVIP); !bytes.Equal(got, want) {
		t.Fatalf("garpFrame:\n got % x\nwant % x", got, want)
	}
}

func TestNotifierOrderAndTimeout(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := filepath.Join(dir, "n.sh")
	body := "#!/bin/sh\n[ \"$1\" = slow ] && sleep 5\necho \"$*\" >> " + out + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	n := newNotifier(slog.New(slog.NewTextHandler(io.Discard, nil)), 200*time.Millisecond)
	done := make(chan struct{})
	go func() { n.run(context.Background()); close(done) }()
	n.transition([]string{script, "backup"}, []string{script}, "VI_1", "BACKUP", 100)
	n.transition([]string{script, "slow"}, nil, "VI_1", "MASTER", 100) // killed by the timeout
	n.transition(nil, []string{script, "x"}, "VI_1", "MASTER", 90)
	n.transition([]string{"/nonexistent/script"}, nil, "VI_1", "FAULT", 90) // logged, not fatal
	n.transition([]string{script, "stop"}, nil, "VI_1", "STOP", 90)
	start := time.Now()
	n.close()
	<-done
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("drain took %v: timeout not applied", el)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := "backup\nINSTANCE VI_1 BACKUP 100\nx INSTANCE VI_1 MASTER 90\nstop\n"
	if string(got) != want {
		t.Fatalf("calls:\n%s\nwant:\n%s", got, want)
	}
	n.enqueue([]string{script, "late"}) // after close: dropped, no panic
}

// TestNotifierBackgroundChild: a script that starts a helper in the
// background and exits is logged as run, with its output, and the helper
// goes on, writing to the stdout it inherited.
func TestNotifierBackgroundChild(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "alive")
	script := filepath.Join(dir, "n.sh")
	body := "#!/bin/sh\necho started\n(sleep 1.5; echo still here; echo yes > " + marker + ") &\nexit 0\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs logbuf.Buffer
	n := newNotifier(slog.New(slog.NewTextHandler(&logs, nil)), 10*time.Second)
	done := make(chan struct{})
	go func() { n.run(context.Background()); close(done) }()
	n.transition([]string{script}, nil, "VI_1", "MASTER", 100)
	waitFor(t, "the script's log line", func() bool { return strings.Contains(logs.String(), "notify script") })
	if l := logs.String(); !strings.Contains(l, "notify script ran") || !strings.Contains(l, "output=started") {
		t.Errorf("log: %s\nwant the script logged as run, with output=started", l)
	}
	waitFor(t, "the background helper's marker", func() bool { _, err := os.Stat(marker); return err == nil })
	n.close()
	<-done
}

// TestNotifierTimeoutKillsGroup: notify_timeout kills what the script
// started, not only the script.
func TestNotifierTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	marker, started := filepath.Join(dir, "survived"), filepath.Join(dir, "started")
	script := filepath.Join(dir, "n.sh")
	body := "#!/bin/sh\ntouch " + started + "\nsh -c 'sleep 1; echo yes > " + marker + "'\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	n := newNotifier(slog.New(slog.DiscardHandler), 200*time.Millisecond)
	done := make(chan struct{})
	go func() { n.run(context.Background()); close(done) }()
	n.transition([]string{script}, nil, "VI_1", "MASTER", 100)
	n.close()
	<-done
	if _, err := os.Stat(started); err != nil {
		t.Fatalf("the script did not run: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // past the child's own sleep
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a process the timed-out script started ran on after notify_timeout")
	}
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1 := NewMetrics(reg)
	m2 := NewMetrics(reg) // a reload: must not panic, shares collectors
	m1.dropped.WithLabelValues("VI_1", ReasonTTL).Inc()
	m2.dropped.WithLabelValues("VI_1", ReasonTTL).Inc()
	if v := testutil.ToFloat64(m1.dropped.WithLabelValues("VI_1", ReasonTTL)); v != 2 {
		t.Fatalf("dropped = %v, want 2", v)
	}
	n, err := testutil.GatherAndCount(reg, "hamr_vrrp_adverts_dropped_total")
	if err != nil || n != 1 {
		t.Fatalf("gathered %d series, err %v", n, err)
	}
	NewMetrics(nil) // no registry: usable, registers nothing
	if !strings.HasPrefix(StateMaster.String(), "MASTER") || stateValue(StateFault) != 3 {
		t.Fatal("state names")
	}
}

func TestNewChecks(t *testing.T) {
	l := newLab(t)
	base := func() *conf.VRRP {
		return &conf.VRRP{Name: "VI_1", Interface: l.ifA, VirtualRouterID: 51, Priority: 100,
			AdvertInt: time.Second, Version: 3, VirtualIPAddress: []netip.Prefix{l.vip()}}
	}
	var inst *Instance
	var err error
	in(t, l.nsA, func() { inst, err = New(base(), Options{}) })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	st := inst.Status()
	if st.State != "INIT" || st.EffectivePriority != 100 || st.VIPs[0] != l.vip().String() || st.Dropped == nil {
		t.Errorf("status before Start: %+v", st)
	}
	bad := map[string]func(*conf.VRRP){
		"no such interface":   func(c *conf.VRRP) { c.Interface = "hvt-none" },
		"no Ethernet address": func(c *conf.VRRP) { c.Interface = "lo" },
		"vrid":                func(c *conf.VRRP) { c.VirtualRouterID = 0 },
		"version":             func(c *conf.VRRP) { c.Version = 4 },
		"v2 interval":         func(c *conf.VRRP) { c.Version, c.AdvertInt = 2, 100*time.Millisecond },
		"ipv6 vip":            func(c *conf.VRRP) { c.VirtualIPAddress = []netip.Prefix{netip.MustParsePrefix("fd00::1/128")} },
		"no vip":              func(c *conf.VRRP) { c.VirtualIPAddress = nil },
	}
	for name, mod := range bad {
		c := base()
		mod(c)
		in(t, l.nsA, func() { _, err = New(c, Options{}) })
		if err == nil {
			t.Errorf("%s: New succeeded", name)
		} else if name == "no Ethernet address" && !strings.Contains(err.Error(), name) {
			t.Errorf("New on lo: %v; want it refused for having no Ethernet address", err)
		}
	}
}
