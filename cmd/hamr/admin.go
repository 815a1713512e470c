package main

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"

	"github.com/hamr-project/hamr/conf"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Status is the document served at GET /status and printed by
// `hamr ctl status`.
type Status struct {
	Version string        `json:"version"`
	Config  string        `json:"config"`
	Routes  []RouteStatus `json:"routes"`
	VRRP    []VRRPStatus  `json:"vrrp"`
}

// RouteStatus is one route in Status.
type RouteStatus struct {
	Name             string       `json:"name"`
	Bind             string       `json:"bind"`
	Mode             string       `json:"mode"`
	Strategy         string       `json:"strategy"`
	Listening        bool         `json:"listening"`
	Draining         bool         `json:"draining,omitempty"` // removed or replaced by a reload; its sessions finish
	Primary          string       `json:"primary"`            // "" when none or not applicable
	Fallback         string       `json:"fallback,omitempty"`
	Sessions         int          `json:"sessions"`                    // fallback sessions included
	FallbackSessions int          `json:"fallback_sessions,omitempty"` // to the fallback route's destinations
	Destinations     []DestStatus `json:"destinations"`
}

// DestStatus is one destination of a route in Status.
type DestStatus struct {
	Address    string   `json:"address"`
	Up         bool     `json:"up"`
	Reason     string   `json:"reason"`
	Role       string   `json:"role"`
	ReadOnly   bool     `json:"read_only"`
	LagSeconds *float64 `json:"lag_seconds"`
	Sessions   int      `json:"sessions"`
	Primary    bool     `json:"primary"`
}

// VRRPStatus is one VRRP instance in Status.
type VRRPStatus struct {
	Name              string            `json:"name"`
	Interface         string            `json:"interface"`
	VRID              int               `json:"vrid"`
	Version           int               `json:"version"`
	State             string            `json:"state"`
	Priority          int               `json:"priority"`
	EffectivePriority int               `json:"effective_priority"`
	Master            string            `json:"master"`
	VIPs              []string          `json:"vips"`
	Transitions       uint64            `json:"transitions"`
	MasterChanges     uint64            `json:"master_changes"`
	AdvertsSent       uint64            `json:"adverts_sent"`
	AdvertsReceived   uint64            `json:"adverts_received"`
	Dropped           map[string]uint64 `json:"dropped,omitempty"`
}

// status assembles Status from the running parts.
func (d *daemon) status() Status {
	v := d.view.Load()
	st := Status{Version: version, Config: v.file, Routes: []RouteStatus{}, VRRP: []VRRPStatus{}}
	for _, rv := range v.routes {
		st.Routes = append(st.Routes, routeStatus(rv.r, rv.cfg))
	}
	// Routes a reload took away, while their sessions finish.
	d.drainMu.Lock()
	for _, rv := range d.draining {
		rs := routeStatus(rv.r, rv.cfg)
		rs.Draining = true
		st.Routes = append(st.Routes, rs)
	}
	d.drainMu.Unlock()
	for _, vi := range v.vrrps {
		s := vi.in.Status()
		st.VRRP = append(st.VRRP, VRRPStatus{
			Name: s.Name, Interface: s.Interface, VRID: s.VRID, Version: s.Version, State: s.State,
			Priority: s.Priority, EffectivePriority: s.EffectivePriority, Master: s.Master,
			VIPs: s.VIPs, Transitions: s.Transitions, MasterChanges: s.MasterChanges,
			AdvertsSent: s.AdvertsSent, AdvertsReceived: s.AdvertsReceived, Dropped: s.Dropped,
		})
	}
	return st
}

// routeStatus is r, running with rc, in Status.
func routeStatus(r *route, rc *conf.Route) RouteStatus {
	rs := RouteStatus{
		Name: rc.Name, Bind: rc.Addr(), Mode: rc.Mode, Strategy: rc.Strategy,
		Listening: r.px.Listening(), Fallback: rc.Fallback,
	}
	sessions := r.px.Sessions()
	r.mu.Lock()
	checkers := r.checkers
	r.mu.Unlock()
	for i, ds := range r.rt.State() {
		hs := checkers[i].Status()
		dst := DestStatus{
			Address: ds.Addr, Up: ds.Up, Reason: hs.Reason, Role: string(hs.Role),
			ReadOnly: hs.ReadOnly, Primary: ds.Primary,
		}
		if ds.Burned && ds.Up {
			dst.Reason = "failed since the last reset (next-available)"
		}
		if hs.LagKnown {
			lag := hs.Lag.Seconds()
			dst.LagSeconds = &lag
		}
		if i < len(sessions) {
			dst.Sessions = sessions[i]
			rs.Sessions += sessions[i]
		}
		if ds.Primary {
			rs.Primary = ds.Addr
		}
		rs.Destinations = append(rs.Destinations, dst)
	}
	if rc.Fallback != "" {
		rs.FallbackSessions = r.px.FallbackSessions()
		rs.Sessions += rs.FallbackSessions
	}
	return rs
}

// resetPrimary is the operator command that moves a route's primary back
// to the first available destination in list order.
// A read-only route has no primary: its rotation starts again.
func (d *daemon) resetPrimary(name string) (moved bool, primary string, readOnly, ok bool) {
	var r *route
	for _, rv := range d.view.Load().routes {
		if rv.r.name == name {
			r = rv.r
		}
	}
	if r == nil {
		return false, "", false, false
	}
	moved = r.rt.Reset()
	if p := r.rt.Primary(); p >= 0 {
		primary = r.dests[p]
	}
	d.log.Info("reset-primary", "route", name, "moved", moved, "primary", primary)
	return moved, primary, r.readOnly, true
}

// adminHandler serves the admin API. token returns the bearer token that
// requests must carry, "" for none; it may change between requests.
func (d *daemon) adminHandler(token func() string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.status())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	reset := func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("route")
		moved, primary, readOnly, ok := d.resetPrimary(name)
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no route named " + name})
			return
		}
		res := map[string]any{"route": name, "moved": moved, "primary": primary}
		if readOnly {
			res["result"] = "route " + name + " is read-only: it has no primary; its round-robin starts again at the first destination"
		}
		writeJSON(w, http.StatusOK, res)
	}
	mux.HandleFunc("POST /routes/{route}/reset-primary", reset)
	mux.HandleFunc("POST /routes/{route}/reset", reset) // DESIGN.md's short form
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if err := d.reload(); err != nil {
			msg := "reload rejected"
			var part *partialReload
			if errors.As(err, &part) {
				msg = "reload applied, except for what failed to start"
			}
			writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": msg, "problems": problems(err)})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"result": "reloaded"})
	})
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := token()
		if tok != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+tok)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hamr"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// problems splits a configuration error into its lines.
func problems(err error) []string {
	return slices.DeleteFunc(strings.Split(err.Error(), "\n"), func(s string) bool { return s == "" })
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
