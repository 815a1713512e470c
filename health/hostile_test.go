package health

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// interceptor relays between a client and the fake server, and answers
// the read_only query itself with the packets answer returns (payloads,
// numbered from sequence 1), so that tests can send what a broken or
// hostile server would.
type interceptor struct {
	addr   string
	answer func() [][]byte
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newInterceptor(t *testing.T, backend string, answer func() [][]byte) *interceptor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ic := &interceptor{addr: ln.Addr().String(), answer: answer, ln: ln}
	ic.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			ic.mu.Lock()
			ic.conns = append(ic.conns, c, s)
			ic.mu.Unlock()
			ic.wg.Go(func() { io.Copy(c, s) })
			ic.wg.Go(func() { ic.relay(c, s) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		ic.mu.Lock()
		for _, c := range ic.conns {
			c.Close()
		}
		ic.mu.Unlock()
		ic.wg.Wait()
	})
	return ic
}

// relay copies the client's packets to the server, but answers the
// read_only query itself.
func (ic *interceptor) relay(c, s net.Conn) {
	defer s.Close()
	defer c.Close()
	hdr := make([]byte, 4)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		payload := make([]byte, int(hdr[0])|int(hdr[1])<<8|int(hdr[2])<<16)
		if _, err := io.ReadFull(c, payload); err != nil {
			return
		}
		if len(payload) > 0 && payload[0] == mysql.COM_QUERY && string(payload[1:]) == queryReadOnly {
			for i, p := range ic.answer() {
				if _, err := c.Write(append(packetHeader(len(p), byte(i+1)), p...)); err != nil {
					return
				}
			}
			continue
		}
		if _, err := s.Write(append(hdr, payload...)); err != nil {
			return
		}
	}
}

func packetHeader(n int, seq byte) []byte {
	return []byte{byte(n), byte(n >> 8), byte(n >> 16), seq}
}

// columnDef is a Protocol::ColumnDefinition41 for a column named name.
func columnDef(name string) []byte {
	var b []byte
	for _, s := range []string{"def", "", "", "", name, ""} {
		b = append(b, mysql.PutLengthEncodedString([]byte(s))...)
	}
	b = append(b, 0x0c, 33, 0, 20, 0, 0, 0, mysql.MYSQL_TYPE_LONGLONG, 0, 0, 0, 0, 0)
	return b
}

var eof = []byte{mysql.EOF_HEADER, 0, 0, 2, 0}

// TestHostileAnswers: whatever a destination answers to the role check's
// queries, the check fails with a reason and the router lives on: no
// panic, no allocation the answer dictates, no read without end.
func TestHostileAnswers(t *testing.T) {
	f := newFakeDB(t, nil, "", map[string]string{"mon": ""})
	huge := make([]byte, 1<<24-1) // one full packet; many make a multi-packet row
	many := func(n int, p []byte) [][]byte {
		out := [][]byte{{1}, columnDef("x"), eof}
		for range n {
			out = append(out, p)
		}
		return append(out, eof)
	}
	for _, tt := range []struct {
		name   string
		answer [][]byte
		reason string
	}{
		{"2^37 columns in nine bytes", [][]byte{{0xfe, 0, 0, 0, 0, 0x20, 0, 0, 0}}, "answer too large"},
		{"endless rows", many(1000, []byte{1, '0'}), "more than 64 rows"},
		{"a row of many megabytes", [][]byte{{1}, columnDef("x"), eof, huge, huge}, "more than 4194304 bytes"},
		{"row shorter than its length", many(1, []byte{9, '1'}), "malformed packet"},
		{"truncated column definition", [][]byte{{1}, {3, 'd'}}, "malformed packet"},
		{"no EOF after the columns", [][]byte{{1}, columnDef("x"), {1, '0'}}, "malformed packet"},
		{"truncated error packet", [][]byte{{0xff}}, "malformed packet"},
		{"LOCAL INFILE request", [][]byte{{0xfb, '/', 'e', 't', 'c'}}, "malformed packet"},
		{"no result set", [][]byte{{0, 0, 0, 2, 0, 0, 0}}, "no result set"},
		{"empty packet", [][]byte{{}}, "malformed packet"},
		{"two rows", many(2, []byte{1, '0'}), "2 rows, want one"},
		{"not an integer", many(1, []byte{2, 'O', 'N'}), `want an integer, got "ON"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ic := newInterceptor(t, f.addr, func() [][]byte { return tt.answer })
			c := NewChecker(Config{Addr: ic.addr, Level: LevelRole, User: "mon", Writer: true, Timeout: 5 * time.Second}, Options{})
			start := time.Now()
			c.checkOnce(context.Background())
			st := c.Status()
			if st.Up || !strings.Contains(st.Reason, "query: read_only: ") || !strings.Contains(st.Reason, tt.reason) {
				t.Errorf("status = %+v, want down with a reason saying %q", st, tt.reason)
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("the check took %v: it waited for its timeout instead of seeing the bad answer", d)
			}
		})
	}
	// The interceptor answers well-formed packets as go-mysql would.
	ok := [][]byte{{1}, columnDef("@@global.read_only"), eof, {1, '0'}, eof}
	ic := newInterceptor(t, f.addr, func() [][]byte { return ok })
	c := NewChecker(Config{Addr: ic.addr, Level: LevelRole, User: "mon", Writer: true}, Options{})
	c.checkOnce(context.Background())
	if st := c.Status(); !st.Up || st.Role != RolePrimary {
		t.Errorf("a well-formed writable answer through the interceptor: %+v, want up as primary", st)
	}
}
