package integration

import (
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hamr-project/hamr/internal/loopback"
)

// TestAdminToken checks [admin] token: every request without the bearer
// token is refused with 401, and `hamr ctl` sends the token from -c FILE,
// --token or $HAMR_ADMIN_TOKEN, failing clearly without it.
func TestAdminToken(t *testing.T) {
	const token = "s3cret"
	// No MySQL needed: the admin endpoint is the subject.
	r := routeConfig{Name: "guarded", Port: freePorts(t, 1)[0], Mode: "read-write", Dests: []string{loopback.Refused(t)}}
	h := startHamr(t, hamrConfig{Token: token, Level: "tcp", Routes: []routeConfig{r}})

	t.Run("http", func(t *testing.T) {
		for _, tc := range []struct {
			method, path, auth string
			want               int
		}{
			{"GET", "/status", "", http.StatusUnauthorized},
			{"GET", "/status", "Bearer wrong", http.StatusUnauthorized},
			{"GET", "/status", token, http.StatusUnauthorized}, // no "Bearer "
			{"GET", "/metrics", "", http.StatusUnauthorized},
			{"POST", "/reload", "", http.StatusUnauthorized},
			{"POST", "/routes/guarded/reset-primary", "", http.StatusUnauthorized},
			{"GET", "/debug/pprof/", "", http.StatusUnauthorized},
			{"GET", "/status", "Bearer " + token, http.StatusOK},
			{"GET", "/metrics", "Bearer " + token, http.StatusOK},
		} {
			req, err := http.NewRequest(tc.method, "http://"+h.Admin+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := httpClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s with Authorization %q: %s; want %d", tc.method, tc.path, tc.auth, resp.Status, tc.want)
			}
			if tc.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s: 401 without a WWW-Authenticate: Bearer header (got %q)", tc.method, tc.path, resp.Header.Get("WWW-Authenticate"))
			}
		}
		if !h.logContains("hamr ready") || h.logContains("configuration reloaded") {
			t.Errorf("an unauthenticated POST /reload reached the daemon:\n%s", h.log.tail(10))
		}
	})

	t.Run("ctl", func(t *testing.T) {
		ok := func(what string, env []string, args ...string) {
			t.Helper()
			out, err := runCtl(env, args...)
			if err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			if !strings.Contains(out, "guarded") {
				t.Errorf("%s: the route is not in the output:\n%s", what, out)
			}
		}
		ok("hamr ctl -c FILE status (token read from the file)", nil, "-c", h.Config, "status")
		ok("hamr ctl --admin ADDR --token T status", nil, "--admin", h.Admin, "--token", token, "status")
		ok("HAMR_ADMIN_TOKEN=T hamr ctl --admin ADDR status", []string{"HAMR_ADMIN_TOKEN=" + token}, "--admin", h.Admin, "status")

		for _, args := range [][]string{
			{"--admin", h.Admin, "status"},
			{"--admin", h.Admin, "--token", "wrong", "status"},
		} {
			out, err := runCtl(nil, args...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Errorf("hamr ctl %s: err %v, want a non-zero exit; output:\n%s", strings.Join(args, " "), err, out)
				continue
			}
			t.Logf("hamr ctl %s: exit %d: %s", strings.Join(args, " "), ee.ExitCode(), strings.TrimSpace(out))
			if !strings.Contains(strings.ToLower(out), "token") {
				t.Errorf("hamr ctl %s: output %q does not say the token is missing or wrong", strings.Join(args, " "), out)
			}
			if strings.Contains(out, "guarded") {
				t.Errorf("hamr ctl %s printed the status without the token:\n%s", strings.Join(args, " "), out)
			}
		}
	})
}

