package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is the IP protocol number of VRRP.
const Protocol = 112

// Group is the IPv4 multicast group VRRP adverts are sent to.
var Group = netip.AddrFrom4([4]byte{224, 0, 0, 18})

// Authentication types of VRRPv2 (RFC 3768 section 5.3.6).
const (
	AuthNone = 0 // no authentication
	AuthPass = 1 // simple text password, 8 bytes NUL-padded
)

const (
	headerLen  = 8 // version/type .. checksum
	authLen    = 8 // VRRPv2 authentication data
	typeAdvert = 1
)

// Sentinel decoding errors; a *DecodeError wraps one of them.
var (
	ErrShort    = errors.New("vrrp: packet too short")
	ErrVersion  = errors.New("vrrp: unsupported version")
	ErrType     = errors.New("vrrp: unsupported type")
	ErrChecksum = errors.New("vrrp: bad checksum")
	ErrCount    = errors.New("vrrp: address count does not match length")
)

// Reasons an advert is dropped. They are the values of the reason label of
// hamr_vrrp_adverts_dropped_total and the keys of Status.Dropped.
const (
	ReasonTTL         = "ttl"         // IP TTL is not 255
	ReasonShort       = "short"       // truncated packet
	ReasonVersion     = "version"     // version or type not ours
	ReasonChecksum    = "checksum"    // checksum does not verify
	ReasonCount       = "count"       // count field disagrees with the length
	ReasonAuth        = "auth"        // VRRPv2 authentication mismatch
	ReasonAddresses   = "addresses"   // address list differs from ours
	ReasonOwn         = "own"         // sent by this instance
	ReasonPeer        = "peer"        // unicast mode: not from one of unicast_peers (keepalived with check_unicast_src)
	ReasonDestination = "destination" // multicast mode: not sent to the group; unicast mode: sent to a group
	ReasonInterval    = "interval"    // advert interval invalid or (v2) not ours
)

// A DecodeError tells why a packet is not a valid VRRP advert. Err is one
// of the sentinel errors, Reason the matching Reason* constant.
type DecodeError struct {
	Reason string
	Err    error
	Detail string
}

func (e *DecodeError) Error() string {
	if e.Detail == "" {
		return e.Err.Error()
	}
	return e.Err.Error() + ": " + e.Detail
}

func (e *DecodeError) Unwrap() error { return e.Err }

func decodeErr(reason string, err error, format string, args ...any) error {
	return &DecodeError{Reason: reason, Err: err, Detail: fmt.Sprintf(format, args...)}
}

// Advert is a VRRP advertisement (type 1), version 2 or 3, for IPv4.
type Advert struct {
	Version  int // 2 or 3
	VRID     uint8
	Priority uint8 // 0 = master resigns, 255 = address owner

	// Interval is the advertisement interval: centiseconds on the wire in
	// version 3 (at most 40.95s), whole seconds in version 2.
	Interval time.Duration

	Addrs []netip.Addr // IPv4 virtual addresses

	// Version 2 only.
	AuthType uint8   // AuthNone or AuthPass
	Auth     [8]byte // password, NUL-padded
}

// Len is the length of the encoded advert in bytes.
func (a *Advert) Len() int {
	n := headerLen + 4*len(a.Addrs)
	if a.Version == 2 {
		n += authLen
	}
	return n
}

