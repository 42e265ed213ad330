package keepalive

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// The test vectors of RFC 5769 section 2, typed in as the RFC prints them.
// Their FINGERPRINT attributes verify, which shows the bytes are right.
const (
	// Section 2.1, Sample Request: SOFTWARE, PRIORITY, ICE-CONTROLLED,
	// USERNAME (padded with spaces), MESSAGE-INTEGRITY, FINGERPRINT.
	rfc5769Request = `
		00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
		80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
		00 24 00 04 6e 00 01 ff
		80 29 00 08 93 2f f9 b1 51 26 3b 36
		00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
		00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
		80 28 00 04 e5 7a 3b cf`

	// Section 2.2, Sample IPv4 Response: SOFTWARE, XOR-MAPPED-ADDRESS
	// 192.0.2.1:32853, MESSAGE-INTEGRITY, FINGERPRINT.
	rfc5769IPv4Response = `
		01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
		80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
		00 20 00 08 00 01 a1 47 e1 12 a6 43
		00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
		80 28 00 04 c0 7d 4c 96`

	// Section 2.3, Sample IPv6 Response: as 2.2, with XOR-MAPPED-ADDRESS
	// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
	rfc5769IPv6Response = `
		01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
		80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
		00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
		00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
		80 28 00 04 c8 fb 0b 4c`
)

// rfc5769TxID is the transaction ID all three vectors share.
var rfc5769TxID = TxID{0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae}

// stunUnhex turns RFC-style spaced hex into bytes.
func stunUnhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		tb.Fatalf("bad hex: %v", err)
	}
	return b
}

// stunFingerprintOK checks a message's trailing FINGERPRINT independently of the
// code under test.
func stunFingerprintOK(msg []byte) bool {
	if len(msg) < STUNHeaderLen+8 {
		return false
	}
	tail := msg[len(msg)-8:]
	if binary.BigEndian.Uint16(tail) != 0x8028 || binary.BigEndian.Uint16(tail[2:]) != 4 {
		return false
	}
	return crc32.ChecksumIEEE(msg[:len(msg)-8])^0x5354554e == binary.BigEndian.Uint32(tail[4:])
}

// stunAttr encodes one attribute with its padding.
func stunAttr(typ uint16, val ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// stunBuild assembles a message from raw attributes, appending a valid
// FINGERPRINT when fp is set.
func stunBuild(typ uint16, id TxID, fp bool, attrs ...[]byte) []byte {
	body := bytes.Join(attrs, nil)
	n := len(body)
	if fp {
		n += 8
	}
	b := binary.BigEndian.AppendUint16(nil, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = binary.BigEndian.AppendUint32(b, MagicCookie)
	b = append(b, id[:]...)
	b = append(b, body...)
	if fp {
		crc := crc32.ChecksumIEEE(b) ^ 0x5354554e
		b = append(b, stunAttr(0x8028, byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc))...)
	}
	return b
}

// stunEdit returns a copy of b changed by f.
func stunEdit(b []byte, f func([]byte) []byte) []byte {
	return f(bytes.Clone(b))
}

func TestSTUNRFC5769Vectors(t *testing.T) {
	req := stunUnhex(t, rfc5769Request)
	if len(req) != 108 {
		t.Fatalf("request vector is %d bytes, want 108", len(req))
	}
	if !stunFingerprintOK(req) {
		t.Fatal("request vector FINGERPRINT does not verify: bytes mistyped")
	}
	// 2.1 is an ICE connectivity check (USERNAME, MESSAGE-INTEGRITY): a
	// plain responder must leave it to the server; the strict parser, which
	// looks only at the FINGERPRINT, takes it.
	if _, err := ParseBindingRequest(req); err != ErrUnknownAttribute {
		t.Fatalf("ParseBindingRequest(2.1) error = %v, want %v", err, ErrUnknownAttribute)
	}
	id, err := ParseFingerprintedBindingRequest(req)
	if err != nil {
		t.Fatalf("ParseFingerprintedBindingRequest(2.1): %v", err)
	}
	if id != rfc5769TxID {
		t.Errorf("2.1 transaction ID = %x, want %x", id, rfc5769TxID)
	}
	if _, err := ParseBindingResponse(req); err != ErrWrongType {
		t.Errorf("ParseBindingResponse(2.1 request) error = %v, want %v", err, ErrWrongType)
	}

	for _, tc := range []struct {
		name    string
		vector  string
		wantLen int
		want    netip.AddrPort
	}{
		{"2.2 IPv4", rfc5769IPv4Response, 80, netip.MustParseAddrPort("192.0.2.1:32853")},
		{"2.3 IPv6", rfc5769IPv6Response, 92, netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677]:32853")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := stunUnhex(t, tc.vector)
			if len(b) != tc.wantLen {
				t.Fatalf("vector is %d bytes, want %d", len(b), tc.wantLen)
			}
			if !stunFingerprintOK(b) {
				t.Fatal("vector FINGERPRINT does not verify: bytes mistyped")
			}
			r, err := ParseBindingResponse(b)
			if err != nil {
				t.Fatalf("ParseBindingResponse: %v", err)
			}
			if r.ID != rfc5769TxID || !r.HasMapped || r.Mapped != tc.want {
				t.Errorf("got %+v, want ID %x mapped %v", r, rfc5769TxID, tc.want)
			}
			if _, err := ParseBindingRequest(b); err != ErrWrongType {
				t.Errorf("ParseBindingRequest(response) error = %v, want %v", err, ErrWrongType)
			}
			typ, id, ok := PeekTxID(b)
			if !ok || typ != 0x0101 || id != rfc5769TxID {
				t.Errorf("PeekTxID = %#04x, %x, %v", typ, id, ok)
			}
		})
	}
}

