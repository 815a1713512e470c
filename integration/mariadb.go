// Package integration runs hamr end to end against real MariaDB servers.
//
// The harness in this file starts a primary and GTID replicas of the
// distribution's mariadbd on 127.0.0.1, each in its own data directory,
// and stops them again. The tests in this package use it through Start;
// the demo (scripts/demo.sh) uses it through cmd/topology.
//
//	topo := integration.Start(t, integration.Options{})
//	db, err := sql.Open("mysql", topo.DSN(0)) // the primary
package integration

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"golang.org/x/sync/errgroup"
)

// Accounts created on every server. The application account can do
// everything; the monitoring account has no password and may only read
// replication state, which is what hamr's health checks need.
const (
	AppUser      = "app"
	AppPassword  = "app"
	MonitorUser  = "hamr_mon"
	replUser     = "repl"
	replPassword = "repl"
)

// Options says how to start a topology. The zero value starts a primary and
// two replicas on free ports in a new temporary directory.
type Options struct {
	// Dir holds one data directory per server. Default: a new directory
	// under os.TempDir(), removed by Stop. A given Dir is kept.
	Dir string
	// Ports are the servers' ports, primary first. Default: free ports
	// chosen at start. When set, its length is the number of servers.
	Ports []int
	// Replicas is the number of replicas when Ports is empty. Default 2.
	Replicas int
	// ServerArgs are extra mariadbd options for every server, such as
	// "--max-connect-errors=2".
	ServerArgs []string
	// StartTimeout bounds the whole start. Default 60s.
	StartTimeout time.Duration
}

// Topology is a running primary (server 0) with replicas (servers 1..n).
type Topology struct {
	Dir     string
	Servers []*Server

	removeDir bool
}

// Server is one mariadbd process.
type Server struct {
	Index   int
	Port    int
	DataDir string
	TmpDir  string // the server's own tmpdir (see install)
	Socket  string
	PIDFile string
	LogFile string // the server's error log

	args    []string
	primary int // port of the server it replicates from; 0 for the primary

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// MariaDBPath returns the path of mariadbd, which Debian installs in
// /usr/sbin (not in every user's PATH).
func MariaDBPath() (string, error) {
	if p, err := exec.LookPath("mariadbd"); err == nil {
		return p, nil
	}
	const p = "/usr/sbin/mariadbd"
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("mariadbd not found in PATH or at %s (install mariadb-server)", p)
	}
	return p, nil
}

// Start starts a topology for a test and stops it when the test ends.
func Start(t testing.TB, opt Options) *Topology {
	t.Helper()
	topo, err := StartTopology(context.Background(), opt)
	if err != nil {
		t.Fatalf("start MariaDB topology: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range topo.Servers {
				t.Logf("server %d (port %d) error log:\n%s", s.Index, s.Port, tailFile(s.LogFile, 30))
			}
		}
		if err := topo.Stop(); err != nil {
			t.Errorf("stop MariaDB topology: %v", err)
		}
	})
	return topo
}

