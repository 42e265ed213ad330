package keepalive

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
)

// This file is a minimal STUN codec (RFC 5389, RFC 8489): just enough to
// send a Binding Request as a heartbeat, to answer one, and to read the
// mapped address out of a Binding Success Response. It works on caller-owned
// byte slices and never allocates on the parse path, because it runs for
// every datagram that crosses the relay.

// MagicCookie is the fixed STUN magic cookie (RFC 5389 section 6); it tells STUN apart from other traffic on the same port.
const MagicCookie = 0x2112A442

// STUNHeaderLen is the length of a STUN message header, which every STUN message starts with.
const STUNHeaderLen = 20

// Message types, attribute types and sizes used by the codec.
const (
	stunTypeBindingRequest = 0x0001
	stunTypeBindingSuccess = 0x0101

	stunAttrMappedAddress          = 0x0001
	stunAttrXORMappedAddress       = 0x0020
	stunAttrXORMappedAddressOld    = 0x8020 // pre-RFC 5389 drafts; some old servers still send it
	stunAttrMessageIntegrity       = 0x0008
	stunAttrMessageIntegritySHA256 = 0x001C
	stunAttrFingerprint            = 0x8028
	stunAttrPadding                = 0x0026 // RFC 5780: ignored by design
	stunAttrResponsePort           = 0x0027 // RFC 5780 section 7.5
	stunAttrOtherAddress           = 0x802C // RFC 5780 section 7.4
	stunAttrSoftware               = 0x8022
	stunAttrChangedAddress         = 0x0005 // RFC 3489's name for the same
	stunAttrUsername               = 0x0006
	stunAttrUserhash               = 0x001E
	stunAttrErrorCode              = 0x0009
	stunAttrUnknownAttributes      = 0x000A
	stunTypeBindingError           = 0x0111

	stunAttrHeaderLen  = 4
	stunFingerprintLen = stunAttrHeaderLen + 4
	stunFingerprintXOR = 0x5354554e // "STUN", RFC 5389 section 15.5

	stunFamilyIPv4 = 0x01
	stunFamilyIPv6 = 0x02
)

// Sentinel errors. The parse functions return these values unwrapped, so
// that a failed parse costs no allocation and callers can compare with ==
// or errors.Is.
var (
	// ErrNotSTUN reports a datagram that is not a STUN message at all (wrong leading bits, magic cookie or length), so the relay can pass it on as application data.
	ErrNotSTUN = errors.New("keepalive: not a STUN message")
	// ErrTruncated reports a message cut short: smaller than its header says, or with an attribute running past its end.
	ErrTruncated = errors.New("keepalive: truncated STUN message")
	// ErrBadFingerprint reports a FINGERPRINT that is wrong, misplaced or, where one is required, missing; such a message may be application data that happens to look like STUN.
	ErrBadFingerprint = errors.New("keepalive: bad STUN fingerprint")
	// ErrWrongType reports a well-formed STUN message of a type other than the one asked for.
	ErrWrongType = errors.New("keepalive: unexpected STUN message type")
	// ErrUnknownAttribute reports a request with a comprehension-required attribute the codec does not understand; RFC 8489 answers it with error 420, and the relay passes it on to the server.
	ErrUnknownAttribute = errors.New("keepalive: unknown comprehension-required STUN attribute")
	// ErrBadAttribute reports an address attribute with an unknown family or a length that does not fit it.
	ErrBadAttribute = errors.New("keepalive: malformed STUN attribute")
)

// TxID is a 96-bit STUN transaction ID, which pairs a response with its request.
type TxID [12]byte

// NewTxID returns a random transaction ID from crypto/rand, so that an
// off-path attacker cannot guess it and forge a response with a false mapped
// address. It is safe for concurrent use and does not allocate (the race
// detector makes crypto/rand allocate once per call; normal builds do not).
func NewTxID() TxID {
	var id TxID
	// crypto/rand.Read never fails (Go 1.24+) and keeps id on the stack.
	_, _ = rand.Read(id[:])
	return id
}