// Marshal encodes a. The checksum of a version 3 advert covers the IPv4
// pseudo-header built from src and dst (RFC 5798 section 5.2.8); that of
// a version 2 advert covers the VRRP message only, and src and dst are not
// used.
func (a *Advert) Marshal(src, dst netip.Addr) ([]byte, error) {
	if len(a.Addrs) > 255 {
		return nil, fmt.Errorf("vrrp: %d addresses (at most 255)", len(a.Addrs))
	}
	b := make([]byte, a.Len())
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = byte(len(a.Addrs))
	switch a.Version {
	case 3:
		cs := a.Interval / (10 * time.Millisecond)
		if a.Interval%(10*time.Millisecond) != 0 || cs < 1 || cs > 0xfff {
			return nil, fmt.Errorf("vrrp: v3 interval %v is not 10ms..40.95s in steps of 10ms", a.Interval)
		}
		b[0] = 3<<4 | typeAdvert
		binary.BigEndian.PutUint16(b[4:], uint16(cs))
	case 2:
		s := a.Interval / time.Second
		if a.Interval%time.Second != 0 || s < 1 || s > 255 {
			return nil, fmt.Errorf("vrrp: v2 interval %v is not 1s..255s in whole seconds", a.Interval)
		}
		b[0] = 2<<4 | typeAdvert
		b[4] = a.AuthType
		b[5] = byte(s)
		copy(b[headerLen+4*len(a.Addrs):], a.Auth[:])
	default:
		return nil, fmt.Errorf("vrrp: version %d (2 or 3)", a.Version)
	}
	for i, ip := range a.Addrs {
		if !ip.Is4() {
			return nil, fmt.Errorf("vrrp: %v is not an IPv4 address", ip)
		}
		v := ip.As4()
		copy(b[headerLen+4*i:], v[:])
	}
	var sum uint16
	if a.Version == 3 {
		if !src.Is4() || !dst.Is4() {
			return nil, fmt.Errorf("vrrp: v3 checksum needs IPv4 source and destination, have %v and %v", src, dst)
		}
		sum = checksum(b, pseudoSum(src, dst, len(b)))
	} else {
		sum = checksum(b, 0)
	}
	binary.BigEndian.PutUint16(b[6:], sum)
	return b, nil
}

// Decode parses a VRRP advert: b is the IP payload, src and dst the
// addresses of its IP header (used by the version 3 checksum). Errors are
// *DecodeError.
func Decode(b []byte, src, dst netip.Addr) (Advert, error) {
	var a Advert
	if len(b) < headerLen {
		return a, decodeErr(ReasonShort, ErrShort, "%d bytes", len(b))
	}
	a.Version = int(b[0] >> 4)
	if t := b[0] & 0x0f; t != typeAdvert {
		return a, decodeErr(ReasonVersion, ErrType, "type %d", t)
	}
	a.VRID = b[1]
	a.Priority = b[2]
	n := int(b[3])
	want := headerLen + 4*n
	switch a.Version {
	case 3:
		if len(b) < want {
			return a, decodeErr(ReasonShort, ErrShort, "%d bytes for %d addresses", len(b), n)
		}
		if len(b) != want {
			return a, decodeErr(ReasonCount, ErrCount, "%d bytes for %d addresses", len(b), n)
		}
		if !src.Is4() || !dst.Is4() || checksum(b, pseudoSum(src, dst, len(b))) != 0 {
			return a, decodeErr(ReasonChecksum, ErrChecksum, "v3 from %v", src)
		}
		a.Interval = time.Duration(binary.BigEndian.Uint16(b[4:])&0x0fff) * 10 * time.Millisecond
	case 2:
		a.AuthType = b[4]
		a.Interval = time.Duration(b[5]) * time.Second
		switch {
		case len(b) == want+authLen:
			copy(a.Auth[:], b[want:])
		case len(b) == want && a.AuthType == AuthNone:
			// Authentication data omitted: tolerated without authentication.
		case len(b) < want:
			return a, decodeErr(ReasonShort, ErrShort, "%d bytes for %d addresses", len(b), n)
		default:
			return a, decodeErr(ReasonCount, ErrCount, "%d bytes for %d addresses", len(b), n)
		}
		if checksum(b, 0) != 0 {
			return a, decodeErr(ReasonChecksum, ErrChecksum, "v2 from %v", src)
		}
	default:
		return a, decodeErr(ReasonVersion, ErrVersion, "version %d", a.Version)
	}
	if n > 0 {
		a.Addrs = make([]netip.Addr, n)
		for i := range a.Addrs {
			a.Addrs[i] = netip.AddrFrom4([4]byte(b[headerLen+4*i:]))
		}
	}
	return a, nil
}

// pseudoSum is the one's complement partial sum of the IPv4 pseudo-header:
// source, destination, zero, protocol, length.
func pseudoSum(src, dst netip.Addr, length int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	sum += uint32(s[0])<<8 | uint32(s[1])
	sum += uint32(s[2])<<8 | uint32(s[3])
	sum += uint32(d[0])<<8 | uint32(d[1])
	sum += uint32(d[2])<<8 | uint32(d[3])
	sum += Protocol
	sum += uint32(length)
	return sum
}

// checksum is the Internet checksum (RFC 1071) of b, starting from the
// partial sum initial. Over a message that holds a correct checksum it is 0.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