// StartTopology initialises and starts the servers in parallel, creates the
// accounts, and attaches the replicas to the primary with GTID. On error,
// everything already started is stopped.
func StartTopology(ctx context.Context, opt Options) (_ *Topology, err error) {
	if opt.StartTimeout == 0 {
		opt.StartTimeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opt.StartTimeout)
	defer cancel()

	mariadbd, err := MariaDBPath()
	if err != nil {
		return nil, err
	}
	ports := opt.Ports
	if len(ports) == 0 {
		n := opt.Replicas
		if n == 0 {
			n = 2
		}
		if ports, err = FreePorts(n + 1); err != nil {
			return nil, err
		}
	}
	topo := &Topology{Dir: opt.Dir}
	if topo.Dir == "" {
		// Not t.TempDir: a socket path must stay under 108 bytes.
		if topo.Dir, err = os.MkdirTemp("", "hamr-it-"); err != nil {
			return nil, fmt.Errorf("create topology directory: %w", err)
		}
		topo.removeDir = true
	} else if err := os.MkdirAll(topo.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create topology directory: %w", err)
	}
	defer func() {
		if err != nil {
			topo.Stop()
		}
	}()

	for i, port := range ports {
		dir := filepath.Join(topo.Dir, fmt.Sprintf("s%d", i))
		s := &Server{
			Index:   i,
			Port:    port,
			DataDir: filepath.Join(dir, "data"),
			TmpDir:  filepath.Join(dir, "tmp"),
			Socket:  filepath.Join(dir, "mariadb.sock"),
			PIDFile: filepath.Join(dir, "mariadbd.pid"),
			LogFile: filepath.Join(dir, "error.log"),
		}
		if i > 0 {
			s.primary = ports[0]
		}
		s.args = append([]string{
			"--no-defaults",
			"--datadir=" + s.DataDir,
			"--tmpdir=" + s.TmpDir,
			"--port=" + strconv.Itoa(port),
			"--bind-address=127.0.0.1",
			"--socket=" + s.Socket,
			"--pid-file=" + s.PIDFile,
			"--log-error=" + s.LogFile,
			"--server-id=" + strconv.Itoa(i+1),
			"--log-bin=mariadb-bin",
			"--gtid-strict-mode=ON",
			"--log-slave-updates=ON",
			"--performance-schema=OFF",
			"--innodb-buffer-pool-size=16M",
			"--innodb-log-file-size=4M",
			"--innodb-flush-log-at-trx-commit=2",
			"--sync-binlog=0",
		}, opt.ServerArgs...)
		if os.Geteuid() == 0 {
			s.args = append(s.args, "--user=root")
		}
		topo.Servers = append(topo.Servers, s)
	}

	// One mariadb-install-db (0.5 s), copied for the others: concurrent
	// installs are no faster on two cores and occasionally fail.
	if err := topo.Servers[0].install(ctx); err != nil {
		return nil, err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range topo.Servers {
		g.Go(func() error {
			if s.Index > 0 {
				if err := copyDir(s.DataDir, topo.Servers[0].DataDir); err != nil {
					return fmt.Errorf("server %d: %w", s.Index, err)
				}
			}
			if err := s.start(gctx, mariadbd); err != nil {
				return err
			}
			return s.setUp(gctx)
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return topo, nil
}

// install creates the server's data directory with the system tables.
// mariadb-install-db finds mariadbd itself (under its --basedir, /usr).
func (s *Server) install(ctx context.Context) error {
	if err := os.MkdirAll(s.TmpDir, 0o755); err != nil {
		return fmt.Errorf("server %d: %w", s.Index, err)
	}
	// Its own tmpdir: in the shared /tmp, a bootstrap running beside
	// another test package's MariaDB once failed to delete its own
	// temporary table file ("Error on delete of '/tmp/#sql-temptable-…'").
	args := []string{
		"--no-defaults",
		"--datadir=" + s.DataDir,
		"--tmpdir=" + s.TmpDir,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--innodb-log-file-size=4M",
		"--innodb-buffer-pool-size=16M",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	cmd := exec.CommandContext(ctx, "mariadb-install-db", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("server %d: mariadb-install-db: %w\n%s", s.Index, err, firstLines(out, 10))
	}
	return nil
}

// start runs mariadbd and waits until root can log in over the socket.
func (s *Server) start(ctx context.Context, mariadbd string) error {
	if err := os.MkdirAll(s.TmpDir, 0o755); err != nil {
		return fmt.Errorf("server %d: %w", s.Index, err)
	}
	s.mu.Lock()
	cmd := exec.Command(mariadbd, s.args...)
	// If the test binary dies without cleaning up, take the server with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("server %d: start mariadbd: %w", s.Index, err)
	}
	done := make(chan struct{})
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	go func() {
		cmd.Wait()
		close(done)
	}()

	db, err := s.rootDB()
	if err != nil {
		return err
	}
	defer db.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := db.PingContext(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("server %d (port %d) exited during start-up: %v\n%s",
				s.Index, s.Port, cmd.ProcessState, tailFile(s.LogFile, 20))
		case <-ctx.Done():
			return fmt.Errorf("server %d (port %d) not ready: %w (last error: %v)\n%s",
				s.Index, s.Port, ctx.Err(), err, tailFile(s.LogFile, 20))
		case <-tick.C:
		}
	}
}

// setUp creates the accounts without writing them to the binary log (every
// server gets its own, so GTIDs stay the primary's alone), then attaches a
// replica to the primary.
func (s *Server) setUp(ctx context.Context) error {
	stmts := []string{
		"SET SESSION sql_log_bin = 0",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", AppUser, AppPassword),
		fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO '%s'@'%%' WITH GRANT OPTION", AppUser),
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", replUser, replPassword),
		fmt.Sprintf("GRANT REPLICATION SLAVE ON *.* TO '%s'@'%%'", replUser),
		fmt.Sprintf("CREATE USER '%s'@'%%'", MonitorUser),
		// MariaDB 10.5.9+ needs SLAVE MONITOR (alias REPLICA MONITOR)
		// for SHOW SLAVE STATUS; @@read_only needs nothing.
		fmt.Sprintf("GRANT SLAVE MONITOR ON *.* TO '%s'@'%%'", MonitorUser),
	}
	if s.primary != 0 {
		stmts = append(stmts, s.attachStatements()...)
	}
	return s.execAll(ctx, stmts)
}

func (s *Server) attachStatements() []string {
	return []string{
		fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='%s', "+
			"MASTER_PASSWORD='%s', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
			s.primary, replUser, replPassword),
		"START SLAVE",
		"SET GLOBAL read_only = ON",
	}
}

// rootDB opens root over the server's socket: it works whatever the
// server thinks of 127.0.0.1 (a blocked host, say).
func (s *Server) rootDB() (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "unix"
	cfg.Addr = s.Socket
	cfg.Timeout = 2 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("server %d: %w", s.Index, err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1) // session settings such as sql_log_bin must stick
	return db, nil
}

func (s *Server) execAll(ctx context.Context, stmts []string) error {
	db, err := s.rootDB()
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("server %d: connect: %w", s.Index, err)
	}
	defer conn.Close()
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("server %d: %s: %w", s.Index, q, err)
		}
	}
	return nil
}

