package health

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// fakeReplica is one row of the fake's SHOW REPLICA STATUS.
type fakeReplica struct {
	io, sql string
	lag     any // int64 seconds (uint64: an unsigned column), or nil for NULL
}

// fakeState is what the fake MySQL server answers.
type fakeState struct {
	readOnly      bool
	readOnlyNull  bool  // @@read_only answers NULL
	superReadOnly *bool // nil: unknown variable, as on MariaDB
	legacy        bool  // SHOW REPLICA STATUS is a syntax error; Slave_* columns
	replicas      []fakeReplica
}

// fakeDB is a MySQL server on 127.0.0.1 built on go-mysql's server package.
// It answers the role check's queries from its state, which tests change
// with set, and counts the connections that ended with COM_QUIT.
type fakeDB struct {
	addr   string
	ln     net.Listener
	srv    *server.Server
	plugin string
	users  map[string]string

	mu    sync.Mutex
	state fakeState
	conns map[net.Conn]bool
	wg    sync.WaitGroup

	quits  atomic.Int64 // sessions the client ended with COM_QUIT
	closed atomic.Int64 // sessions ended for any reason
}

// newFakeDB starts a fake whose users (name: password) authenticate with
// plugin (mysql_native_password when srv is nil).
func newFakeDB(t *testing.T, srv *server.Server, plugin string, users map[string]string) *fakeDB {
	t.Helper()
	if srv == nil {
		srv = server.NewServer("8.0.11-fake", mysql.DEFAULT_COLLATION_ID, mysql.AUTH_NATIVE_PASSWORD, nil, nil)
		plugin = mysql.AUTH_NATIVE_PASSWORD
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDB{addr: ln.Addr().String(), ln: ln, srv: srv, plugin: plugin, users: users, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeDB) set(fn func(*fakeState)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.state)
}

func (f *fakeDB) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeDB) serve() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns[nc] = true
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.session(nc)
			nc.Close()
			f.mu.Lock()
			delete(f.conns, nc)
			f.mu.Unlock()
			f.closed.Add(1)
		}()
	}
}

func (f *fakeDB) session(nc net.Conn) {
	tc := &tailConn{Conn: nc}
	auth := server.NewInMemoryAuthenticationHandler(f.plugin)
	for u, p := range f.users {
		if err := auth.AddUser(u, p); err != nil {
			return
		}
	}
	c, err := f.srv.NewCustomizedConn(tc, auth, fakeHandler{f})
	if err != nil {
		return
	}
	for c.HandleCommand() == nil {
	}
	if bytes.HasSuffix(tc.tail, comQuit) {
		f.quits.Add(1)
	}
}

// comQuit is the COM_QUIT packet: length 1, sequence 0, command 0x01.
var comQuit = []byte{1, 0, 0, 0, mysql.COM_QUIT}

// tailConn remembers the last bytes read from the client.
type tailConn struct {
	net.Conn
	tail []byte
}

func (c *tailConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.tail = append(c.tail, p[:n]...)
	if len(c.tail) > 16 {
		c.tail = c.tail[len(c.tail)-16:]
	}
	return n, err
}

type fakeHandler struct{ f *fakeDB }

func (h fakeHandler) HandleQuery(q string) (*mysql.Result, error) {
	h.f.mu.Lock()
	st := h.f.state
	h.f.mu.Unlock()
	switch strings.ToUpper(q) {
	case strings.ToUpper(queryReadOnly):
		if st.readOnlyNull {
			return textResult([]string{q}, []byte{mysql.MYSQL_TYPE_LONGLONG}, [][]any{{nil}})
		}
		return oneInt(q, st.readOnly)
	case strings.ToUpper(querySuperReadOnly):
		if st.superReadOnly == nil {
			return nil, mysql.NewError(erUnknownSystemVariable, "Unknown system variable 'super_read_only'")
		}
		return oneInt(q, *st.superReadOnly)
	case queryReplicaStatus:
		if st.legacy {
			return nil, mysql.NewError(erParseError, "You have an error in your SQL syntax")
		}
		return replicaStatus(st, []string{"Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source"})
	case queryReplicaStatusLegacy:
		return replicaStatus(st, []string{"Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master"})
	}
	return nil, mysql.NewError(erParseError, "fake: unexpected query "+q)
}

func oneInt(name string, v bool) (*mysql.Result, error) {
	var n int64
	if v {
		n = 1
	}
	return textResult([]string{name}, []byte{mysql.MYSQL_TYPE_LONGLONG}, [][]any{{n}})
}

func replicaStatus(st fakeState, names []string) (*mysql.Result, error) {
	var rows [][]any
	for _, r := range st.replicas {
		rows = append(rows, []any{r.io, r.sql, r.lag})
	}
	types := []byte{mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_LONGLONG}
	res, err := textResult(names, types, rows)
	for _, r := range st.replicas {
		if _, ok := r.lag.(uint64); ok && err == nil { // sent as an unsigned column
			res.Fields[2].Flag |= mysql.UNSIGNED_FLAG
		}
	}
	return res, err
}

// textResult builds a text-protocol result set. It does not use
// mysql.BuildSimpleTextResultset: that takes a Resultset from go-mysql's
// pool without clearing its Fields, and in a process that is also a client
// (this test) it reuses the client's stale fields.
func textResult(names []string, types []byte, rows [][]any) (*mysql.Result, error) {
	rs := &mysql.Resultset{FieldNames: map[string]int{}}
	for i, n := range names {
		rs.Fields = append(rs.Fields, &mysql.Field{Name: []byte(n), Type: types[i], Charset: 33})
		rs.FieldNames[n] = i
	}
	for _, row := range rows {
		var b []byte
		for _, v := range row {
			if v == nil {
				b = append(b, 0xfb) // NULL
				continue
			}
			s, err := mysql.FormatTextValue(v)
			if err != nil {
				return nil, err
			}
			b = append(b, mysql.PutLengthEncodedString(s)...)
		}
		rs.RowDatas = append(rs.RowDatas, b)
	}
	return &mysql.Result{Resultset: rs}, nil
}

var errUnsupported = errors.New("fake: unsupported")

func (fakeHandler) UseDB(string) error { return nil }
func (fakeHandler) HandleFieldList(string, string) ([]*mysql.Field, error) {
	return nil, errUnsupported
}
func (fakeHandler) HandleStmtPrepare(string) (int, int, any, error) {
	return 0, 0, nil, errUnsupported
}
func (fakeHandler) HandleStmtExecute(any, string, []any) (*mysql.Result, error) {
	return nil, errUnsupported
}
func (fakeHandler) HandleStmtClose(any) error             { return nil }
func (fakeHandler) HandleOtherCommand(byte, []byte) error { return errUnsupported }

// hungServer accepts connections on 127.0.0.1 and never writes a byte. It
// counts the connections it accepted and those the client closed.
type hungServer struct {
	addr     string
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
	accepted atomic.Int64
	closed   atomic.Int64
}

func newHungServer(t *testing.T) *hungServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &hungServer{addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[nc] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				buf := make([]byte, 512)
				for {
					if _, err := nc.Read(buf); err != nil {
						break // EOF: the client closed
					}
				}
				s.mu.Lock()
				delete(s.conns, nc)
				s.mu.Unlock()
				nc.Close()
				s.closed.Add(1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}