func TestSTUNRequestRoundTrip(t *testing.T) {
	for range 100 {
		id := NewTxID()
		b := AppendBindingRequest([]byte("prefix"), id)
		if string(b[:6]) != "prefix" {
			t.Fatalf("prefix clobbered: %q", b[:6])
		}
		msg := b[6:]
		if len(msg) != 28 || !LooksLikeSTUN(msg) || !stunFingerprintOK(msg) {
			t.Fatalf("bad request %x", msg)
		}
		got, err := ParseBindingRequest(msg)
		if err != nil || got != id {
			t.Fatalf("ParseBindingRequest = %x, %v; want %x", got, err, id)
		}
		typ, pid, ok := PeekTxID(msg)
		if !ok || typ != 0x0001 || pid != id {
			t.Fatalf("PeekTxID = %#04x, %x, %v", typ, pid, ok)
		}
	}
}

func TestSTUNResponseRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantLen  int
	}{
		{"192.0.2.1:32853", "192.0.2.1:32853", 40},
		{"0.0.0.0:0", "0.0.0.0:0", 40},
		{"255.255.255.255:65535", "255.255.255.255:65535", 40},
		{"[::ffff:198.51.100.7]:40000", "198.51.100.7:40000", 40},
		{"[2001:db8:1234:5678:11:2233:4455:6677]:32853", "[2001:db8:1234:5678:11:2233:4455:6677]:32853", 52},
		{"[fe80::1%eth0]:1", "[fe80::1]:1", 52},
		{"[::]:9", "[::]:9", 52},
	} {
		t.Run(tc.in, func(t *testing.T) {
			id := NewTxID()
			b := AppendBindingSuccess(nil, id, netip.MustParseAddrPort(tc.in))
			if len(b) != tc.wantLen || !stunFingerprintOK(b) {
				t.Fatalf("bad response (%d bytes) %x", len(b), b)
			}
			r, err := ParseBindingResponse(b)
			want := netip.MustParseAddrPort(tc.want)
			if err != nil || r.ID != id || !r.HasMapped || r.Mapped != want {
				t.Fatalf("ParseBindingResponse = %+v, %v; want ID %x mapped %v", r, err, id, want)
			}
		})
	}
	// The encoder reproduces the XOR-MAPPED-ADDRESS of RFC 5769 2.2 byte
	// for byte.
	vec := stunUnhex(t, rfc5769IPv4Response)
	b := AppendBindingSuccess(nil, rfc5769TxID, netip.MustParseAddrPort("192.0.2.1:32853"))
	if !bytes.Equal(b[20:32], vec[36:48]) {
		t.Errorf("XOR-MAPPED-ADDRESS = %x, RFC has %x", b[20:32], vec[36:48])
	}
	vec = stunUnhex(t, rfc5769IPv6Response)
	b = AppendBindingSuccess(nil, rfc5769TxID, netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677]:32853"))
	if !bytes.Equal(b[20:44], vec[36:60]) {
		t.Errorf("XOR-MAPPED-ADDRESS = %x, RFC has %x", b[20:44], vec[36:60])
	}
	// An invalid address gives a response without one.
	b = AppendBindingSuccess(nil, rfc5769TxID, netip.AddrPort{})
	r, err := ParseBindingResponse(b)
	if err != nil || r.HasMapped || r.ID != rfc5769TxID || len(b) != 28 {
		t.Errorf("no-address response: %+v, %v (%d bytes)", r, err, len(b))
	}
}

