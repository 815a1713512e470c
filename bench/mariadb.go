package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Credentials the suite creates on every MariaDB server it starts.
const (
	dbUser     = "bench"
	dbPassword = "bench"
	// checkUser has no password and no privilege: both proxies' health
	// checks log in as it (HAProxy's mysql-check cannot send a password).
	checkUser = "bench_check"
	dbName    = "sbtest"
)

// mariadb is a MariaDB server the suite runs in its own data directory on a
// loopback port.
type mariadb struct {
	name   string
	dir    string // holds data/, the socket and the pid file
	port   int
	proc   *process
	ramMiB int // innodb buffer pool size
}

func (m *mariadb) addr() string   { return "127.0.0.1:" + strconv.Itoa(m.port) }
func (m *mariadb) socket() string { return filepath.Join(m.dir, "mysqld.sock") }

// installMariaDB creates a fresh data directory in dir/data.
func installMariaDB(dir string) error {
	bin, err := lookPath("mariadb-install-db")
	if err != nil {
		return err
	}
	data, tmp := filepath.Join(dir, "data"), filepath.Join(dir, "tmp")
	for _, d := range []string{data, tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Its own tmpdir, not the /tmp that other MariaDB servers share.
	cmd := exec.Command(bin, "--no-defaults", "--user=root", "--datadir="+data, "--tmpdir="+tmp,
		"--auth-root-authentication-method=socket", "--skip-test-db")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb-install-db: %w: %s", err, lastLines(string(out), 5))
	}
	return nil
}

// copyDatadir clones an installed data directory (faster than installing).
func copyDatadir(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", to, err)
	}
	out, err := exec.Command("cp", "-a", filepath.Join(from, "data"), to).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy datadir: %w: %s", err, out)
	}
	return nil
}

// start runs mariadbd and waits until it answers on its socket.
func (m *mariadb) start() error {
	bin, err := lookPath("mariadbd")
	if err != nil {
		return err
	}
	if m.port == 0 {
		if m.port, err = freePort(); err != nil {
			return err
		}
	}
	if m.ramMiB == 0 {
		m.ramMiB = 256
	}
	tmp := filepath.Join(m.dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	p, err := startProcess(m.name, bin,
		"--no-defaults",
		"--user=root",
		"--datadir="+filepath.Join(m.dir, "data"),
		"--tmpdir="+tmp,
		"--port="+strconv.Itoa(m.port),
		"--bind-address=127.0.0.1",
		"--socket="+m.socket(),
		"--pid-file="+filepath.Join(m.dir, "mariadbd.pid"),
		"--skip-log-bin",
		"--skip-name-resolve",
		fmt.Sprintf("--innodb-buffer-pool-size=%dM", m.ramMiB),
		"--max-connections=2000",
		// TCP health checks connect without logging in; do not let them get
		// the loopback host blocked (error 1129).
		"--max-connect-errors=4294967295",
	)
	if err != nil {
		return err
	}
	m.proc = p
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited at start: %s", m.name, p.tail(600))
		}
		db, err := m.rootDB()
		if err == nil {
			err = db.Ping()
			db.Close()
			if err == nil {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(5 * time.Second)
	return fmt.Errorf("%s did not start within 60s: %s", m.name, p.tail(600))
}

// stop shuts the server down cleanly.
func (m *mariadb) stop() {
	if m.proc != nil {
		m.proc.stop(20 * time.Second)
	}
}

// rootDB connects as root over the unix socket (socket authentication).
func (m *mariadb) rootDB() (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "unix"
	cfg.Addr = m.socket()
	cfg.Timeout = 2 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("connector: %w", err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	return db, nil
}

// setup creates the benchmark user and database.
func (m *mariadb) setup(ctx context.Context) error {
	db, err := m.rootDB()
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + dbName,
		fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s'", dbUser, dbPassword),
		fmt.Sprintf("GRANT ALL ON *.* TO '%s'@'%%'", dbUser),
		fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%'", checkUser),
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %s: %w", m.name, q, err)
		}
	}
	return nil
}

// mysqlConfig is a go-sql-driver configuration for the bench user at addr.
func mysqlConfig(addr string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User = dbUser
	cfg.Passwd = dbPassword
	cfg.Net = "tcp"
	cfg.Addr = addr
	cfg.DBName = dbName
	cfg.Timeout = 2 * time.Second
	cfg.ReadTimeout = 5 * time.Second
	cfg.WriteTimeout = 5 * time.Second
	return cfg
}