// stunAppendHeader appends a STUN header whose length field is bodyLen.
func stunAppendHeader(dst []byte, typ uint16, bodyLen int, id TxID) []byte {
	dst = binary.BigEndian.AppendUint16(dst, typ)
	dst = binary.BigEndian.AppendUint16(dst, uint16(bodyLen))
	dst = binary.BigEndian.AppendUint32(dst, MagicCookie)
	return append(dst, id[:]...)
}

// stunAppendFingerprint appends a FINGERPRINT attribute to msg, the complete
// message so far, whose header length field must already count it.
func stunAppendFingerprint(dst []byte, msg []byte) []byte {
	crc := crc32.ChecksumIEEE(msg) ^ stunFingerprintXOR
	dst = binary.BigEndian.AppendUint16(dst, stunAttrFingerprint)
	dst = binary.BigEndian.AppendUint16(dst, 4)
	return binary.BigEndian.AppendUint32(dst, crc)
}

// AppendBindingRequest appends a Binding Request with a FINGERPRINT to dst
// and returns the extended slice; the fingerprint lets the far end tell our
// heartbeat from application data. It does not allocate when dst has room
// for 28 more bytes.
func AppendBindingRequest(dst []byte, id TxID) []byte {
	start := len(dst)
	dst = stunAppendHeader(dst, stunTypeBindingRequest, stunFingerprintLen, id)
	return stunAppendFingerprint(dst, dst[start:])
}

// probeSoftware is the SOFTWARE attribute of path probes: a server's
// operator (or a test) can tell them from heartbeats, which stay minimal.
const probeSoftware = "natkeep path probe"

// AppendProbeRequest appends a path probe's Binding Request to dst: a
// SOFTWARE attribute naming it, RESPONSE-PORT port when port is not 0
// (RFC 5780 section 7.5: answer to my address at this port; the second
// half of a binding lifetime probe), and a FINGERPRINT. It does not
// allocate when dst has room for 64 more bytes.
func AppendProbeRequest(dst []byte, id TxID, port uint16) []byte {
	start := len(dst)
	sw := stunAttrHeaderLen + (len(probeSoftware)+3)&^3
	body := sw + stunFingerprintLen
	if port != 0 {
		body += stunAttrHeaderLen + 4
	}
	dst = stunAppendHeader(dst, stunTypeBindingRequest, body, id)
	dst = binary.BigEndian.AppendUint16(dst, stunAttrSoftware)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(probeSoftware)))
	dst = append(dst, probeSoftware...)
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	if port != 0 {
		dst = binary.BigEndian.AppendUint16(dst, stunAttrResponsePort)
		dst = binary.BigEndian.AppendUint16(dst, 4)
		dst = binary.BigEndian.AppendUint16(dst, port)
		dst = append(dst, 0, 0) // RFC 5780: two bytes of padding, ignored
	}
	return stunAppendFingerprint(dst, dst[start:])
}

// IsBindingError reports whether a STUN message type (from PeekTxID) is a
// Binding Error Response, such as the 420 a server that does not know
// RESPONSE-PORT sends.
func IsBindingError(typ uint16) bool { return typ == stunTypeBindingError }

// AppendBindingSuccess appends a Binding Success Response carrying
// XOR-MAPPED-ADDRESS for mapped, and a FINGERPRINT, to dst and returns the
// extended slice. An IPv4-mapped IPv6 address is sent as IPv4 so that an
// endpoint has one wire form, the one ParseBindingResponse returns; the zone
// is dropped, as it means nothing off this host. If mapped is not valid, the
// response carries no address attribute.
func AppendBindingSuccess(dst []byte, id TxID, mapped netip.AddrPort) []byte {
	return AppendBindingResponse(dst, id, mapped, true)
}

