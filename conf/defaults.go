package conf

import "time"

// Defaults. conf.go documents each one on its field.
const (
	defaultDrainTimeout   = 30 * time.Second
	defaultLogLevel       = "info"
	defaultAdminAddress   = "127.0.0.1:8081"
	defaultInterval       = 500 * time.Millisecond
	defaultTimeout        = time.Second
	defaultRise           = 2
	defaultFall           = 2
	defaultBindAddress    = "127.0.0.1"
	defaultConnectTimeout = time.Second
	defaultMaxConnections = 512
	defaultPriority       = 100
	defaultAdvertInt      = time.Second
	defaultVersion        = 3
	defaultState          = "BACKUP"
	defaultGarpRepeat     = 5
	defaultGarpDelay      = 5 * time.Second
	defaultNotifyTimeout  = 10 * time.Second
)

// applyDefaults fills every key the file leaves out. It is the only place
// defaults are applied. A key that is written keeps its value, or its zero
// value when the value was rejected (and reported), so a bad value is never
// replaced by a default.
func (d *decoder) applyDefaults(c *Config) {
	setDefault(d.sections["global"], "drain_timeout", &c.Global.DrainTimeout, defaultDrainTimeout)
	setDefault(d.sections["logger"], "level", &c.Logger.Level, defaultLogLevel)
	setDefault(d.sections["admin"], "address", &c.Admin.Address, defaultAdminAddress)

	h := &c.Health
	setDefault(d.sections["health"], "interval", &h.Interval, defaultInterval)
	setDefault(d.sections["health"], "timeout", &h.Timeout, defaultTimeout)
	setDefault(d.sections["health"], "rise", &h.Rise, defaultRise)
	setDefault(d.sections["health"], "fall", &h.Fall, defaultFall)

	for _, r := range c.Routes {
		t := d.routeT[r]
		setDefault(t, "bind_address", &r.BindAddress, defaultBindAddress)
		if !t.has("strategy") {
			switch {
			case r.Mode == ModeReadWrite:
				r.Strategy = FirstAvailable
			case r.Fallback != "":
				r.Strategy = RoundRobinWithFallback
			default:
				r.Strategy = RoundRobin
			}
		}
		setDefault(t, "connect_timeout", &r.ConnectTimeout, defaultConnectTimeout)
		setDefault(t, "max_connections", &r.MaxConnections, defaultMaxConnections)

		// Route health: [health] with the keys written in
		// [routing.NAME.health] over it; the level default comes last so
		// that a user set in either place selects login.
		ht, over := d.healthT[r], r.Health
		r.Health = *h
		override(ht, "interval", &r.Health.Interval, over.Interval)
		override(ht, "timeout", &r.Health.Timeout, over.Timeout)
		override(ht, "rise", &r.Health.Rise, over.Rise)
		override(ht, "fall", &r.Health.Fall, over.Fall)
		override(ht, "level", &r.Health.Level, over.Level)
		override(ht, "user", &r.Health.User, over.User)
		override(ht, "password", &r.Health.Password, over.Password)
		if !ht.has("level") && !d.sections["health"].has("level") {
			r.Health.Level = defaultLevel(r.Health)
		}
	}
	setDefault(d.sections["health"], "level", &h.Level, defaultLevel(*h))

	for _, v := range c.VRRP {
		t := d.vrrpT[v]
		setDefault(t, "priority", &v.Priority, defaultPriority)
		setDefault(t, "advert_int", &v.AdvertInt, defaultAdvertInt)
		setDefault(t, "version", &v.Version, defaultVersion)
		setDefault(t, "state", &v.State, defaultState)
		setDefault(t, "garp_master_repeat", &v.GarpMasterRepeat, defaultGarpRepeat)
		setDefault(t, "garp_master_delay", &v.GarpMasterDelay, defaultGarpDelay)
		setDefault(t, "notify_timeout", &v.NotifyTimeout, defaultNotifyTimeout)
	}
}

// defaultLevel is login when a user is configured, since logging in avoids
// the aborted-connect count a bare TCP check causes, and tcp otherwise.
func defaultLevel(h Health) string {
	if h.User != "" {
		return LevelLogin
	}
	return LevelTCP
}

// setDefault sets *dst to def unless key is written in t.
func setDefault[T any](t *table, key string, dst *T, def T) {
	if !t.has(key) {
		*dst = def
	}
}

// override sets *dst to v if key is written in t.
func override[T any](t *table, key string, dst *T, v T) {
	if t.has(key) {
		*dst = v
	}
}
