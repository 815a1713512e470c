package health

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

// MySQL error codes the role check handles.
const (
	erParseError            = 1064 // SHOW REPLICA STATUS before MySQL 8.0.22 / MariaDB 10.5.1
	erUnknownSystemVariable = 1193 // @@super_read_only on MariaDB
	erConCount              = 1040 // Too many connections
	erTooManyUserConns      = 1203 // max_user_connections of the monitoring user
)

// Replica_IO_Running and Replica_SQL_Running values.
const (
	threadRunning = "Yes"
	threadStopped = "No"
)

// Role check queries.
const (
	queryReadOnly            = "SELECT @@global.read_only"
	querySuperReadOnly       = "SELECT @@global.super_read_only"
	queryReplicaStatus       = "SHOW REPLICA STATUS"
	queryReplicaStatusLegacy = "SHOW SLAVE STATUS"
	queryAllSlavesStatus     = "SHOW ALL SLAVES STATUS" // MariaDB: every named connection
)

// result is the outcome of one check.
type result struct {
	ok       bool
	busy     bool   // the server is there but has no connection for the check: no verdict
	class    string // metric reason label: classOK, classDial, …
	reason   string // Status.Reason
	role     Role
	readOnly bool
	lag      time.Duration
	lagKnown bool
}

func failed(class, reason string) result {
	return result{class: class, reason: reason, role: RoleUnknown}
}

// past is a deadline that has passed, to abort blocked I/O.
var past = time.Unix(1, 0)

// check runs one check of c.cfg.Level, bounded by c.cfg.Timeout and ctx.
// It closes every connection it opens before it returns.
func (c *Checker) check(parent context.Context) result {
	if c.err != nil {
		return failed(classConfig, "config: "+c.err.Error())
	}
	ctx, cancel := context.WithTimeout(parent, c.cfg.Timeout)
	defer cancel()

	var (
		conn net.Conn
		stop func() bool
	)
	defer func() {
		if stop != nil {
			stop()
		}
		if conn != nil {
			conn.Close() // after Quit too: Quit does not close when COM_QUIT fails
		}
	}()
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := c.dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn = nc
		if d, ok := ctx.Deadline(); ok {
			if err := nc.SetDeadline(d); err != nil {
				return nil, fmt.Errorf("set deadline: %w", err)
			}
		}
		// Run's ctx may end before the deadline: abort blocked I/O then.
		stop = context.AfterFunc(ctx, func() { nc.SetDeadline(past) })
		return &limitedConn{Conn: nc, left: maxCheckBytes}, nil
	}

	r := c.probe(ctx, dial)
	switch r.class {
	case classDial, classLogin, classQuery:
		// The I/O deadline can fire a moment before ctx's timer does.
		if d, _ := ctx.Deadline(); !time.Now().Before(d) && parent.Err() == nil {
			r.reason = fmt.Sprintf("%s: timeout after %v", r.class, c.cfg.Timeout)
			r.class = classTimeout
		}
	}
	return r
}