// TestAdminReload checks that a reload applies [admin] as it applies the
// rest: a new token (or new contents of token_file) is required from the
// next request on, a new address moves the endpoint, "off" closes it and
// SIGHUP opens it again; an address in use or an unreadable or empty
// token file rejects the reload and the endpoint stays as it was.
func TestAdminReload(t *testing.T) {
	ports := freePorts(t, 3) // the route's, and two admin addresses
	r := routeConfig{Name: "guarded", Port: ports[0], Mode: "read-write", Dests: []string{loopback.Refused(t)}}
	cfg := hamrConfig{Admin: Addr(ports[1]), Token: "one", Level: "tcp", Routes: []routeConfig{r}}
	h := startHamr(t, cfg)
	dir := t.TempDir()

	// reload writes cfg, runs `hamr ctl reload` with the token that is
	// valid now, and then makes the helpers use the new endpoint.
	reload := func(t *testing.T, next hamrConfig, nextToken string) {
		t.Helper()
		h.writeFile(next.TOML())
		if _, err := h.ctl("reload"); err != nil {
			t.Fatal(err)
		}
		h.Admin, h.Token = next.Admin, nextToken
	}
	code := func(addr, token string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Logf("GET http://%s/status: %v", addr, err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// refused reports whether nothing listens on addr any more (an
	// endpoint that hangs or errors is still there).
	refused := func(addr string) (bool, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return false, nil
		}
		return errors.Is(err, syscall.ECONNREFUSED), nil
	}
	want := func(addr, token string, status int) {
		t.Helper()
		if got := code(addr, token); got != status {
			t.Errorf("GET http://%s/status with token %q: %d, want %d", addr, token, got, status)
		}
	}

	t.Run("token", func(t *testing.T) {
		cfg.Token = "two"
		reload(t, cfg, "two")
		want(cfg.Admin, "one", http.StatusUnauthorized)
		want(cfg.Admin, "two", http.StatusOK)
	})

	t.Run("token_file rotated in place", func(t *testing.T) {
		file := filepath.Join(dir, "token") // outlives the subtest
		if err := os.WriteFile(file, []byte("three\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Token, cfg.TokenFile = "", file
		reload(t, cfg, "three")
		want(cfg.Admin, "two", http.StatusUnauthorized)
		want(cfg.Admin, "three", http.StatusOK)
		// Same configuration, new file contents: a reload reads it again.
		if err := os.WriteFile(file, []byte("four\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		reload(t, cfg, "four")
		want(cfg.Admin, "three", http.StatusUnauthorized)
		want(cfg.Admin, "four", http.StatusOK)
	})

	t.Run("address moves", func(t *testing.T) {
		old := cfg.Admin
		cfg.Admin = Addr(ports[2])
		reload(t, cfg, h.Token) // sent to the old address, answered there
		want(cfg.Admin, h.Token, http.StatusOK)
		waitFor(t, 10*time.Second, "the old admin address to close", func() (bool, error) {
			return refused(old)
		})
		if !h.logContains("admin endpoint moved") {
			t.Errorf("no log line for the move:\n%s", h.log.tail(10))
		}
	})

	t.Run("bad [admin] rejects the reload", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		inUse := cfg
		inUse.Admin = busy.Addr().String()
		missing := cfg
		missing.TokenFile = filepath.Join(t.TempDir(), "absent")
		// An empty file would otherwise mean no token: no authentication.
		empty := cfg
		empty.Token, empty.TokenFile = "", filepath.Join(t.TempDir(), "empty")
		if err := os.WriteFile(empty.TokenFile, []byte("\n \n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Two lines: no request could carry that token.
		twoLines := cfg
		twoLines.Token, twoLines.TokenFile = "", filepath.Join(t.TempDir(), "two")
		if err := os.WriteFile(twoLines.TokenFile, []byte("first\nsecond\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			cfg  hamrConfig
			says string
		}{
			{"address in use", inUse, "address already in use"},
			{"unreadable token file", missing, "token_file"},
			{"empty token file", empty, "is empty"},
			{"token file of two lines", twoLines, "no blanks or control characters"},
		} {
			before, err := h.metric("hamr_config_reload_failures_total")
			if err != nil {
				t.Fatal(err)
			}
			h.writeFile(tc.cfg.TOML())
			out, err := h.ctl("reload")
			if err == nil {
				t.Errorf("%s: reload accepted:\n%s", tc.name, out)
			} else if !strings.Contains(out, tc.says) {
				t.Errorf("%s: ctl output does not say %q:\n%s", tc.name, tc.says, out)
			}
			want(cfg.Admin, h.Token, http.StatusOK)
			want(cfg.Admin, "", http.StatusUnauthorized)
			if after, err := h.metric("hamr_config_reload_failures_total"); err != nil || after != before+1 {
				t.Errorf("%s: hamr_config_reload_failures_total %v -> %v (%v); want +1", tc.name, before, after, err)
			}
		}
	})

	t.Run("off, then on again by SIGHUP", func(t *testing.T) {
		off := cfg
		off.Admin = "off"
		h.writeFile(off.TOML())
		if _, err := h.ctl("reload"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the admin endpoint to close", func() (bool, error) {
			return refused(cfg.Admin)
		})
		h.writeFile(cfg.TOML())
		h.signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, "the admin endpoint to open again", func() (bool, error) {
			return code(cfg.Admin, h.Token) == http.StatusOK, nil
		})
		for _, line := range []string{"admin endpoint closed", "admin endpoint opened"} {
			if !h.logContains(line) {
				t.Errorf("no %q in the log:\n%s", line, h.log.tail(10))
			}
		}
	})
}

// TestStatusFallback: a read-only route with no destination up sends its
// clients to its fallback's destinations. /status counts those sessions
// in the route's total and as fallback_sessions, and `hamr ctl status`
// shows them on a "(fallback rw)" line; they used to be left out, so a
// route serving everyone through its fallback showed 0 sessions.
func TestStatusFallback(t *testing.T) {
	dest, _ := holdServer(t)
	ports := freePorts(t, 2)
	replica := loopback.Refused(t)
	rw := routeConfig{Name: "rw", Port: ports[0], Mode: "read-write", Dests: []string{dest}}
	ro := routeConfig{Name: "ro", Port: ports[1], Mode: "read-only", Dests: []string{replica}, Extra: `fallback = "rw"`}
	h := startHamr(t, hamrConfig{Level: "tcp", Routes: []routeConfig{rw, ro}})
	h.waitDest("ro", replica, false, 10*time.Second)

	c, err := net.DialTimeout("tcp", Addr(ro.Port), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 5*time.Second, "/status to count ro's fallback session", func() (bool, error) {
		r, err := h.route("ro")
		return err == nil && r.Sessions == 1 && r.Fallback == 1, err
	})
	out, err := h.ctl("status")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`\(fallback rw\) +1\b`).MatchString(out) {
		t.Errorf("hamr ctl status does not show ro's session on its fallback rw:\n%s", out)
	}
}
