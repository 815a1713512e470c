package proxy

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"log"
	"net"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
	"github.com/go-sql-driver/mysql"
	"github.com/hamr-project/hamr/internal/loopback"
	"github.com/hamr-project/hamr/routing"
)

func init() {
	// go-sql-driver logs a line for every connection the proxy refuses.
	mysql.SetLogger(log.New(io.Discard, "", 0))
}

func TestErrPacket(t *testing.T) {
	got := errPacket(1040, "Too many connections")
	want := append([]byte{23, 0, 0, 0, 0xff, 0x10, 0x04}, "Too many connections"...)
	if !bytes.Equal(got, want) {
		t.Errorf("errPacket(1040) =\n%q, want\n%q", got, want)
	}
	got = errPacket(1105, "x")
	want = []byte{4, 0, 0, 0, 0xff, 0x51, 0x04, 'x'}
	if !bytes.Equal(got, want) {
		t.Errorf("errPacket(1105) =\n%q, want\n%q", got, want)
	}
	long := errPacket(1105, string(make([]byte, 10000)))
	if n := int(long[0]) | int(long[1])<<8 | int(long[2])<<16; n != len(long)-4 || n != 3+maxErrMsg {
		t.Errorf("long message: header length %d, packet %d bytes", n, len(long))
	}
}

// fakeMySQL is a go-mysql server handler that answers SELECT 1.
type fakeMySQL struct{ server.EmptyHandler }

func (fakeMySQL) HandleQuery(q string) (*gomysql.Result, error) {
	if q != "SELECT 1" {
		return nil, gomysql.NewError(gomysql.ER_UNKNOWN_ERROR, "fake server only knows SELECT 1")
	}
	rs, err := gomysql.BuildSimpleResultset([]string{"1"}, [][]any{{1}}, false)
	if err != nil {
		return nil, err
	}
	return gomysql.NewResult(rs), nil
}

// newMySQLBackend starts a fake MySQL server (go-mysql's server package)
// on 127.0.0.1 with user hamr and no password (caching_sha2_password's full
// authentication would need TLS or an RSA key).
func newMySQLBackend(t testing.TB) *backend {
	srv := server.NewServer("8.0.11", gomysql.DEFAULT_COLLATION_ID, gomysql.AUTH_NATIVE_PASSWORD, nil, nil)
	return newBackend(t, func(c net.Conn) {
		conn, err := srv.NewConn(c, "hamr", "", fakeMySQL{})
		if err != nil {
			return
		}
		for !conn.Closed() {
			if err := conn.HandleCommand(); err != nil {
				return
			}
		}
	})
}

// mysqlConnect opens a one-connection pool to addr with go-sql-driver and
// pings. The caller closes the pool.
func mysqlConnect(t testing.TB, addr string) (*sql.DB, error) {
	t.Helper()
	cfg := mysql.NewConfig()
	cfg.User = "hamr"
	cfg.Net, cfg.Addr = "tcp", addr
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	cn, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(cn)
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return db, db.PingContext(ctx)
}

// wantMySQLError connects a MySQL client to addr and checks the error it
// reports.
func wantMySQLError(t *testing.T, addr string, num uint16, msg string) {
	t.Helper()
	db, err := mysqlConnect(t, addr)
	db.Close()
	if err == nil {
		t.Fatal("connected, want a MySQL error")
	}
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		t.Fatalf("error %v (%T), want a *mysql.MySQLError", err, err)
	}
	if me.Number != num || me.Message != msg {
		t.Fatalf("got error %d %q, want %d %q", me.Number, me.Message, num, msg)
	}
}

func TestMySQLClientFailover(t *testing.T) {
	be := newMySQLBackend(t)
	rt := newRouting(t, routing.FirstAvailable, loopback.Refused(t), be.addr())
	p := startRoute(t, Config{Name: "rw", ReadWrite: true}, rt, Options{})
	db, err := mysqlConnect(t, p.Addr())
	defer db.Close()
	if err != nil {
		t.Fatalf("client saw the failed primary: %v", err)
	}
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
	if rt.Primary() != 1 {
		t.Errorf("primary = %d, want 1", rt.Primary())
	}
}

func TestNoDestinationError(t *testing.T) {
	const msg = "hamr: no destination available for route rw"
	t.Run("all dials fail", func(t *testing.T) {
		rt := newRouting(t, routing.FirstAvailable, loopback.Refused(t), loopback.Refused(t))
		p := startRoute(t, Config{Name: "rw", ReadWrite: true}, rt, Options{})
		wantMySQLError(t, p.Addr(), 1105, msg)
		if rt.Available() {
			t.Error("route still available after every dial failed")
		}
	})
	t.Run("all down", func(t *testing.T) {
		be := newMySQLBackend(t)
		rt := newRouting(t, routing.RoundRobin, be.addr())
		rt.SetUp(0, false)
		p := startRoute(t, Config{Name: "rw"}, rt, Options{})
		wantMySQLError(t, p.Addr(), 1105, msg)
	})
}

func TestMaxConnectionsError(t *testing.T) {
	be := newMySQLBackend(t)
	rt := newRouting(t, routing.FirstAvailable, be.addr())
	p := startRoute(t, Config{Name: "rw", MaxConnections: 1}, rt, Options{})
	first, err := mysqlConnect(t, p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	wantMySQLError(t, p.Addr(), 1040, "Too many connections")
	first.Close()
	eventually(t, "a free slot", func() bool {
		db, err := mysqlConnect(t, p.Addr())
		db.Close()
		return err == nil
	})
}