// Primary returns server 0.
func (t *Topology) Primary() *Server { return t.Servers[0] }

// Ports returns the servers' ports, primary first.
func (t *Topology) Ports() []int {
	ports := make([]int, len(t.Servers))
	for i, s := range t.Servers {
		ports[i] = s.Port
	}
	return ports
}

// Addr returns server i's address, 127.0.0.1:PORT.
func (t *Topology) Addr(i int) string { return Addr(t.Servers[i].Port) }

// DSN returns a go-sql-driver DSN for the application account on server i.
func (t *Topology) DSN(i int) string { return AppDSN(t.Addr(i)) }

// Addr returns 127.0.0.1:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// AppDSN returns a go-sql-driver DSN for the application account at addr
// (a server or a hamr route).
func AppDSN(addr string) string {
	cfg := mysql.NewConfig()
	cfg.User = AppUser
	cfg.Passwd = AppPassword
	cfg.Net = "tcp"
	cfg.Addr = addr
	cfg.Timeout = 5 * time.Second
	return cfg.FormatDSN()
}

// Exec runs statements on server i as root over its socket, in one session.
func (t *Topology) Exec(ctx context.Context, i int, stmts ...string) error {
	return t.Servers[i].execAll(ctx, stmts)
}

// QueryValue runs a query returning one value on server i as root over its
// socket.
func (t *Topology) QueryValue(ctx context.Context, i int, query string) (string, error) {
	db, err := t.Servers[i].rootDB()
	if err != nil {
		return "", err
	}
	defer db.Close()
	var v sql.NullString
	if err := db.QueryRowContext(ctx, query).Scan(&v); err != nil {
		return "", fmt.Errorf("server %d: %s: %w", i, query, err)
	}
	return v.String, nil
}

// GlobalStatus returns the status variable name (such as Aborted_connects)
// of server i.
func (t *Topology) GlobalStatus(ctx context.Context, i int, name string) (int64, error) {
	db, err := t.Servers[i].rootDB()
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var v int64
	q := "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?"
	if err := db.QueryRowContext(ctx, q, strings.ToUpper(name)).Scan(&v); err != nil {
		return 0, fmt.Errorf("server %d: status %s: %w", i, name, err)
	}
	return v, nil
}

// ReplicaStatus is the part of SHOW SLAVE STATUS the tests look at.
type ReplicaStatus struct {
	IORunning  string // Yes, No, Connecting
	SQLRunning string // Yes, No
	GTIDPos    string // Gtid_IO_Pos
}