// AppendBindingResponse is AppendBindingSuccess with the FINGERPRINT
// optional: a responder answers a request without one with a response
// without one, 8 bytes smaller (it answers strangers; it sends no more than
// the exchange needs).
func AppendBindingResponse(dst []byte, id TxID, mapped netip.AddrPort, fingerprint bool) []byte {
	start := len(dst)
	addr := mapped.Addr().Unmap()
	attrLen := 0
	switch {
	case !mapped.IsValid():
	case addr.Is4():
		attrLen = 8
	default:
		attrLen = 20
	}
	bodyLen := 0
	if fingerprint {
		bodyLen = stunFingerprintLen
	}
	if attrLen > 0 {
		bodyLen += stunAttrHeaderLen + attrLen
	}
	dst = stunAppendHeader(dst, stunTypeBindingSuccess, bodyLen, id)
	if attrLen > 0 {
		dst = binary.BigEndian.AppendUint16(dst, stunAttrXORMappedAddress)
		dst = binary.BigEndian.AppendUint16(dst, uint16(attrLen))
		family := byte(stunFamilyIPv4)
		if attrLen == 20 {
			family = stunFamilyIPv6
		}
		dst = append(dst, 0, family)
		dst = binary.BigEndian.AppendUint16(dst, mapped.Port()^(MagicCookie>>16))
		ip := addr.As16()
		raw := ip[:]
		if family == stunFamilyIPv4 {
			raw = ip[12:]
		}
		key := stunXORKey(id)
		for i, c := range raw {
			dst = append(dst, c^key[i])
		}
	}
	if !fingerprint {
		return dst
	}
	return stunAppendFingerprint(dst, dst[start:])
}

// HasFingerprint reports whether a message that parsed as a Binding Request
// ends in a FINGERPRINT attribute (the parsers have checked it is valid).
func HasFingerprint(b []byte) bool {
	n := len(b)
	return n >= STUNHeaderLen+stunFingerprintLen && binary.BigEndian.Uint16(b[n-stunFingerprintLen:]) == stunAttrFingerprint &&
		binary.BigEndian.Uint16(b[n-stunFingerprintLen+2:]) == 4 && stunCheckFingerprint(b, n-stunFingerprintLen, b[n-4:]) == nil
}

// stunXORKey returns the magic cookie followed by the transaction ID, the key
// that XOR-MAPPED-ADDRESS is obscured with (RFC 5389 section 15.2) so that
// NATs rewriting addresses in payloads leave it alone.
func stunXORKey(id TxID) [16]byte {
	var k [16]byte
	binary.BigEndian.PutUint32(k[:4], MagicCookie)
	copy(k[4:], id[:])
	return k
}

// stunCheckHeader validates the fixed header, telling a datagram that is not
// STUN apart from one that was cut short.
func stunCheckHeader(b []byte) error {
	if len(b) < STUNHeaderLen {
		return ErrTruncated
	}
	if b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:8]) != MagicCookie {
		return ErrNotSTUN
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	switch {
	case n%4 != 0:
		return ErrNotSTUN
	case n > len(b)-STUNHeaderLen:
		return ErrTruncated
	case n < len(b)-STUNHeaderLen:
		// Trailing bytes: not a single STUN message.
		return ErrNotSTUN
	}
	return nil
}

// LooksLikeSTUN reports whether b has a plausible STUN header: at least 20
// bytes, top two bits zero, the magic cookie, and a length field that is a
// multiple of 4 and accounts for exactly the rest of b. It is the cheap
// first test the relay runs on every datagram.
func LooksLikeSTUN(b []byte) bool {
	return stunCheckHeader(b) == nil
}

// PeekTxID returns the message type and transaction ID of anything that
// passes LooksLikeSTUN, so the relay can match responses to its requests
// without a full parse; ok is false otherwise.
func PeekTxID(b []byte) (typ uint16, id TxID, ok bool) {
	if !LooksLikeSTUN(b) {
		return 0, TxID{}, false
	}
	copy(id[:], b[8:STUNHeaderLen])
	return binary.BigEndian.Uint16(b[0:2]), id, true
}

// stunAttrIter walks the attributes of a message whose header has passed
// stunCheckHeader.
type stunAttrIter struct {
	msg []byte // the whole message
	off int    // offset of the next attribute header
}

