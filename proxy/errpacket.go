package proxy

import "github.com/go-mysql-org/go-mysql/mysql"

// maxErrMsg is the longest message a MySQL client keeps (MYSQL_ERRMSG_SIZE).
const maxErrMsg = 512

// errPacket returns a MySQL ERR packet to be written as a server's first
// packet (sequence id 0): the 4-byte header, 0xff, the error code
// (little-endian) and the message.
//
// There is no '#' + SQLSTATE marker: before the handshake the client has
// not negotiated CLIENT_PROTOCOL_41, so a server leaves it out (as MySQL
// does for 1040 or 1129 at connect), and libmysqlclient would otherwise
// print the marker as part of the message.
func errPacket(code uint16, msg string) []byte {
	if len(msg) > maxErrMsg {
		msg = msg[:maxErrMsg]
	}
	n := 1 + 2 + len(msg)
	b := make([]byte, 0, 4+n)
	b = append(b, byte(n), byte(n>>8), byte(n>>16), 0)
	b = append(b, mysql.ERR_HEADER, byte(code), byte(code>>8))
	return append(b, msg...)
}
