package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hamr-project/hamr/conf"
)

func logLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// cmdRun is `hamr run`: start everything, then serve until SIGTERM or
// SIGINT, reloading on SIGHUP.
func cmdRun(args []string, stderr io.Writer) int {
	file, ok := configFlag("run", args, stderr)
	if !ok {
		return 2
	}
	cfg, err := conf.Load(file)
	if err != nil {
		printConfigError(stderr, err)
		return 1
	}
	level := new(slog.LevelVar)
	level.Set(logLevel(cfg.Logger.Level))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	// Signals are caught before anything starts so that none is lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	d := newDaemon(log, level)
	if err := d.start(cfg); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	log.Info("hamr ready", "version", version, "config", file, "routes", len(cfg.Routes),
		"vrrp", len(cfg.VRRP), "admin", cfg.Admin.Address)

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			_ = d.reload() // logged; the old configuration keeps running
			continue
		}
		log.Info("shutting down: stop accepting, drain sessions", "signal", sig.String(),
			"drain_timeout", d.drainTimeout())
		break
	}

	// A second SIGTERM or SIGINT cuts the drain short; a SIGHUP (say,
	// systemctl reload during the stop) is refused, as ctl reload is.
	ctx, cancel := context.WithTimeout(context.Background(), d.drainTimeout())
	defer cancel()
	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					log.Warn("reload refused", "err", errShuttingDown)
					continue
				}
				log.Warn("second signal: closing remaining sessions now", "signal", sig.String())
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	d.stop(ctx)
	shut, done := context.WithTimeout(context.Background(), 2*time.Second)
	d.stopAdmin(shut)
	done()
	log.Info("hamr stopped")
	return 0
}

func (d *daemon) drainTimeout() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Global.DrainTimeout
}
