package integration

import (
	"errors"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// TestAdminToken checks [admin] token: every request without the bearer
// token is refused with 401, and `hamr ctl` sends the token from -c FILE,
// --token or $HAMR_ADMIN_TOKEN, failing clearly without it.
func TestAdminToken(t *testing.T) {
	const token = "s3cret"
	dead := freePorts(t, 2) // no MySQL needed: the admin endpoint is the subject
	r := routeConfig{Name: "guarded", Port: dead[0], Mode: "read-write", Dests: []string{Addr(dead[1])}}
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
