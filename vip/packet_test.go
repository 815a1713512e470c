package vip

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

var (
	testSrc = netip.MustParseAddr("10.99.1.1")
	testVIP = netip.MustParseAddr("172.168.1.20")
)

// sum1071 is a plain RFC 1071 checksum written independently of the
// package's: add the 16-bit big-endian words in a 64-bit accumulator, fold,
// complement.
func sum1071(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var acc uint64
	for i := 0; i < len(all); i += 2 {
		acc += uint64(all[i])*256 + uint64(all[i+1])
	}
	for acc>>16 != 0 {
		acc = (acc & 0xffff) + (acc >> 16)
	}
	return uint16(^acc)
}

func pseudo(src, dst netip.Addr, n int) []byte {
	s, d := src.As4(), dst.As4()
	return []byte{s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], 0, 112, byte(n >> 8), byte(n)}
}

func withSum(b []byte, sum uint16) []byte {
	out := bytes.Clone(b)
	out[6], out[7] = byte(sum>>8), byte(sum)
	return out
}

func TestMarshalGolden(t *testing.T) {
	tests := []struct {
		name   string
		adv    Advert
		dst    netip.Addr
		nosum  []byte // the expected message with a zero checksum
		pseudo bool   // checksum covers the pseudo-header
	}{
		{
			name: "v3 1s",
			adv:  Advert{Version: 3, VRID: 51, Priority: 120, Interval: time.Second, Addrs: []netip.Addr{testVIP}},
			dst:  Group,
			nosum: []byte{
				0x31, 51, 120, 1, 0x00, 0x64, 0, 0,
				172, 168, 1, 20,
			},
			pseudo: true,
		},
		{
			name: "v3 100ms two addresses unicast",
			adv: Advert{Version: 3, VRID: 7, Priority: 255, Interval: 100 * time.Millisecond,
				Addrs: []netip.Addr{testVIP, netip.MustParseAddr("10.99.1.100")}},
			dst: netip.MustParseAddr("10.99.1.2"),
			nosum: []byte{
				0x31, 7, 255, 2, 0x00, 0x0a, 0, 0,
				172, 168, 1, 20,
				10, 99, 1, 100,
			},
			pseudo: true,
		},
		{
			name: "v3 max interval priority 0",
			adv:  Advert{Version: 3, VRID: 255, Priority: 0, Interval: 40950 * time.Millisecond, Addrs: []netip.Addr{testVIP}},
			dst:  Group,
			nosum: []byte{
				0x31, 255, 0, 1, 0x0f, 0xff, 0, 0,
				172, 168, 1, 20,
			},
			pseudo: true,
		},
		{
			name: "v2 PASS",
			adv: Advert{Version: 2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{testVIP},
				AuthType: AuthPass, Auth: [8]byte{'s', 'e', 'c', 'r', 'e', 't'}},
			dst: Group,
			nosum: []byte{
				0x21, 51, 100, 1, 1, 1, 0, 0,
				172, 168, 1, 20,
				's', 'e', 'c', 'r', 'e', 't', 0, 0,
			},
		},
		{
			name: "v2 none 3s",
			adv:  Advert{Version: 2, VRID: 1, Priority: 50, Interval: 3 * time.Second, Addrs: []netip.Addr{testVIP}},
			dst:  Group,
			nosum: []byte{
				0x21, 1, 50, 1, 0, 3, 0, 0,
				172, 168, 1, 20,
				0, 0, 0, 0, 0, 0, 0, 0,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sum uint16
			if tt.pseudo {
				sum = sum1071(pseudo(testSrc, tt.dst, len(tt.nosum)), tt.nosum)
			} else {
				sum = sum1071(tt.nosum)
			}
			want := withSum(tt.nosum, sum)
			got, err := tt.adv.Marshal(testSrc, tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Marshal:\n got % x\nwant % x", got, want)
			}
			dec, err := Decode(want, testSrc, tt.dst)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(dec, tt.adv) {
				t.Fatalf("Decode = %+v, want %+v", dec, tt.adv)
			}
		})
	}
}

