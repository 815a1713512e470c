// Package health decides whether one destination (a MySQL server) of one
// route is up, by active checks and by passive marks.
//
// A Checker checks one destination at one of three levels:
//
//   - tcp: connect and close. A MySQL server counts a connect without a
//     login as an aborted connect, and after max_connect_errors of them in a
//     row it blocks the checking host with error 1129 for all its traffic.
//     Use it only for servers that are not MySQL, or with
//     max_connect_errors set very high.
//   - login: a full MySQL handshake as Config.User (mysql_native_password or
//     caching_sha2_password; a user without privileges and without password
//     will do), then COM_QUIT. The server counts neither an aborted connect
//     nor an aborted client.
//   - role: login, then @@read_only, @@super_read_only where it exists, and
//     SHOW REPLICA STATUS (SHOW SLAVE STATUS on older servers). A writer
//     (Config.Writer) is up only while read_only is OFF; a reader is down
//     while a replication thread is not running or, with Config.MaxLag,
//     while Seconds_Behind_Master is NULL or above MaxLag. A server without
//     replication is a good reader.
//
// Each check has one deadline, Config.Timeout, for the dial, the handshake
// and the queries, and closes its connection before it returns, so a server
// that accepts and never answers costs one connection for Timeout, never
// more.
//
// A destination starts up. The first check's result applies at once; after
// that it takes Rise good checks in a row to go up and Fall bad ones to go
// down. Fail marks it down at once (the proxy saw a dial fail), and then it
// needs Rise good checks. Every transition is logged, counted in Metrics,
// and passed to Options.OnChange:
//
//	c := health.NewChecker(health.Config{
//		Addr: "10.0.0.11:3306", Level: health.LevelRole, User: "hamr_mon",
//		Writer: true, Interval: 500 * time.Millisecond, Timeout: time.Second,
//		Rise: 2, Fall: 2,
//	}, health.Options{
//		Logger: logger, Metrics: metrics, Route: "rw",
//		OnChange: func(up bool, st health.Status) { route.SetUp(0, up) },
//	})
//	go c.Run(ctx)
//
// Checkers are independent: each runs its checks in the goroutine that
// calls Run, one after the other.
package health
