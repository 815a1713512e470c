package vrrp

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestUnprivileged runs hamr the way deploy/hamr.service does: as an
// unprivileged user whose only capabilities are CAP_NET_ADMIN and
// CAP_NET_RAW (ambient, bounding set reduced to them, no new privileges).
// It must become master and add the VIP. Without the capabilities it must
// exit with an error that says what is missing.
func TestUnprivileged(t *testing.T) {
	t.Parallel()
	requireHamr(t)
	l := newLab(t)
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("the test runs hamr as user nobody: %v", err)
	}
	// The lab directory is root's and private; nobody must read the config.
	for _, d := range []string{l.dir, filepath.Dir(l.dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := fast
	c.priority = 120
	conf := l.writeHamrConf(l.r1, "hamr-caps", c)
	l.serve(l.r1, backendAdr)

	// `ip netns exec` needs root, so the namespace is entered first and
	// setpriv drops privileges inside it.
	drop := []string{"setpriv", "--reuid=" + u.Uid, "--regid=" + u.Gid, "--init-groups", "--no-new-privs"}
	caps := "-all,+net_admin,+net_raw"

	t.Run("with-capabilities", func(t *testing.T) {
		args := append(drop, "--bounding-set="+caps, "--inh-caps="+caps, "--ambient-caps="+caps,
			hamrBin, "run", "-c", conf)
		r := l.start(kindHamr, l.r1, "hamr-caps", args...)
		r.admin = adminAddr
		r.waitState("MASTER", startTimeout(c))
		l.r1.waitVIP(t, true, 2*time.Second)
		if uid, err := procStatus(r.cmd.Process.Pid, "Uid"); err != nil || uid != u.Uid {
			t.Fatalf("hamr runs as uid %q (%v), want %s (nobody)", uid, err, u.Uid)
		}
		// CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
		if eff, err := procStatus(r.cmd.Process.Pid, "CapEff"); err != nil || eff != "0000000000003000" {
			t.Fatalf("hamr's effective capabilities are %q (%v), want 0000000000003000", eff, err)
		}
		p := l.startProbe(vipService)
		if _, err := p.waitHost("r1", time.Time{}, 5*time.Second); err != nil {
			t.Fatalf("client: %v", err)
		}
		r.terminate()
		if !r.waitExit(stopWait) {
			t.Fatal("hamr did not exit after SIGTERM")
		}
		if r.waitErr != nil {
			t.Errorf("hamr exited after SIGTERM with %v", r.waitErr)
		}
		if l.r1.hasVIP(t) {
			t.Error("the VIP is still on r1 after a graceful stop")
		}
	})

	t.Run("without-capabilities", func(t *testing.T) {
		args := append(drop, "--bounding-set=-all", "--inh-caps=-all", hamrBin, "run", "-c", conf)
		r := l.start(kindHamr, l.r1, "hamr-nocaps", args...)
		if !r.waitExit(10 * time.Second) {
			t.Fatal("hamr without CAP_NET_RAW/CAP_NET_ADMIN is still running after 10s, want it to exit with an error")
		}
		if r.waitErr == nil {
			t.Fatal("hamr without capabilities exited with status 0, want an error")
		}
		out := r.log()
		if !regexp.MustCompile(`(?i)not permitted|permission denied|CAP_NET_(RAW|ADMIN)`).MatchString(out) {
			t.Errorf("hamr failed (%v) without saying that it lacks privileges:\n%s", r.waitErr, out)
		}
		if l.r1.hasVIP(t) {
			t.Error("hamr without capabilities left the VIP on r1")
		}
		t.Logf("without capabilities: %v; log:\n%s", r.waitErr, strings.TrimSpace(out))
	})
}

// procStatus is the first field of the line key: in /proc/PID/status.
func procStatus(pid int, key string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == key+":" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("/proc/%d/status: no %s line", pid, key)
}