// A v3 checksum computed without the pseudo-header (a common bug, which
// keepalived drops) must be rejected.
func TestDecodeV3ChecksumWithoutPseudoHeader(t *testing.T) {
	nosum := []byte{0x31, 51, 120, 1, 0x00, 0x64, 0, 0, 172, 168, 1, 20}
	b := withSum(nosum, sum1071(nosum))
	_, err := Decode(b, testSrc, Group)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("err = %v, want ErrChecksum", err)
	}
	// The same message checked against another source fails as well.
	good := withSum(nosum, sum1071(pseudo(testSrc, Group, len(nosum)), nosum))
	if _, err := Decode(good, netip.MustParseAddr("10.99.1.3"), Group); !errors.Is(err, ErrChecksum) {
		t.Fatalf("other source: err = %v, want ErrChecksum", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	v3 := func(nosum []byte) []byte {
		return withSum(nosum, sum1071(pseudo(testSrc, Group, len(nosum)), nosum))
	}
	v2 := func(nosum []byte) []byte { return withSum(nosum, sum1071(nosum)) }
	tests := []struct {
		name   string
		b      []byte
		err    error
		reason string
	}{
		{"empty", nil, ErrShort, ReasonShort},
		{"7 bytes", []byte{0x31, 1, 100, 0, 0, 100, 0}, ErrShort, ReasonShort},
		{"v3 truncated", v3([]byte{0x31, 1, 100, 2, 0, 100, 0, 0, 172, 168, 1, 20}), ErrShort, ReasonShort},
		{"v3 trailing", v3([]byte{0x31, 1, 100, 1, 0, 100, 0, 0, 172, 168, 1, 20, 1, 2, 3, 4}), ErrCount, ReasonCount},
		{"v2 missing auth", v2([]byte{0x21, 1, 100, 1, 1, 1, 0, 0, 172, 168, 1, 20}), ErrCount, ReasonCount},
		{"v2 truncated", v2([]byte{0x21, 1, 100, 3, 0, 1, 0, 0, 172, 168, 1, 20}), ErrShort, ReasonShort},
		{"version 4", v3([]byte{0x41, 1, 100, 1, 0, 100, 0, 0, 172, 168, 1, 20}), ErrVersion, ReasonVersion},
		{"version 1", v2([]byte{0x11, 1, 100, 1, 0, 1, 0, 0, 172, 168, 1, 20}), ErrVersion, ReasonVersion},
		{"type 2", v3([]byte{0x32, 1, 100, 1, 0, 100, 0, 0, 172, 168, 1, 20}), ErrType, ReasonVersion},
		{"v3 bad sum", withSum([]byte{0x31, 1, 100, 1, 0, 100, 0, 0, 172, 168, 1, 20}, 0x1234), ErrChecksum, ReasonChecksum},
		{"v2 bad sum", withSum([]byte{0x21, 1, 100, 1, 0, 1, 0, 0, 172, 168, 1, 20, 0, 0, 0, 0, 0, 0, 0, 0}, 1), ErrChecksum, ReasonChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.b, testSrc, Group)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason != tt.reason {
				t.Fatalf("err = %#v, want reason %q", err, tt.reason)
			}
		})
	}
}

func TestDecodeV2WithoutAuthData(t *testing.T) {
	nosum := []byte{0x21, 9, 100, 1, 0, 1, 0, 0, 172, 168, 1, 20}
	a, err := Decode(withSum(nosum, sum1071(nosum)), testSrc, Group)
	if err != nil {
		t.Fatal(err)
	}
	if a.VRID != 9 || a.AuthType != AuthNone || a.Interval != time.Second || len(a.Addrs) != 1 {
		t.Fatalf("got %+v", a)
	}
}

func TestMarshalRejects(t *testing.T) {
	bad := []Advert{
		{Version: 3, Interval: 5 * time.Millisecond},
		{Version: 3, Interval: 41 * time.Second},
		{Version: 3, Interval: 15 * time.Millisecond},
		{Version: 2, Interval: 1500 * time.Millisecond},
		{Version: 2, Interval: 0},
		{Version: 4, Interval: time.Second},
		{Version: 3, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("::1")}},
	}
	for _, a := range bad {
		if _, err := a.Marshal(testSrc, Group); err == nil {
			t.Errorf("Marshal(%+v) succeeded", a)
		}
	}
	a := Advert{Version: 3, Interval: time.Second}
	if _, err := a.Marshal(netip.Addr{}, Group); err == nil {
		t.Error("v3 Marshal without a source succeeded")
	}
}

func FuzzDecode(f *testing.F) {
	for _, a := range []Advert{
		{Version: 3, VRID: 51, Priority: 120, Interval: time.Second, Addrs: []netip.Addr{testVIP}},
		{Version: 2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{testVIP}, AuthType: AuthPass, Auth: [8]byte{'x'}},
	} {
		b, err := a.Marshal(testSrc, Group)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, testSrc.AsSlice())
	}
	f.Add([]byte{0x31}, []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b, src []byte) {
		s, ok := netip.AddrFromSlice(src)
		if !ok {
			s = testSrc
		}
		a, err := Decode(b, s, Group)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) || de.Reason == "" {
				t.Fatalf("error %v is not a *DecodeError with a reason", err)
			}
			return
		}
		out, err := a.Marshal(s, Group)
		if err != nil {
			return // e.g. interval 0: decodable, refused by the machine, never sent
		}
		again, err := Decode(out, s, Group)
		if err != nil {
			t.Fatalf("decode of re-marshalled advert: %v", err)
		}
		if !reflect.DeepEqual(again, a) {
			t.Fatalf("round trip: %+v != %+v", again, a)
		}
	})
}
