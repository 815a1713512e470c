package proxy

import "github.com/go-mysql-org/go-mysql/mysql"

// maxErrMsg is the longest message a MySQL client keeps (MYSQL_ERRMSG_SIZE).
const maxErrMsg = 512

// errPacket returns a MySQL ERR packet to be written as a server's first
// packet (sequence id 0): the 4-byte header, 0xff, the error code
// (little-endian), '#', the 5-byte SQLSTATE and the message.
func errPacket(code uint16, msg string) []byte {
	state, ok := mysql.MySQLState[code]
	if !ok || len(state) != 5 {
		state = mysql.DEFAULT_MYSQL_STATE
	}
	if len(msg) > maxErrMsg {
		msg = msg[:maxErrMsg]
	}
	n := 1 + 2 + 1 + len(state) + len(msg)
	b := make([]byte, 0, 4+n)
	b = append(b, byte(n), byte(n>>8), byte(n>>16), 0)
	b = append(b, mysql.ERR_HEADER, byte(code), byte(code>>8), '#')
	b = append(b, state...)
	return append(b, msg...)
}
