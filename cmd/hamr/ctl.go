package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hamr-project/hamr/conf"
)

// cmdCtl is `hamr ctl`: a thin client of the admin endpoint.
func cmdCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hamr ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "configuration `file` to read [admin] from")
	admin := fs.String("admin", "", "admin endpoint `host:port` (instead of -c)")
	token := fs.String("token", os.Getenv("HAMR_ADMIN_TOKEN"), "bearer `token` (default $HAMR_ADMIN_TOKEN, or from -c)")
	asJSON := fs.Bool("json", false, "status: print the JSON document")
	// Flags may come anywhere: `hamr ctl status --json`,
	// `hamr ctl reset-primary rw --admin ADDR`.
	var rest []string
	for left := args; ; {
		if err := fs.Parse(left); err != nil {
			return 2
		}
		left = fs.Args()
		if len(left) == 0 {
			break
		}
		rest, left = append(rest, left[0]), left[1:]
	}
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	addr := *admin
	if addr == "" {
		if *file == "" {
			fmt.Fprintln(stderr, "hamr ctl: need -c FILE or --admin ADDR")
			return 2
		}
		// Only [admin]: the rest of the file may be an edit that the
		// daemon is about to reject, which ctl reload must still reach.
		a, err := conf.LoadAdmin(*file)
		if err != nil {
			printConfigError(stderr, err)
			return 1
		}
		if a.Address == "off" {
			fmt.Fprintf(stderr, "hamr ctl: %s has [admin] address = \"off\"\n", *file)
			return 1
		}
		addr = a.Address
		if *token == "" {
			t, err := adminToken(a)
			if err != nil {
				fmt.Fprintf(stderr, "hamr ctl: %v\n", err)
				return 1
			}
			*token = t
		}
	}
	c := &ctlClient{base: "http://" + addr, token: *token, http: &http.Client{Timeout: 10 * time.Second}}

	var err error
	switch verb := rest[0]; {
	case verb == "status" && len(rest) == 1:
		err = c.status(stdout, *asJSON)
	case verb == "reset-primary" && len(rest) == 2:
		err = c.post(stdout, "/routes/"+rest[1]+"/reset-primary")
	case verb == "reload" && len(rest) == 1:
		err = c.post(stdout, "/reload")
	default:
		fmt.Fprintf(stderr, "hamr ctl: bad command %q\n%s", strings.Join(rest, " "), usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "hamr ctl: %v\n", err)
		return 1
	}
	return 0
}

type ctlClient struct {
	base, token string
	http        *http.Client
}

func (c *ctlClient) do(method, path string) ([]byte, error) {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("admin endpoint: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error    string   `json:"error"`
			Problems []string `json:"problems"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			if len(e.Problems) > 0 {
				return nil, fmt.Errorf("%s:\n%s", e.Error, strings.Join(e.Problems, "\n"))
			}
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("admin endpoint: %s", resp.Status)
	}
	return body, nil
}

func (c *ctlClient) post(w io.Writer, path string) error {
	body, err := c.do(http.MethodPost, path)
	if err != nil {
		return err
	}
	var r struct {
		Route   string `json:"route"`
		Moved   bool   `json:"moved"`
		Primary string `json:"primary"`
		Result  string `json:"result"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	switch {
	case r.Result != "":
		fmt.Fprintln(w, r.Result)
	case r.Primary == "":
		fmt.Fprintf(w, "route %s: no destination is up; no primary\n", r.Route)
	case r.Moved:
		fmt.Fprintf(w, "route %s: primary moved to %s\n", r.Route, r.Primary)
	default:
		fmt.Fprintf(w, "route %s: primary stays %s (already the first available)\n", r.Route, r.Primary)
	}
	return nil
}

func (c *ctlClient) status(w io.Writer, asJSON bool) error {
	body, err := c.do(http.MethodGet, "/status")
	if err != nil {
		return err
	}
	if asJSON {
		_, err := io.Copy(w, bytes.NewReader(body))
		return err
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	printStatus(w, st)
	return nil
}

// printStatus writes Status as the human table of `hamr ctl status`.
func printStatus(w io.Writer, st Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ROUTE\tBIND\tSTRATEGY\tDESTINATION\tSTATE\tROLE\tLAG\tSESSIONS\tPRIMARY\n")
	for _, r := range st.Routes {
		bind := r.Bind
		if !r.Listening {
			bind += " (closed)"
		}
		if r.Draining {
			bind += " (draining)"
		}
		for i, d := range r.Destinations {
			name, b, strat := r.Name, bind, r.Strategy
			if i > 0 {
				name, b, strat = "", "", ""
			}
			state := "up"
			if !d.Up {
				state = "down"
			}
			lag := "-"
			if d.LagSeconds != nil {
				lag = fmt.Sprintf("%.0fs", *d.LagSeconds)
			}
			mark := ""
			if d.Primary {
				mark = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", name, b, strat, d.Address, state,
				orDash(d.Role), lag, d.Sessions, mark)
		}
		if r.Fallback != "" {
			fmt.Fprintf(tw, "\t\t\t(fallback %s)\t\t\t\t%d\t\n", r.Fallback, r.FallbackSessions)
		}
		if r.Mode == conf.ModeReadWrite && r.Primary == "" {
			fmt.Fprintf(tw, "%s\t\t\t(no primary: no destination up)\t\t\t\t\t\n", "")
		}
	}
	tw.Flush()
	for _, r := range st.Routes {
		if r.Mode == conf.ModeReadWrite && !r.Draining {
			fmt.Fprintf(w, "route %s: primary %s\n", r.Name, orDash(r.Primary))
		}
	}
	for _, r := range st.Routes {
		if r.Draining {
			continue // its checks have stopped
		}
		for _, d := range r.Destinations {
			if !d.Up && d.Reason != "" {
				fmt.Fprintf(w, "route %s: %s down: %s\n", r.Name, d.Address, d.Reason)
			}
		}
	}
	if len(st.VRRP) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "VRRP\tINTERFACE\tVRID\tVERSION\tSTATE\tPRIORITY\tMASTER\tVIPS\tTRANSITIONS\n")
	for _, v := range st.VRRP {
		prio := fmt.Sprint(v.Priority)
		if v.EffectivePriority != v.Priority {
			prio = fmt.Sprintf("%d (effective %d)", v.Priority, v.EffectivePriority)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\tv%d\t%s\t%s\t%s\t%s\t%d\n", v.Name, v.Interface, v.VRID, v.Version,
			v.State, prio, orDash(v.Master), strings.Join(v.VIPs, ","), v.Transitions)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