// next returns the next attribute's type, value and offset of its header.
// done is true at the end of the message; err is ErrTruncated if the
// attribute runs past the end.
func (it *stunAttrIter) next() (typ uint16, val []byte, at int, done bool, err error) {
	at = it.off
	if len(it.msg)-at < stunAttrHeaderLen {
		// stunCheckHeader guarantees a multiple of 4 bytes remain, so
		// this is the clean end of the message.
		return 0, nil, at, true, nil
	}
	typ = binary.BigEndian.Uint16(it.msg[at:])
	n := int(binary.BigEndian.Uint16(it.msg[at+2:]))
	padded := (n + 3) &^ 3
	start := at + stunAttrHeaderLen
	if padded > len(it.msg)-start {
		return 0, nil, at, false, ErrTruncated
	}
	it.off = start + padded
	return typ, it.msg[start : start+n], at, false, nil
}

// stunCheckFingerprint verifies a FINGERPRINT attribute whose header starts at
// offset at of msg: it must be the last attribute and hold the CRC-32 of
// everything before it, XORed with "STUN".
func stunCheckFingerprint(msg []byte, at int, val []byte) error {
	if len(val) != 4 || at+stunFingerprintLen != len(msg) {
		return ErrBadFingerprint
	}
	if crc32.ChecksumIEEE(msg[:at])^stunFingerprintXOR != binary.BigEndian.Uint32(val) {
		return ErrBadFingerprint
	}
	return nil
}

// BindingRequest is what a responder needs to know of a Binding Request.
type BindingRequest struct {
	// ID is the transaction ID, echoed in the response.
	ID TxID
	// Fingerprint is set when the request ended in a valid FINGERPRINT; the response then carries one too.
	Fingerprint bool
	// ResponsePort is the RESPONSE-PORT attribute (RFC 5780 section 7.5), 0 if absent: the response goes to the request's source address at this port.
	ResponsePort uint16
	// Credentials is set when the request carries USERNAME, USERHASH or MESSAGE-INTEGRITY: it is addressed to a server that holds credentials (an ICE agent, a TURN server), not to a plain responder.
	Credentials bool
	// Unknown lists the first comprehension-required attributes (0x0000-0x7FFF) the codec does not understand; NUnknown counts them all. RFC 8489 answers such a request with error 420 naming them.
	Unknown  [4]uint16
	NUnknown int
}

// ReadBindingRequest parses b as an RFC 5389/8489 Binding Request: magic
// cookie, exact length, every attribute well-formed to the last byte, and a
// FINGERPRINT, when present, last and valid (with requireFingerprint, it
// must be present). Attributes it understands are PADDING (ignored) and
// RESPONSE-PORT; credentials and other comprehension-required attributes
// are reported, not refused, so the caller decides (pass the request on,
// or answer 420). RFC 3489 requests (no magic cookie) are ErrNotSTUN. It
// does not allocate.
func ReadBindingRequest(b []byte, requireFingerprint bool) (BindingRequest, error) {
	var r BindingRequest
	if err := stunCheckHeader(b); err != nil {
		return r, err
	}
	if binary.BigEndian.Uint16(b[0:2]) != stunTypeBindingRequest {
		return r, ErrWrongType
	}
	copy(r.ID[:], b[8:STUNHeaderLen])
	it := stunAttrIter{msg: b, off: STUNHeaderLen}
	for {
		typ, val, at, done, err := it.next()
		if err != nil {
			return BindingRequest{}, err
		}
		if done {
			break
		}
		if typ == stunAttrFingerprint {
			if err := stunCheckFingerprint(b, at, val); err != nil {
				return BindingRequest{}, err
			}
			r.Fingerprint = true
			break
		}
		switch {
		case typ == stunAttrResponsePort:
			if len(val) != 4 || binary.BigEndian.Uint16(val) == 0 {
				return BindingRequest{}, ErrBadAttribute
			}
			if r.ResponsePort == 0 {
				r.ResponsePort = binary.BigEndian.Uint16(val)
			}
		case typ == stunAttrUsername || typ == stunAttrUserhash || typ == stunAttrMessageIntegrity || typ == stunAttrMessageIntegritySHA256:
			r.Credentials = true
		case typ >= 0x8000 || typ == stunAttrPadding:
			// Comprehension-optional, or PADDING: ignored.
		default:
			if r.NUnknown < len(r.Unknown) {
				r.Unknown[r.NUnknown] = typ
			}
			r.NUnknown++
		}
	}
	if requireFingerprint && !r.Fingerprint {
		return BindingRequest{}, ErrBadFingerprint
	}
	return r, nil
}