func TestSTUNParseResponseCases(t *testing.T) {
	id := TxID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	v4 := stunUnhex(t, rfc5769IPv4Response)
	good := AppendBindingSuccess(nil, id, netip.MustParseAddrPort("192.0.2.1:32853"))
	xor4 := good[20:32]                                           // XOR-MAPPED-ADDRESS attribute, whole
	plain4 := stunAttr(0x0001, 0, 1, 0x9c, 0x40, 198, 51, 100, 7) // MAPPED-ADDRESS 198.51.100.7:40000
	xorVal := func(family byte, n int) []byte {
		v := []byte{0, family, 0xa1, 0x47}
		return append(v, make([]byte, n)...)
	}
	mappedV6In4 := AppendBindingSuccess(nil, id, netip.MustParseAddrPort("[2001:db8::1]:7"))[20:44]
	// Rewrite that IPv6 attribute to carry ::ffff:192.0.2.9.
	mappedV6In4 = stunEdit(mappedV6In4, func(b []byte) []byte {
		key := stunXORKey(id)
		ip := netip.MustParseAddr("::ffff:192.0.2.9").As16()
		for i := range ip {
			b[8+i] = ip[i] ^ key[i]
		}
		return b
	})

	for _, tc := range []struct {
		name      string
		in        []byte
		err       error
		hasMapped bool
		mapped    string
	}{
		{"empty", nil, ErrTruncated, false, ""},
		{"short header", good[:19], ErrTruncated, false, ""},
		{"top bits set", stunEdit(good, func(b []byte) []byte { b[0] |= 0x40; return b }), ErrNotSTUN, false, ""},
		{"bad cookie", stunEdit(good, func(b []byte) []byte { b[4] ^= 1; return b }), ErrNotSTUN, false, ""},
		{"length not multiple of 4", stunEdit(good, func(b []byte) []byte { b[3]++; return append(b, 0) }), ErrNotSTUN, false, ""},
		{"length mismatch, datagram cut", good[:len(good)-4], ErrTruncated, false, ""},
		{"length mismatch, trailing bytes", append(bytes.Clone(good), 0, 0, 0, 0), ErrNotSTUN, false, ""},
		{"length field zero with body", stunEdit(good, func(b []byte) []byte { b[2], b[3] = 0, 0; return b }), ErrNotSTUN, false, ""},
		{"bad fingerprint value", stunEdit(v4, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrBadFingerprint, false, ""},
		{"bad fingerprint, body changed", stunEdit(v4, func(b []byte) []byte { b[24] = 'T'; return b }), ErrBadFingerprint, false, ""},
		{"fingerprint not last", stunBuild(0x0101, id, false, stunAttr(0x8028, 0, 0, 0, 0), xor4), ErrBadFingerprint, false, ""},
		{"fingerprint wrong length", stunBuild(0x0101, id, false, xor4, stunAttr(0x8028, 0, 0, 0, 0, 0, 0, 0, 0)), ErrBadFingerprint, false, ""},
		{"truncated attribute", stunBuild(0x0101, id, false, xor4, []byte{0x80, 0x22, 0x00, 0x08, 'a', 'b', 'c', 'd'}), ErrTruncated, false, ""},
		{"attribute length beyond message", stunBuild(0x0101, id, false, []byte{0x00, 0x20, 0xff, 0xff, 0, 1, 0, 0}), ErrTruncated, false, ""},
		{"attribute padding beyond message", stunBuild(0x0101, id, false, []byte{0x80, 0x22, 0x00, 0x05, 'a', 'b', 'c', 'd'}), ErrTruncated, false, ""},
		{"xor address value too short", stunBuild(0x0101, id, true, stunAttr(0x0020, 0, 1, 0xa1)), ErrBadAttribute, false, ""},
		{"xor address IPv4 truncated", stunBuild(0x0101, id, true, stunAttr(0x0020, xorVal(1, 2)...)), ErrBadAttribute, false, ""},
		{"xor address IPv4 with IPv6 length", stunBuild(0x0101, id, true, stunAttr(0x0020, xorVal(1, 16)...)), ErrBadAttribute, false, ""},
		{"xor address IPv6 with IPv4 length", stunBuild(0x0101, id, true, stunAttr(0x0020, xorVal(2, 4)...)), ErrBadAttribute, false, ""},
		{"xor address wrong family", stunBuild(0x0101, id, true, stunAttr(0x0020, xorVal(3, 4)...)), ErrBadAttribute, false, ""},
		{"mapped address wrong family", stunBuild(0x0101, id, true, stunAttr(0x0001, xorVal(0, 4)...)), ErrBadAttribute, false, ""},
		{"request given", AppendBindingRequest(nil, id), ErrWrongType, false, ""},
		{"error response", stunBuild(0x0111, id, true), ErrWrongType, false, ""},
		{"indication", stunBuild(0x0011, id, true), ErrWrongType, false, ""},
		{"no address", stunBuild(0x0101, id, true, stunAttr(0x8022, 'x')), nil, false, ""},
		{"no attributes at all", stunBuild(0x0101, id, false), nil, false, ""},
		{"no fingerprint", stunBuild(0x0101, id, false, xor4), nil, true, "192.0.2.1:32853"},
		{"mapped address fallback", stunBuild(0x0101, id, true, plain4), nil, true, "198.51.100.7:40000"},
		{"xor preferred over mapped", stunBuild(0x0101, id, true, plain4, xor4), nil, true, "192.0.2.1:32853"},
		{"old xor code 0x8020", stunBuild(0x0101, id, true, stunEdit(xor4, func(b []byte) []byte { b[0] = 0x80; return b })), nil, true, "192.0.2.1:32853"},
		{"first xor address wins", stunBuild(0x0101, id, true, xor4, stunEdit(xor4, func(b []byte) []byte { b[7] ^= 1; return b })), nil, true, "192.0.2.1:32853"},
		{"IPv4-mapped IPv6 unmapped", stunBuild(0x0101, id, true, mappedV6In4), nil, true, "192.0.2.9:7"},
		{"address after integrity ignored", stunBuild(0x0101, id, true, stunAttr(0x0008, make([]byte, 20)...), xor4), nil, false, ""},
		{"unknown attributes skipped", stunBuild(0x0101, id, true, stunAttr(0x7fff, 1, 2, 3), stunAttr(0xc001), xor4), nil, true, "192.0.2.1:32853"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseBindingResponse(tc.in)
			if err != tc.err {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if err != nil {
				if r != (BindingResponse{}) {
					t.Errorf("failed parse returned %+v", r)
				}
				return
			}
			if r.ID != id || r.HasMapped != tc.hasMapped {
				t.Fatalf("got %+v, want ID %x HasMapped %v", r, id, tc.hasMapped)
			}
			if tc.hasMapped && r.Mapped != netip.MustParseAddrPort(tc.mapped) {
				t.Errorf("Mapped = %v, want %v", r.Mapped, tc.mapped)
			}
			if !tc.hasMapped && r.Mapped.IsValid() {
				t.Errorf("Mapped = %v without HasMapped", r.Mapped)
			}
		})
	}
}

// TestSTUNParseRequestCases runs both request parsers over the same
// inputs: std is ParseBindingRequest's answer (RFC 5389/8489 rules, the
// responder's default), strict is ParseFingerprintedBindingRequest's
// (stun_strict: FINGERPRINT required).
func TestSTUNParseRequestCases(t *testing.T) {
	id := TxID{12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	good := AppendBindingRequest(nil, id)
	v := stunUnhex(t, rfc5769Request)
	for _, tc := range []struct {
		name        string
		in          []byte
		std, strict error
	}{
		{"minimal", good, nil, nil},
		{"with attributes", stunBuild(0x0001, id, true, stunAttr(0x8022, 'n', 'k'), stunAttr(0x0024, 1, 2, 3, 4)), ErrUnknownAttribute, nil},
		{"empty", nil, ErrTruncated, ErrTruncated},
		{"short header", good[:12], ErrTruncated, ErrTruncated},
		{"top bits set", stunEdit(good, func(b []byte) []byte { b[0] |= 0x80; return b }), ErrNotSTUN, ErrNotSTUN},
		{"bad cookie (RFC 3489 style)", stunEdit(good, func(b []byte) []byte { b[7] = 0; return b }), ErrNotSTUN, ErrNotSTUN},
		{"length mismatch, datagram cut", v[:len(v)-8], ErrTruncated, ErrTruncated},
		{"length mismatch, trailing bytes", append(bytes.Clone(good), 0, 0, 0, 0), ErrNotSTUN, ErrNotSTUN},
		{"no fingerprint", stunBuild(0x0001, id, false), nil, ErrBadFingerprint},
		{"no fingerprint, other attributes", stunBuild(0x0001, id, false, stunAttr(0x8022, 'x')), nil, ErrBadFingerprint},
		{"bad fingerprint", stunEdit(good, func(b []byte) []byte { b[27] ^= 0x80; return b }), ErrBadFingerprint, ErrBadFingerprint},
		{"bad fingerprint, transaction ID changed", stunEdit(v, func(b []byte) []byte { b[19] ^= 1; return b }), ErrBadFingerprint, ErrBadFingerprint},
		{"fingerprint not last", stunBuild(0x0001, id, false, good[20:28], stunAttr(0x8022, 'x')), ErrBadFingerprint, ErrBadFingerprint},
		{"fingerprint bytes inside another attribute", stunBuild(0x0001, id, false, stunAttr(0x8022, good[20:28]...)), nil, ErrBadFingerprint},
		{"truncated attribute", stunBuild(0x0001, id, false, []byte{0x80, 0x22, 0x00, 0x09, 'a', 'b', 'c', 'd'}), ErrTruncated, ErrTruncated},
		{"attribute length beyond message", stunBuild(0x0001, id, false, []byte{0x80, 0x28, 0x01, 0x00, 0, 0, 0, 0}), ErrTruncated, ErrTruncated},
		{"response given", AppendBindingSuccess(nil, id, netip.MustParseAddrPort("192.0.2.1:1")), ErrWrongType, ErrWrongType},
		{"indication given", stunBuild(0x0011, id, true), ErrWrongType, ErrWrongType},
		{"application data ending like a fingerprint", append([]byte{0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42}, "hello, world\x80\x28\x00\x04oops"...), ErrBadFingerprint, ErrBadFingerprint},
		{"USERNAME (an ICE check)", stunBuild(0x0001, id, false, stunAttr(0x0006, 'a', ':', 'b')), ErrUnknownAttribute, ErrBadFingerprint},
		{"USERNAME with FINGERPRINT", stunBuild(0x0001, id, true, stunAttr(0x0006, 'a', ':', 'b')), ErrUnknownAttribute, nil},
		{"CHANGE-REQUEST", stunBuild(0x0001, id, false, stunAttr(0x0003, 0, 0, 0, 6)), ErrUnknownAttribute, ErrBadFingerprint},
		{"RESPONSE-PORT is understood", stunBuild(0x0001, id, true, stunAttr(0x0027, 0x30, 0x39, 0, 0)), nil, nil},
		{"RESPONSE-PORT of the wrong length", stunBuild(0x0001, id, true, stunAttr(0x0027, 0x30, 0x39)), ErrBadAttribute, ErrBadAttribute},
		{"RESPONSE-PORT 0", stunBuild(0x0001, id, true, stunAttr(0x0027, 0, 0, 0, 0)), ErrBadAttribute, ErrBadAttribute},
		{"PADDING is ignored", stunBuild(0x0001, id, false, stunAttr(0x0026, 0, 0, 0, 0, 0, 0, 0, 0)), nil, ErrBadFingerprint},
		{"unknown comprehension-optional attribute", stunBuild(0x0001, id, true, stunAttr(0xC0DE, 1)), nil, nil},
		{"unknown attribute, then a truncated one", stunBuild(0x0001, id, false, stunAttr(0x0006, 'x'), []byte{0x80, 0x22, 0x00, 0x09, 'a', 'b', 'c', 'd'}), ErrTruncated, ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []struct {
				name  string
				parse func([]byte) (TxID, error)
				want  error
			}{
				{"ParseBindingRequest", ParseBindingRequest, tc.std},
				{"ParseFingerprintedBindingRequest", ParseFingerprintedBindingRequest, tc.strict},
			} {
				got, err := p.parse(tc.in)
				if err != p.want {
					t.Fatalf("%s: error = %v, want %v", p.name, err, p.want)
				}
				if err == nil && got != id {
					t.Errorf("%s: ID = %x, want %x", p.name, got, id)
				}
				if err != nil && got != (TxID{}) {
					t.Errorf("%s: failed parse returned ID %x", p.name, got)
				}
			}
		})
	}
}

func TestSTUNLooksLikeAndPeek(t *testing.T) {
	id := NewTxID()
	good := AppendBindingRequest(nil, id)
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"request", good, true},
		{"header only", stunBuild(0x0001, id, false), true},
		{"unknown type", stunBuild(0x3eef, id, false), true},
		{"nil", nil, false},
		{"19 bytes", good[:19], false},
		{"top bit", stunEdit(good, func(b []byte) []byte { b[0] = 0x80; return b }), false},
		{"second bit", stunEdit(good, func(b []byte) []byte { b[0] = 0x40; return b }), false},
		{"cookie", stunEdit(good, func(b []byte) []byte { b[5] = 0; return b }), false},
		{"length odd", stunEdit(good, func(b []byte) []byte { b[3] = 7; return b[:27] }), false},
		{"length short", stunEdit(good, func(b []byte) []byte { b[3] = 4; return b }), false},
		{"length long", stunEdit(good, func(b []byte) []byte { b[3] = 12; return b }), false},
		{"text", []byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := LooksLikeSTUN(tc.in); got != tc.want {
				t.Fatalf("LooksLikeSTUN = %v, want %v", got, tc.want)
			}
			typ, pid, ok := PeekTxID(tc.in)
			if ok != tc.want {
				t.Fatalf("PeekTxID ok = %v, want %v", ok, tc.want)
			}
			if ok && (pid != id || typ != binary.BigEndian.Uint16(tc.in)) {
				t.Errorf("PeekTxID = %#04x, %x", typ, pid)
			}
			if !ok && (typ != 0 || pid != TxID{}) {
				t.Errorf("PeekTxID returned %#04x, %x with ok false", typ, pid)
			}
		})
	}
}

