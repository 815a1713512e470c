package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hamr-project/hamr/conf"
)

// endpoint is the admin HTTP endpoint as [admin] configures it now. A
// reload applies a new [admin] section in two steps, so that a bad one
// (an unreadable token file, an address in use) rejects the whole reload
// before anything changed: prepare reads the token and binds the new
// address; commit swaps them in.
type endpoint struct {
	log     *slog.Logger
	handler func(token func() string) http.Handler

	token atomic.Pointer[string] // read by every request

	// Guarded by the daemon's mu.
	cfg conf.Admin
	srv *http.Server // nil while the address is "off"

	wg sync.WaitGroup // Serve goroutines and retired servers shutting down
}

// adminChange is a prepared [admin] section, ready to commit.
type adminChange struct {
	cfg   conf.Admin
	token string
	ln    net.Listener // bound to cfg.Address when it changed; else nil
}

// drainAdmin bounds how long a retired server may finish its requests,
// such as the reload that retired it.
const drainAdmin = 5 * time.Second

// prepare reads a's token and, if a moves the endpoint, binds the new
// address. Nothing running changes until commit.
func (e *endpoint) prepare(a conf.Admin) (*adminChange, error) {
	tok, err := adminToken(a)
	if err != nil {
		return nil, err
	}
	c := &adminChange{cfg: a, token: tok}
	if a.Address != "off" && (e.srv == nil || a.Address != e.cfg.Address) {
		if c.ln, err = net.Listen("tcp", a.Address); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}
	return c, nil
}

// commit makes c the running [admin]: the token applies to the next
// request; a moved endpoint serves on its new listener at once, and the
// old one finishes its requests (among them, perhaps, the reload that
// moved it) before it closes.
func (e *endpoint) commit(c *adminChange) {
	e.token.Store(&c.token)
	prev := e.cfg
	e.cfg = c.cfg
	if c.ln == nil && c.cfg.Address != "off" {
		return // same address
	}
	old := e.srv
	e.srv = nil
	if c.ln != nil {
		e.srv = e.serve(c.ln)
	}
	if old != nil {
		e.wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), drainAdmin)
			defer cancel()
			if err := old.Shutdown(ctx); err != nil {
				old.Close()
			}
		})
	}
	switch {
	case old != nil && e.srv != nil:
		e.log.Info("admin endpoint moved", "from", prev.Address, "to", c.cfg.Address)
	case old != nil:
		e.log.Info("admin endpoint closed", "address", prev.Address)
	case e.srv != nil && prev.Address != "": // not at start-up, which logs "hamr ready"
		e.log.Info("admin endpoint opened", "address", c.cfg.Address)
	}
}

// serve starts a server on ln.
func (e *endpoint) serve(ln net.Listener) *http.Server {
	srv := &http.Server{
		Handler:           e.handler(func() string { return *e.token.Load() }),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       time.Minute, // a scraper's idle keep-alive does not hold a goroutine for ever
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelWarn),
	}
	e.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.log.Error("admin endpoint stopped", "address", ln.Addr().String(), "err", err)
		}
	})
	return srv
}

// close stops srv, the endpoint's last server (nil if off), letting
// requests finish until ctx ends, and waits for the retired ones. The
// daemon's mu must not be held: a request may be waiting for it.
func (e *endpoint) close(ctx context.Context, srv *http.Server) {
	if srv != nil {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
	}
	e.wg.Wait()
}

// adminToken returns the bearer token from the config or its file.
func adminToken(a conf.Admin) (string, error) {
	if a.TokenFile == "" {
		return a.Token, nil
	}
	b, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	// An empty file must not turn authentication off.
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("admin.token_file: %s is empty", a.TokenFile)
	}
	if msg := conf.CheckToken(t); msg != "" {
		return "", fmt.Errorf("admin.token_file: %s: %s", a.TokenFile, msg)
	}
	return t, nil
}