// ReplicaStatus reads SHOW SLAVE STATUS on server i.
func (t *Topology) ReplicaStatus(ctx context.Context, i int) (ReplicaStatus, error) {
	var st ReplicaStatus
	db, err := t.Servers[i].rootDB()
	if err != nil {
		return st, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return st, fmt.Errorf("server %d: SHOW SLAVE STATUS: %w", i, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return st, fmt.Errorf("server %d: SHOW SLAVE STATUS: %w", i, err)
	}
	if !rows.Next() {
		return st, fmt.Errorf("server %d: not a replica", i)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for j := range vals {
		ptrs[j] = &vals[j]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return st, fmt.Errorf("server %d: SHOW SLAVE STATUS: %w", i, err)
	}
	for j, c := range cols {
		switch c {
		case "Slave_IO_Running":
			st.IORunning = vals[j].String
		case "Slave_SQL_Running":
			st.SQLRunning = vals[j].String
		case "Gtid_IO_Pos":
			st.GTIDPos = vals[j].String
		}
	}
	return st, rows.Err()
}

// WaitReplicating waits until every running replica has both threads
// running and has applied everything the primary has binlogged.
func (t *Topology) WaitReplicating(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pos, err := t.QueryValue(ctx, 0, "SELECT @@gtid_binlog_pos")
	if err != nil {
		return err
	}
	for _, s := range t.Servers[1:] {
		var last string
		for {
			st, err := t.ReplicaStatus(ctx, s.Index)
			var applied string
			if err == nil {
				applied, err = t.QueryValue(ctx, s.Index, "SELECT @@gtid_slave_pos")
			}
			if err == nil && st.IORunning == "Yes" && st.SQLRunning == "Yes" && applied == pos {
				break
			}
			last = fmt.Sprintf("io=%s sql=%s applied=%q primary=%q err=%v", st.IORunning, st.SQLRunning, applied, pos, err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("server %d not replicating: %s", s.Index, last)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// PID returns server i's process id, or 0 when it is not running.
func (t *Topology) PID(i int) int {
	s := t.Servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	select {
	case <-s.done:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

// Kill sends SIGKILL to server i and waits until it has exited.
func (t *Topology) Kill(i int) error {
	return t.Servers[i].stop(syscall.SIGKILL, 10*time.Second)
}

// Restart starts server i again with the same data directory, port and
// options, and puts it back as it was started: a replica is read-only and
// replicating again (its replication settings are in its data directory).
func (t *Topology) Restart(ctx context.Context, i int) error {
	s := t.Servers[i]
	if err := s.stop(syscall.SIGTERM, 30*time.Second); err != nil {
		return err
	}
	mariadbd, err := MariaDBPath()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.start(ctx, mariadbd); err != nil {
		return err
	}
	if s.primary == 0 {
		return nil
	}
	// Replication restarts by itself; only read_only is not persistent.
	return s.execAll(ctx, []string{"START SLAVE", "SET GLOBAL read_only = ON"})
}

// Stop stops every server (SIGTERM, then SIGKILL after 30 s) and removes
// the directory if Start created it. It is safe to call more than once.
func (t *Topology) Stop() error {
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, s := range t.Servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.stop(syscall.SIGTERM, 30*time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.removeDir {
		if err := os.RemoveAll(t.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", t.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// stop signals the server's process (by PID) and waits for it to exit,
// escalating to SIGKILL after grace. A server that is not running is not
// an error.
func (s *Server) stop(sig syscall.Signal, grace time.Duration) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("server %d: signal %v: %w", s.Index, sig, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("server %d: kill: %w", s.Index, err)
	}
	select {
	case <-done:
		return fmt.Errorf("server %d did not stop within %v of %v; killed", s.Index, grace, sig)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("server %d (pid %d) did not exit after SIGKILL", s.Index, cmd.Process.Pid)
	}
}

// Done returns a channel closed when server i's current process exits.
func (t *Topology) Done(i int) <-chan struct{} {
	s := t.Servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a
// moment ago.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tailFile(name string, n int) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return err.Error()
	}
	return lastLines(b, n)
}

func firstLines(b []byte, n int) string {
	lines := bytes.SplitN(b, []byte("\n"), n+1)
	return string(bytes.Join(lines[:min(n, len(lines))], []byte("\n")))
}

// copyDir copies the regular files and directories of the tree src to dst,
// which must not exist.
func copyDir(dst, src string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case d.Type().IsRegular():
			return copyFile(target, path, info.Mode().Perm())
		}
		return nil // sockets, pid files: not part of an installed data directory
	})
}

func copyFile(dst, src string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// String describes the topology for logs: one line per server.
func (t *Topology) String() string {
	var b strings.Builder
	for _, s := range t.Servers {
		role := "primary"
		if s.primary != 0 {
			role = "replica"
		}
		fmt.Fprintf(&b, "server %d: %s 127.0.0.1:%d pid-file %s socket %s\n", s.Index, role, s.Port, s.PIDFile, s.Socket)
	}
	return b.String()
}