// ParseBindingRequest returns the transaction ID of b if it is a
// well-formed Binding Request that a plain responder can answer as it
// stands: ReadBindingRequest's rules, with no credentials and no attribute
// it does not understand (those are ErrUnknownAttribute). FINGERPRINT is
// optional in the RFCs and common clients (coturn's, pion's) omit it.
func ParseBindingRequest(b []byte) (TxID, error) {
	r, err := ReadBindingRequest(b, false)
	if err != nil {
		return TxID{}, err
	}
	if r.Credentials || r.NUnknown > 0 {
		return TxID{}, ErrUnknownAttribute
	}
	return r.ID, nil
}

// ParseFingerprintedBindingRequest is the strict form (stun_strict): the
// request must end in a valid FINGERPRINT, and then its other attributes
// do not stop it. It suits servers whose own protocol could look like
// STUN: the odds that application data carries the magic cookie, a
// consistent length and a matching CRC-32 are about 2^-64.
func ParseFingerprintedBindingRequest(b []byte) (TxID, error) {
	r, err := ReadBindingRequest(b, true)
	if err != nil {
		return TxID{}, err
	}
	return r.ID, nil
}

// AppendUnknownAttributes appends a 420 (Unknown Attribute) Binding Error
// Response to req, listing the attributes it did not understand in
// UNKNOWN-ATTRIBUTES (RFC 8489 section 14.9), with a FINGERPRINT when the
// request had one.
func AppendUnknownAttributes(dst []byte, req BindingRequest) []byte {
	const reason = "Unknown Attribute"
	start := len(dst)
	n := min(req.NUnknown, len(req.Unknown))
	errLen := 4 + len(reason)
	unkLen := 2 * n
	body := stunAttrHeaderLen + (errLen+3)&^3 + stunAttrHeaderLen + (unkLen+3)&^3
	if req.Fingerprint {
		body += stunFingerprintLen
	}
	dst = stunAppendHeader(dst, stunTypeBindingError, body, req.ID)
	dst = binary.BigEndian.AppendUint16(dst, stunAttrErrorCode)
	dst = binary.BigEndian.AppendUint16(dst, uint16(errLen))
	dst = append(dst, 0, 0, 4, 20) // class 4, number 20
	dst = append(dst, reason...)
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	dst = binary.BigEndian.AppendUint16(dst, stunAttrUnknownAttributes)
	dst = binary.BigEndian.AppendUint16(dst, uint16(unkLen))
	for _, typ := range req.Unknown[:n] {
		dst = binary.BigEndian.AppendUint16(dst, typ)
	}
	for (len(dst)-start)%4 != 0 {
		dst = append(dst, 0)
	}
	if !req.Fingerprint {
		return dst
	}
	return stunAppendFingerprint(dst, dst[start:])
}

// BindingResponse is a parsed Binding Success Response: the transaction ID
// to match against the request, and the reflexive address the server saw.
type BindingResponse struct {
	// ID is the transaction ID of the request being answered.
	ID TxID
	// Mapped is the address and port the server saw the request come from; IPv4-mapped IPv6 addresses are reported as IPv4.
	Mapped netip.AddrPort
	// HasMapped is false if the response carried no address attribute.
	HasMapped bool
	// Other is the server's alternate address from OTHER-ADDRESS (RFC 5780) or RFC 3489's CHANGED-ADDRESS; HasOther is false without one.
	Other    netip.AddrPort
	HasOther bool
}

