package main

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte(`
[routing.rw]
bind_port = 7001
mode = "read-write"
destinations = ["127.0.0.1:3306"]
`), 0o644)
	os.WriteFile(bad, []byte(`
[routing.rw]
bind_port = 70000
mode = "read-write"
destinations = ["127.0.0.1:3306"]

[routing.ro]
bind_port = 7002
mode = "read-only"
destinatons = ["127.0.0.1:3307"]
`), 0o644)

	var out, errb bytes.Buffer
	if code := run([]string{"check", "-c", good}, &out, &errb); code != 0 {
		t.Fatalf("check good: exit %d, stderr %s", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"check", "-c", bad}, &out, &errb); code != 1 {
		t.Fatalf("check bad: exit %d, want 1", code)
	}
	got := errb.String()
	for _, want := range []string{
		bad + ":3: routing.rw.bind_port: 70000",
		bad + ":10: routing.ro.destinatons",
		"did you mean",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("check output lacks %q:\n%s", want, got)
		}
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"ctl", "status"}, &out, &errb); code != 2 {
		t.Fatalf("ctl without -c or --admin: exit %d, want 2", code)
	}
	// Flags after the verb's argument count too: this reaches the
	// (empty) daemon, which has no route rw.
	d := newDaemon(slog.New(slog.DiscardHandler), new(slog.LevelVar))
	srv := httptest.NewServer(d.adminHandler(func() string { return "" }))
	defer srv.Close()
	errb.Reset()
	code := run([]string{"ctl", "reset-primary", "rw", "--admin", strings.TrimPrefix(srv.URL, "http://")}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "rw") {
		t.Errorf("ctl reset-primary rw --admin ADDR: exit %d, stderr %q; want 1 and the daemon's answer about rw", code, errb.String())
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "hamr ") {
		t.Fatalf("version: exit %d, %q", code, out.String())
	}
}

func TestPrintStatus(t *testing.T) {
	lag := 3.0
	st := Status{Routes: []RouteStatus{
		{Name: "rw", Bind: "127.0.0.1:7001", Mode: "read-write", Strategy: "first-available", Listening: true,
			Primary: "127.0.0.1:3307", Destinations: []DestStatus{
				{Address: "127.0.0.1:3306", Up: false, Reason: "dial: connection refused"},
				{Address: "127.0.0.1:3307", Up: true, Role: "primary", Sessions: 4, Primary: true},
			}},
		{Name: "ro", Bind: "127.0.0.1:7002", Mode: "read-only", Strategy: "round-robin", Listening: false,
			Fallback: "rw", Sessions: 3, FallbackSessions: 2,
			Destinations: []DestStatus{{Address: "127.0.0.1:3308", Up: true, Role: "replica", LagSeconds: &lag, Sessions: 1}}},
		{Name: "old", Bind: "127.0.0.1:7009", Mode: "read-write", Strategy: "first-available", Draining: true,
			Primary: "127.0.0.1:3306", Sessions: 1, Destinations: []DestStatus{
				{Address: "127.0.0.1:3306", Up: false, Reason: "checks stopped", Sessions: 1, Primary: true},
			}},
	}, VRRP: []VRRPStatus{{Name: "VI_1", Interface: "eth1", VRID: 51, Version: 3, State: "MASTER",
		Priority: 120, EffectivePriority: 90, VIPs: []string{"10.0.0.1/24"}}}}
	var b bytes.Buffer
	printStatus(&b, st)
	got := b.String()
	for _, want := range []string{
		"route rw: primary 127.0.0.1:3307",
		"route rw: 127.0.0.1:3306 down: dial: connection refused",
		"127.0.0.1:7002 (closed)",
		"3s",
		"MASTER",
		"120 (effective 90)",
		"127.0.0.1:7009 (closed) (draining)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status table lacks %q:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"route old: primary", "route old: 127.0.0.1:3306 down"} {
		if strings.Contains(got, unwanted) {
			t.Errorf("status table says %q of a draining route:\n%s", unwanted, got)
		}
	}
	if !regexp.MustCompile(`\(fallback rw\) +2 *\n`).MatchString(got) {
		t.Errorf("status table lacks ro's 2 sessions on its fallback rw:\n%s", got)
	}
}
