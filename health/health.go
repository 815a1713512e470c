package health

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Check levels.
const (
	LevelTCP   = "tcp"   // connect and close
	LevelLogin = "login" // MySQL handshake as User, then COM_QUIT
	LevelRole  = "role"  // login, read_only and replication state
)

// Defaults applied by NewChecker to zero fields of Config.
const (
	DefaultInterval = 500 * time.Millisecond
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 2
)

// Config says how to check one destination. Zero fields take the defaults
// above; Level "" means LevelLogin when User is set, else LevelTCP.
type Config struct {
	Addr           string        // host:port
	Level          string        // tcp | login | role
	User, Password string        // login and role
	Interval       time.Duration // between the starts of two checks
	Timeout        time.Duration // whole check (dial + handshake + queries)
	Rise, Fall     int           // consecutive good/bad checks to go up/down

	// Writer (role): up only while @@read_only (and @@super_read_only where
	// it exists) is OFF. For read-write routes.
	Writer bool
	// MaxLag (role, readers): down while a replication IO or SQL thread is
	// not running, or Seconds_Behind_Master is above MaxLag or NULL. 0 means
	// lag is not checked (the threads still are).
	MaxLag time.Duration
}

// withDefaults returns cfg with the documented defaults in its zero fields.
func (cfg Config) withDefaults() Config {
	if cfg.Level == "" {
		cfg.Level = LevelTCP
		if cfg.User != "" {
			cfg.Level = LevelLogin
		}
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Rise == 0 {
		cfg.Rise = DefaultRise
	}
	if cfg.Fall == 0 {
		cfg.Fall = DefaultFall
	}
	return cfg
}

// Validate reports the first field of cfg, after defaults, that is not
// usable, naming the field and its value.
func (cfg Config) Validate() error {
	cfg = cfg.withDefaults()
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return fmt.Errorf("addr %q: %w", cfg.Addr, err)
	}
	switch cfg.Level {
	case LevelTCP:
	case LevelLogin, LevelRole:
		if cfg.User == "" {
			return fmt.Errorf("level %s needs a user", cfg.Level)
		}
	default:
		return fmt.Errorf("level %q is not a level (tcp, login, role)", cfg.Level)
	}
	switch {
	case cfg.Interval < 0:
		return fmt.Errorf("interval %v is negative", cfg.Interval)
	case cfg.Timeout < 0:
		return fmt.Errorf("timeout %v is negative", cfg.Timeout)
	case cfg.Rise < 0:
		return fmt.Errorf("rise %d is negative", cfg.Rise)
	case cfg.Fall < 0:
		return fmt.Errorf("fall %d is negative", cfg.Fall)
	case cfg.MaxLag < 0:
		return fmt.Errorf("max lag %v is negative", cfg.MaxLag)
	}
	return nil
}

// Role is what a role check found the destination to be.
type Role string

// Roles.
const (
	RoleUnknown  Role = "unknown"   // not checked at role level, or the check failed
	RolePrimary  Role = "primary"   // read_only OFF (writable)
	RoleReplica  Role = "replica"   // read_only ON, replication configured
	RoleReadOnly Role = "read-only" // read_only ON, no replication configured
)

// Status is a destination's state as seen by its Checker.
type Status struct {
	Up bool
	// Reason says why it is in this state: "ok", "dial: connection
	// refused", "read_only is ON", "replication SQL thread stopped",
	// "lag 12s > 10s", "passive: dial failed: …". While the hysteresis holds
	// the state against the last check, Reason is that check's result.
	Reason   string
	Role     Role
	ReadOnly bool
	Lag      time.Duration // valid when LagKnown
	LagKnown bool
	Checked  time.Time // end of the last completed check
}

// Options are a Checker's collaborators.
type Options struct {
	Logger  *slog.Logger // nil discards
	Metrics *Metrics     // may be nil
	Route   string       // used as a label only
	// Dial opens the check's connection. nil means a net.Dialer. It must
	// honour ctx, whose deadline is the check's.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// StartDown makes the initial state down instead of up: for a checker
	// that takes over a destination already known to be down (a reload
	// that changed the health settings).
	StartDown bool
	// Resume makes the initial state count as established, as for a
	// checker that has been running: the first check no longer decides
	// at once, and a change needs Rise good or Fall failed checks in a
	// row. For a checker that takes over from another.
	Resume bool
	// OnChange is called on every up/down transition, and once after the
	// first check if that differs from the initial state. Calls are made
	// without the Checker's lock held, one at a time and in the order of the
	// transitions, from the goroutine of Run or of Fail.
	OnChange func(up bool, st Status)
}

// A Checker checks one destination of one route. Run it in its own
// goroutine; Status and Fail may be called concurrently with it.
type Checker struct {
	cfg  Config
	err  error // from Config.Validate; every check fails with it
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	st       Status
	checked  bool // a check completed or Fail was called: hysteresis applies
	good     int  // consecutive good checks
	bad      int  // consecutive bad checks
	pending  []event
	draining bool // a goroutine is delivering pending events
}