func TestSTUNNewTxIDConcurrent(t *testing.T) {
	const workers, each = 4, 500
	var (
		mu   sync.Mutex
		seen = make(map[TxID]bool, workers*each)
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			ids := make([]TxID, each)
			for i := range ids {
				ids[i] = NewTxID()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if seen[id] {
					t.Errorf("duplicate transaction ID %x", id)
				}
				seen[id] = true
			}
		})
	}
	wg.Wait()
	if seen[TxID{}] {
		t.Error("zero transaction ID")
	}
}

func TestSTUNErrorsDistinct(t *testing.T) {
	errs := []error{ErrNotSTUN, ErrTruncated, ErrBadFingerprint, ErrWrongType, ErrBadAttribute}
	for i, a := range errs {
		for _, b := range errs[i+1:] {
			if errors.Is(a, b) {
				t.Errorf("%v is %v", a, b)
			}
		}
	}
}

func TestSTUNZeroAllocs(t *testing.T) {
	v4 := stunUnhex(t, rfc5769IPv4Response)
	v6 := stunUnhex(t, rfc5769IPv6Response)
	req := stunUnhex(t, rfc5769Request)
	bad := stunEdit(v4, func(b []byte) []byte { b[len(b)-1] ^= 1; return b })
	buf := make([]byte, 0, 64)
	var (
		r   BindingResponse
		id  TxID
		ok  bool
		err error
	)
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"ParseBindingResponse IPv4", func() { r, err = ParseBindingResponse(v4) }},
		{"ParseBindingResponse IPv6", func() { r, err = ParseBindingResponse(v6) }},
		{"ParseBindingResponse error", func() { r, err = ParseBindingResponse(bad) }},
		{"ParseBindingRequest", func() { id, err = ParseBindingRequest(req) }},
		{"ParseBindingRequest error", func() { id, err = ParseBindingRequest(v4) }},
		{"ParseFingerprintedBindingRequest", func() { id, err = ParseFingerprintedBindingRequest(req) }},
		{"AppendBindingRequest", func() { buf = AppendBindingRequest(buf[:0], id) }},
		{"AppendBindingSuccess", func() { buf = AppendBindingSuccess(buf[:0], id, r.Mapped) }},
		{"LooksLikeSTUN", func() { ok = LooksLikeSTUN(v4) }},
		{"PeekTxID", func() { _, id, ok = PeekTxID(req) }},
	} {
		if n := testing.AllocsPerRun(200, tc.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", tc.name, n)
		}
	}
	_, _ = ok, err
}

