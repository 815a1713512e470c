package health

import (
	"errors"
	"fmt"
	"net"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

// The role check reads its result sets itself rather than with go-mysql's
// Execute, which allocates as many columns as the server announces before
// it reads any: a destination answering a column count of 2^37 in nine
// bytes would take the router down with an out-of-memory error that no
// recover catches. A check reads at most these; its queries return one
// column (the variables) or about sixty (SHOW REPLICA STATUS).
const (
	maxColumns    = 512
	maxRows       = 64      // replication channels
	maxCheckBytes = 4 << 20 // everything one check reads from a destination
)

var (
	errTooLarge  = errors.New("answer too large")
	errMalformed = errors.New("malformed packet")
)

// resultSet is a text-protocol result set: column names, and rows of
// values (nil for NULL).
type resultSet struct {
	names []string
	rows  [][][]byte
}

// index returns the column of the first of names present, or -1.
func (rs *resultSet) index(names ...string) int {
	for _, n := range names {
		for i, have := range rs.names {
			if have == n {
				return i
			}
		}
	}
	return -1
}

// noEOFDeprecation is the client option under which query parses
// results: the server ends the column definitions and the rows with EOF
// packets.
func noEOFDeprecation(c *client.Conn) error {
	c.UnsetCapability(mysql.CLIENT_DEPRECATE_EOF)
	return nil
}

// query runs q with COM_QUERY on mc, which must have been opened with
// noEOFDeprecation, and reads its result set.
func query(mc *client.Conn, q string) (*resultSet, error) {
	mc.ResetSequence()
	if err := mc.WritePacket(append([]byte{0, 0, 0, 0, mysql.COM_QUERY}, q...)); err != nil {
		return nil, err
	}
	data, err := mc.ReadPacket()
	if err != nil {
		return nil, err
	}
	switch {
	case len(data) == 0:
		return nil, errMalformed
	case data[0] == mysql.ERR_HEADER:
		return nil, errPacket(mc, data)
	case data[0] == mysql.OK_HEADER:
		return nil, errors.New("no result set")
	}
	n, null, used, ok := lenencInt(data)
	if !ok || null || used != len(data) || n == 0 {
		return nil, fmt.Errorf("result set header: %w", errMalformed)
	}
	if n > maxColumns {
		return nil, fmt.Errorf("%d columns: %w", n, errTooLarge)
	}
	rs := &resultSet{names: make([]string, n)}
	for i := range rs.names {
		if data, err = mc.ReadPacket(); err != nil {
			return nil, err
		}
		if rs.names[i], err = columnName(data); err != nil {
			return nil, err
		}
	}
	if data, err = mc.ReadPacket(); err != nil {
		return nil, err
	}
	if !isEOF(data) {
		return nil, fmt.Errorf("after the columns: %w", errMalformed)
	}
	for {
		if data, err = mc.ReadPacket(); err != nil {
			return nil, err
		}
		switch {
		case isEOF(data):
			return rs, nil
		case len(data) > 0 && data[0] == mysql.ERR_HEADER:
			return nil, errPacket(mc, data)
		case len(rs.rows) == maxRows:
			return nil, fmt.Errorf("more than %d rows: %w", maxRows, errTooLarge)
		}
		row, err := parseRow(data, len(rs.names))
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", len(rs.rows)+1, err)
		}
		rs.rows = append(rs.rows, row)
	}
}

// errPacket decodes an ERR packet; go-mysql's decoder indexes past the end
// of a short one.
func errPacket(mc *client.Conn, data []byte) error {
	if len(data) < 3 {
		return fmt.Errorf("error packet: %w", errMalformed)
	}
	return mc.HandleErrorPacket(data)
}

// parseRow splits a text-protocol row of n columns into its values, nil
// for NULL.
func parseRow(data []byte, n int) ([][]byte, error) {
	row := make([][]byte, n)
	for i := range row {
		v, null, used, ok := lenencString(data)
		if !ok {
			return nil, errMalformed
		}
		if !null {
			row[i] = v
		}
		data = data[used:]
	}
	return row, nil
}

func isEOF(data []byte) bool { return len(data) > 0 && len(data) < 9 && data[0] == mysql.EOF_HEADER }

// columnName returns the name in a Protocol::ColumnDefinition41 packet:
// the fifth length-encoded string, after catalog, schema, table and
// org_table.
func columnName(data []byte) (string, error) {
	for range 4 {
		_, _, used, ok := lenencString(data)
		if !ok {
			return "", fmt.Errorf("column definition: %w", errMalformed)
		}
		data = data[used:]
	}
	name, null, _, ok := lenencString(data)
	if !ok || null {
		return "", fmt.Errorf("column definition: %w", errMalformed)
	}
	return string(name), nil
}

// lenencInt reads a length-encoded integer at the start of b; ok is false
// if b is too short for it. (go-mysql's LengthEncodedInt and
// LengthEncodedString index past the end of a short packet.)
func lenencInt(b []byte) (v uint64, null bool, used int, ok bool) {
	if len(b) == 0 {
		return 0, false, 0, false
	}
	size := 0
	switch b[0] {
	case 0xfb:
		return 0, true, 1, true
	case 0xfc:
		size = 2
	case 0xfd:
		size = 3
	case 0xfe:
		size = 8
	case 0xff:
		return 0, false, 0, false
	default:
		return uint64(b[0]), false, 1, true
	}
	if len(b) < 1+size {
		return 0, false, 0, false
	}
	for i := size; i >= 1; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v, false, 1 + size, true
}

// lenencString reads a length-encoded string at the start of b.
func lenencString(b []byte) (s []byte, null bool, used int, ok bool) {
	n, null, used, ok := lenencInt(b)
	if !ok || null {
		return nil, null, used, ok
	}
	if n > uint64(len(b)-used) {
		return nil, false, 0, false
	}
	end := used + int(n)
	return b[used:end], false, end, true
}

// limitedConn fails reads once a check has read maxCheckBytes: a server
// that keeps sending cannot make the check buffer without end.
type limitedConn struct {
	net.Conn
	left int
}

func (c *limitedConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, fmt.Errorf("more than %d bytes: %w", maxCheckBytes, errTooLarge)
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= n
	return n, err
}