// ParseBindingResponse parses a Binding Success Response. It takes the
// address from XOR-MAPPED-ADDRESS (also under its old code 0x8020) and falls
// back to MAPPED-ADDRESS for old servers. A FINGERPRINT, when present, must
// be last and valid. MESSAGE-INTEGRITY and unknown attributes are skipped,
// and, as RFC 5389 section 15.4 requires, so is everything after
// MESSAGE-INTEGRITY except FINGERPRINT. It does not allocate and does not
// panic on any input.
func ParseBindingResponse(b []byte) (BindingResponse, error) {
	var r BindingResponse
	if err := stunCheckHeader(b); err != nil {
		return r, err
	}
	if binary.BigEndian.Uint16(b[0:2]) != stunTypeBindingSuccess {
		return r, ErrWrongType
	}
	copy(r.ID[:], b[8:STUNHeaderLen])
	var (
		xorAddr, plainAddr netip.AddrPort
		hasXOR, hasPlain   bool
		afterIntegrity     bool
	)
	it := stunAttrIter{msg: b, off: STUNHeaderLen}
	for {
		typ, val, at, done, err := it.next()
		if err != nil {
			return BindingResponse{}, err
		}
		if done {
			break
		}
		if typ == stunAttrFingerprint {
			if err := stunCheckFingerprint(b, at, val); err != nil {
				return BindingResponse{}, err
			}
			break
		}
		if afterIntegrity {
			continue
		}
		switch typ {
		case stunAttrXORMappedAddress, stunAttrXORMappedAddressOld:
			if hasXOR {
				continue // first one wins
			}
			ap, err := stunDecodeAddress(val, true, r.ID)
			if err != nil {
				return BindingResponse{}, err
			}
			xorAddr, hasXOR = ap, true
		case stunAttrMappedAddress:
			if hasPlain {
				continue
			}
			ap, err := stunDecodeAddress(val, false, r.ID)
			if err != nil {
				return BindingResponse{}, err
			}
			plainAddr, hasPlain = ap, true
		case stunAttrOtherAddress, stunAttrChangedAddress:
			if r.HasOther {
				continue
			}
			ap, err := stunDecodeAddress(val, false, r.ID)
			if err != nil {
				return BindingResponse{}, err
			}
			r.Other, r.HasOther = ap, true
		case stunAttrMessageIntegrity, stunAttrMessageIntegritySHA256:
			afterIntegrity = true
		}
	}
	switch {
	case hasXOR:
		r.Mapped, r.HasMapped = xorAddr, true
	case hasPlain:
		r.Mapped, r.HasMapped = plainAddr, true
	}
	return r, nil
}

// stunDecodeAddress decodes a MAPPED-ADDRESS value, or an XOR-MAPPED-ADDRESS
// one when xor is set. IPv4-mapped IPv6 addresses come back as IPv4 so that
// the same endpoint always compares equal, whichever way a server spelled it.
func stunDecodeAddress(val []byte, xor bool, id TxID) (netip.AddrPort, error) {
	if len(val) < 4 {
		return netip.AddrPort{}, ErrBadAttribute
	}
	port := binary.BigEndian.Uint16(val[2:4])
	var key [16]byte
	if xor {
		port ^= MagicCookie >> 16
		key = stunXORKey(id)
	}
	raw := val[4:]
	var addr netip.Addr
	switch {
	case val[1] == stunFamilyIPv4 && len(raw) == 4:
		var ip [4]byte
		for i := range ip {
			ip[i] = raw[i] ^ key[i]
		}
		addr = netip.AddrFrom4(ip)
	case val[1] == stunFamilyIPv6 && len(raw) == 16:
		var ip [16]byte
		for i := range ip {
			ip[i] = raw[i] ^ key[i]
		}
		addr = netip.AddrFrom16(ip).Unmap()
	default:
		return netip.AddrPort{}, ErrBadAttribute
	}
	return netip.AddrPortFrom(addr, port), nil
}

// IsRequest reports whether a STUN message type (from PeekTxID) is of the
// request class: a reply matcher that sees its own transaction ID in a
// request is looking at its heartbeat echoed back, not at an answer.
func IsRequest(typ uint16) bool { return typ&0x0110 == 0 }