type event struct {
	from, to bool
	st       Status
}

// NewChecker returns a Checker of cfg.Addr, initially up. An invalid cfg
// (see Config.Validate) is not rejected here: every check of it fails with
// the reason "config: …", so it shows as down.
func NewChecker(cfg Config, opts Options) *Checker {
	cfg = cfg.withDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Checker{
		cfg:     cfg,
		err:     cfg.Validate(),
		opts:    opts,
		log:     opts.Logger.With("route", opts.Route, "destination", cfg.Addr),
		st:      Status{Up: !opts.StartDown, Reason: "not checked yet", Role: RoleUnknown},
		checked: opts.Resume,
	}
	opts.Metrics.setUp(opts.Route, cfg.Addr, !opts.StartDown)
	return c
}

// Status returns the current state.
func (c *Checker) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Run checks the destination at once and then every Interval until ctx is
// done. Checks do not overlap: one that lasts longer than Interval delays
// the next. Run returns when ctx is done and the check in progress, which
// ctx cancels, has ended. Call Run at most once.
func (c *Checker) Run(ctx context.Context) {
	every := c.cfg.Interval
	if every <= 0 { // an invalid Config: its checks fail, at the default pace
		every = DefaultInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		c.checkOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkOnce runs one check and applies its result, unless ctx ended first.
func (c *Checker) checkOnce(ctx context.Context) {
	start := time.Now()
	r := c.check(ctx)
	if ctx.Err() != nil {
		return // cancelled: says nothing of the destination
	}
	end := time.Now()
	c.opts.Metrics.check(c.opts.Route, c.cfg.Addr, r, end.Sub(start).Seconds())
	if !r.ok {
		c.log.Debug("health check failed", "reason", r.reason)
	}
	if r.busy {
		c.busy(r, end)
		return
	}
	c.apply(r, end)
}

// Fail reports a failure seen outside the checks, such as a failed dial by
// the proxy: the destination goes down at once and needs Rise good checks to
// come back up.
func (c *Checker) Fail(err error) {
	reason := "passive: dial failed"
	if err != nil {
		reason += ": " + err.Error()
	}
	c.mu.Lock()
	c.checked = true
	c.good = 0
	c.bad = max(c.bad, c.cfg.Fall)
	c.st.Reason = reason
	c.setLocked(false)
	c.mu.Unlock()
	c.deliver()
}

// busy records a check that got no connection from a live server: it
// counts neither as good nor as bad, so the destination keeps its state,
// its role and its place in the rise/fall hysteresis.
func (c *Checker) busy(r result, at time.Time) {
	c.mu.Lock()
	c.st.Reason = r.reason
	c.st.Checked = at
	c.mu.Unlock()
}

// apply feeds one check result into the rise/fall hysteresis.
func (c *Checker) apply(r result, at time.Time) {
	c.mu.Lock()
	first := !c.checked
	c.checked = true
	if r.ok {
		c.good++
		c.bad = 0
	} else {
		c.bad++
		c.good = 0
	}
	c.st.Reason = r.reason
	c.st.Checked = at
	c.st.Role = r.role
	c.st.ReadOnly = r.readOnly
	c.st.Lag, c.st.LagKnown = r.lag, r.lagKnown
	switch {
	case first:
		c.setLocked(r.ok)
	case r.ok && !c.st.Up && c.good >= c.cfg.Rise:
		c.setLocked(true)
	case !r.ok && c.st.Up && c.bad >= c.cfg.Fall:
		c.setLocked(false)
	}
	c.mu.Unlock()
	c.deliver()
}

// setLocked moves the state to up, queueing the transition for deliver if
// it is one. c.mu must be held.
func (c *Checker) setLocked(up bool) {
	if c.st.Up == up {
		return
	}
	c.st.Up = up
	c.pending = append(c.pending, event{from: !up, to: up, st: c.st})
	c.opts.Metrics.setUp(c.opts.Route, c.cfg.Addr, up)
	c.opts.Metrics.transition(c.opts.Route, c.cfg.Addr)
}

// deliver logs queued transitions and calls OnChange for them, in order and
// one at a time, without c.mu held. If another goroutine is already
// delivering, it delivers ours too.
func (c *Checker) deliver() {
	c.mu.Lock()
	if c.draining || len(c.pending) == 0 {
		c.mu.Unlock()
		return
	}
	c.draining = true
	for len(c.pending) > 0 {
		ev := c.pending[0]
		c.pending = c.pending[1:]
		c.mu.Unlock()

		lvl := slog.LevelInfo
		if !ev.to {
			lvl = slog.LevelWarn
		}
		c.log.Log(context.Background(), lvl, "destination "+state(ev.to),
			"from", state(ev.from), "to", state(ev.to), "reason", ev.st.Reason)
		if c.opts.OnChange != nil {
			c.opts.OnChange(ev.to, ev.st)
		}

		c.mu.Lock()
	}
	c.draining = false
	c.mu.Unlock()
}

func state(up bool) string {
	if up {
		return "up"
	}
	return "down"
}