func BenchmarkSTUNAppendRequest(b *testing.B) {
	buf := make([]byte, 0, 64)
	id := NewTxID()
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBindingRequest(buf[:0], id)
	}
}

func BenchmarkSTUNParseResponse(b *testing.B) {
	msg := stunUnhex(b, rfc5769IPv4Response)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := ParseBindingResponse(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSTUNParseRequest(b *testing.B) {
	msg := AppendBindingRequest(nil, NewTxID())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseBindingRequest(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSTUNNewTxID(b *testing.B) {
	var id TxID
	b.ReportAllocs()
	for b.Loop() {
		id = NewTxID()
	}
	_ = id
}

// TestSTUNResponseWithoutFingerprint: a response to a request without
// FINGERPRINT is 8 bytes smaller and still parses; HasFingerprint tells the
// two request forms apart.
func TestSTUNResponseWithoutFingerprint(t *testing.T) {
	id := NewTxID()
	mapped := netip.MustParseAddrPort("192.0.2.1:4242")
	with := AppendBindingResponse(nil, id, mapped, true)
	without := AppendBindingResponse(nil, id, mapped, false)
	if !bytes.Equal(with, AppendBindingSuccess(nil, id, mapped)) {
		t.Fatal("AppendBindingSuccess differs from AppendBindingResponse with FINGERPRINT")
	}
	if len(without) != 32 || len(with) != 40 {
		t.Fatalf("lengths %d and %d, want 32 and 40", len(without), len(with))
	}
	for _, b := range [][]byte{with, without} {
		r, err := ParseBindingResponse(b)
		if err != nil || r.ID != id || r.Mapped != mapped {
			t.Fatalf("%x parses as %+v, %v", b, r, err)
		}
	}
	if !HasFingerprint(AppendBindingRequest(nil, id)) {
		t.Error("a fingerprinted request reported without FINGERPRINT")
	}
	if HasFingerprint(stunBuild(0x0001, id, false)) || HasFingerprint(stunBuild(0x0001, id, false, stunAttr(0x8022, 0x80, 0x28, 0, 4, 1, 2, 3, 4))) {
		t.Error("a request without FINGERPRINT reported with one")
	}
}

// TestSTUNReadBindingRequest: what a responder learns of a request.
func TestSTUNReadBindingRequest(t *testing.T) {
	id := NewTxID()
	r, err := ReadBindingRequest(stunBuild(0x0001, id, true, stunAttr(0x0027, 0x30, 0x39, 0, 0), stunAttr(0x8022, 'x')), false)
	if err != nil || r.ID != id || r.ResponsePort != 12345 || !r.Fingerprint || r.Credentials || r.NUnknown != 0 {
		t.Fatalf("RESPONSE-PORT request: %+v, %v", r, err)
	}
	r, err = ReadBindingRequest(stunBuild(0x0001, id, false, stunAttr(0x0006, 'u'), stunAttr(0x0008, make([]byte, 20)...)), false)
	if err != nil || !r.Credentials || r.NUnknown != 0 || r.Fingerprint {
		t.Fatalf("ICE-style request: %+v, %v", r, err)
	}
	var unknown [][]byte
	for typ := uint16(0x7001); typ <= 0x7006; typ++ {
		unknown = append(unknown, stunAttr(typ, 1))
	}
	r, err = ReadBindingRequest(stunBuild(0x0001, id, false, unknown...), false)
	if err != nil || r.NUnknown != 6 || r.Unknown != [4]uint16{0x7001, 0x7002, 0x7003, 0x7004} {
		t.Fatalf("unknown attributes: %+v, %v", r, err)
	}
	if _, err := ReadBindingRequest(stunBuild(0x0001, id, false), true); err != ErrBadFingerprint {
		t.Fatalf("strict without FINGERPRINT: %v", err)
	}
}

// TestSTUNUnknownAttributesResponse: the 420 answer is a well-formed Binding
// Error Response with ERROR-CODE 420 and the unknown attributes listed, and
// a valid FINGERPRINT when the request had one.
func TestSTUNUnknownAttributesResponse(t *testing.T) {
	for _, fp := range []bool{false, true} {
		req := BindingRequest{ID: NewTxID(), Fingerprint: fp, Unknown: [4]uint16{0x0003, 0x7FFF}, NUnknown: 2}
		b := AppendUnknownAttributes(nil, req)
		if !LooksLikeSTUN(b) {
			t.Fatalf("fingerprint %v: %x is not a STUN message", fp, b)
		}
		typ, gotID, _ := PeekTxID(b)
		if typ != 0x0111 || gotID != req.ID {
			t.Fatalf("type %#x id %x", typ, gotID)
		}
		if fp != stunFingerprintOK(b) {
			t.Fatalf("fingerprint %v: FINGERPRINT check %v", fp, stunFingerprintOK(b))
		}
		it := stunAttrIter{msg: b, off: STUNHeaderLen}
		var code int
		var listed []uint16
		for {
			typ, val, _, done, err := it.next()
			if err != nil {
				t.Fatal(err)
			}
			if done {
				break
			}
			switch typ {
			case 0x0009:
				code = int(val[2])*100 + int(val[3])
			case 0x000A:
				for i := 0; i+1 < len(val); i += 2 {
					listed = append(listed, binary.BigEndian.Uint16(val[i:]))
				}
			}
		}
		if code != 420 || len(listed) != 2 || listed[0] != 0x0003 || listed[1] != 0x7FFF {
			t.Fatalf("error code %d, unknown attributes %#x", code, listed)
		}
	}
}