func (c *Checker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.opts.Dial != nil {
		return c.opts.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// probe talks to the destination at c.cfg.Level, opening its connection
// with dial.
func (c *Checker) probe(ctx context.Context, dial client.Dialer) result {
	if c.cfg.Level == LevelTCP {
		nc, err := dial(ctx, "tcp", c.cfg.Addr)
		if err != nil {
			return failed(classDial, "dial: "+describe(err))
		}
		if err := nc.Close(); err != nil {
			return failed(classDial, "close: "+describe(err))
		}
		return result{ok: true, class: classOK, reason: "ok", role: RoleUnknown}
	}

	dialed := false
	mc, err := connect(ctx, c.cfg, func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := dial(ctx, network, addr)
		dialed = err == nil
		return nc, err
	})
	if err != nil {
		if !dialed {
			return failed(classDial, "dial: "+describe(err))
		}
		// A server out of connections is alive and keeps its role:
		// failing writes over to another server because of a connection
		// storm would leave two servers written to.
		var me *mysql.MyError
		if errors.As(err, &me) && (me.Code == erConCount || me.Code == erTooManyUserConns) {
			return result{busy: true, class: classBusy, reason: "busy: " + describe(err), role: RoleUnknown}
		}
		return failed(classLogin, "login: "+describe(err))
	}

	r := result{ok: true, class: classOK, reason: "ok", role: RoleUnknown}
	if c.cfg.Level == LevelRole {
		r = c.safeRole(mc)
	}
	// COM_QUIT: the server then counts neither an aborted connect nor an
	// aborted client. (go-mysql's Close would only close the socket.)
	if err := mc.Quit(); err != nil && r.ok {
		return failed(classLogin, "login: quit: "+describe(err))
	}
	return r
}

// errClientPanic reports a panic of go-mysql's client during a handshake.
var errClientPanic = errors.New("mysql client panic")

// connect logs in to cfg.Addr with go-mysql's client. The client panics on
// some malformed server answers (a caching_sha2_password public key that is
// not PEM, as sent by a server without RSA keys); a destination must not be
// able to crash the router, so connect turns that into an error.
func connect(ctx context.Context, cfg Config, dial client.Dialer) (mc *client.Conn, err error) {
	defer func() {
		if p := recover(); p != nil {
			mc, err = nil, fmt.Errorf("%w: %v", errClientPanic, p)
		}
	}()
	return client.ConnectWithDialer(ctx, "tcp", cfg.Addr, cfg.User, cfg.Password, "", dial, noEOFDeprecation)
}

// safeRole is role, with a panic of the client while it reads the server's
// answers turned into a failed check, as in connect.
func (c *Checker) safeRole(mc *client.Conn) (r result) {
	defer func() {
		if p := recover(); p != nil {
			r = failed(classQuery, fmt.Sprintf("query: %v: %v", errClientPanic, p))
		}
	}()
	return c.role(mc)
}

// replica is one row of SHOW REPLICA STATUS.
type replica struct {
	io, sql  string // Replica_IO_Running, Replica_SQL_Running: Yes, No, Connecting, …
	lag      time.Duration
	lagKnown bool
}

// role reads read_only and the replication state and judges them.
func (c *Checker) role(mc *client.Conn) result {
	ro, err := queryBool(mc, queryReadOnly)
	if err != nil {
		return failed(classQuery, "query: read_only: "+describe(err))
	}
	sro, err := queryBool(mc, querySuperReadOnly)
	var me *mysql.MyError
	mariadb := errors.As(err, &me) && me.Code == erUnknownSystemVariable
	if mariadb {
		err = nil // MariaDB has no super_read_only
	}
	if err != nil {
		return failed(classQuery, "query: super_read_only: "+describe(err))
	}

	if c.cfg.Writer {
		if ro || sro {
			r := failed(classReadOnly, "read_only is ON")
			if !ro {
				r.reason = "super_read_only is ON"
			}
			r.readOnly = true
			// The role is for people; a writer does not need it, nor
			// the privilege to read it.
			if reps, err := replicas(mc, mariadb); err == nil {
				r.role, r.lag, r.lagKnown = judgeRole(true, reps)
			}
			return r
		}
		return result{ok: true, class: classOK, reason: "ok", role: RolePrimary}
	}

	reps, err := replicas(mc, mariadb)
	if err != nil {
		return failed(classQuery, "query: replication status: "+describe(err))
	}
	return judgeReader(ro || sro, reps, c.cfg.MaxLag)
}

// judgeRole names the role of a server and its replication lag.
func judgeRole(readOnly bool, reps []replica) (role Role, lag time.Duration, known bool) {
	switch {
	case !readOnly:
		role = RolePrimary
	case len(reps) > 0:
		role = RoleReplica
	default:
		role = RoleReadOnly
	}
	if len(reps) == 0 {
		return role, 0, false
	}
	known = true
	for _, r := range reps {
		lag = max(lag, r.lag)
		known = known && r.lagKnown
	}
	return role, lag, known
}

// judgeReader decides whether a destination may take reads: a server
// without replication is up; a replica is up while both its threads run and,
// when maxLag > 0, its lag is known and at most maxLag.
func judgeReader(readOnly bool, reps []replica, maxLag time.Duration) result {
	r := result{ok: true, class: classOK, reason: "ok", readOnly: readOnly}
	r.role, r.lag, r.lagKnown = judgeRole(readOnly, reps)
	for _, rep := range reps {
		var bad []string
		if rep.io != threadRunning {
			bad = append(bad, "IO thread "+threadState(rep.io))
		}
		if rep.sql != threadRunning {
			bad = append(bad, "SQL thread "+threadState(rep.sql))
		}
		if len(bad) > 0 {
			r.ok, r.class = false, classReplication
			r.reason = "replication " + strings.Join(bad, ", ")
			return r
		}
	}
	switch {
	case len(reps) == 0 || maxLag <= 0:
	case !r.lagKnown:
		r.ok, r.class = false, classLag
		r.reason = "lag unknown (Seconds_Behind_Master is NULL or out of range)"
	case r.lag > maxLag:
		r.ok, r.class = false, classLag
		r.reason = fmt.Sprintf("lag %v > %v", r.lag, maxLag)
	}
	return r
}

func threadState(s string) string {
	switch s {
	case threadStopped:
		return "stopped"
	case "":
		return "state unknown"
	}
	return strings.ToLower(s)
}

// queryBool runs a query returning one integer and reports whether it is
// non-zero.
func queryBool(mc *client.Conn, q string) (bool, error) {
	rs, err := query(mc, q)
	if err != nil {
		return false, fmt.Errorf("%s: %w", q, err)
	}
	if len(rs.rows) != 1 {
		return false, fmt.Errorf("%s: %d rows, want one", q, len(rs.rows))
	}
	// NULL would read as 0, a writable server: fail closed instead.
	v := rs.rows[0][0]
	if v == nil {
		return false, fmt.Errorf("%s: want an integer, got NULL", q)
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return false, fmt.Errorf("%s: want an integer, got %.20q", q, v)
	}
	return n != 0, nil
}

// maxLag is the largest Seconds_Behind_Source taken for a lag.
const maxLag = math.MaxInt32 * time.Second

// replicas runs SHOW REPLICA STATUS, or SHOW SLAVE STATUS on servers that
// predate it, and returns one replica per replication channel. On MariaDB
// those show only the default connection, so a replica set up with named
// connections (CHANGE MASTER 'name' TO) would look like no replica at
// all: SHOW ALL SLAVES STATUS lists every connection.
func replicas(mc *client.Conn, mariadb bool) ([]replica, error) {
	q := queryReplicaStatus
	if mariadb {
		q = queryAllSlavesStatus
	}
	rs, err := query(mc, q)
	var me *mysql.MyError
	if errors.As(err, &me) && me.Code == erParseError {
		rs, err = query(mc, queryReplicaStatusLegacy)
	}
	if err != nil {
		return nil, err
	}
	io := rs.index("Replica_IO_Running", "Slave_IO_Running")
	sql := rs.index("Replica_SQL_Running", "Slave_SQL_Running")
	lag := rs.index("Seconds_Behind_Source", "Seconds_Behind_Master")
	switch {
	case len(rs.rows) == 0:
		return nil, nil
	case io < 0:
		return nil, errors.New("no column Replica_IO_Running")
	case sql < 0:
		return nil, errors.New("no column Replica_SQL_Running")
	case lag < 0:
		return nil, errors.New("no column Seconds_Behind_Source")
	}
	var reps []replica
	for _, row := range rs.rows {
		rep := replica{io: string(row[io]), sql: string(row[sql])}
		// NULL while a thread is stopped. Servers have reported 2^64-1
		// for broken replication; that, a negative value or one past
		// maxLag cannot be a real lag: unknown, never "no lag".
		if s, err := strconv.ParseUint(string(row[lag]), 10, 64); row[lag] != nil && err == nil && s <= uint64(maxLag/time.Second) {
			rep.lag, rep.lagKnown = time.Duration(s)*time.Second, true
		}
		reps = append(reps, rep)
	}
	return reps, nil
}

// describe returns err's text without the wrappers' prefixes: the server's
// "ERROR 1045 (28000): …", or the system call's "connection refused".
func describe(err error) string {
	var me *mysql.MyError
	if errors.As(err, &me) {
		return me.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.Error()
	}
	return err.Error()
}
