package keepalive

import (
	"net/netip"
	"testing"
)

// stunFuzzSeeds returns the RFC 5769 vectors, encoder outputs and a few
// near misses, so the fuzzers start from inputs that reach deep into the
// attribute walk.
func stunFuzzSeeds(tb testing.TB) [][]byte {
	id := TxID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	xor4 := AppendBindingSuccess(nil, id, netip.MustParseAddrPort("192.0.2.1:32853"))[20:32]
	return [][]byte{
		stunUnhex(tb, rfc5769Request),
		stunUnhex(tb, rfc5769IPv4Response),
		stunUnhex(tb, rfc5769IPv6Response),
		AppendBindingRequest(nil, id),
		AppendProbeRequest(nil, id, 40000),
		stunBuild(0x0101, id, false, xor4, stunAttr(0x802C, 0, 1, 0x0d, 0x96, 198, 51, 100, 8)),
		AppendBindingSuccess(nil, id, netip.MustParseAddrPort("192.0.2.1:32853")),
		AppendBindingSuccess(nil, id, netip.MustParseAddrPort("[2001:db8::1]:443")),
		AppendBindingSuccess(nil, id, netip.AddrPort{}),
		stunBuild(0x0101, id, false, stunAttr(0x0001, 0, 1, 0x9c, 0x40, 198, 51, 100, 7)),
		stunBuild(0x0101, id, true, stunAttr(0x0008, make([]byte, 20)...), xor4),
		stunBuild(0x0101, id, false, []byte{0x00, 0x20, 0xff, 0xff, 0, 1, 0, 0}),
		{},
	}
}

func FuzzParseBindingResponse(f *testing.F) {
	for _, s := range stunFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		looks := LooksLikeSTUN(b)
		typ, pid, ok := PeekTxID(b)
		if ok != looks {
			t.Fatalf("PeekTxID ok = %v, LooksLikeSTUN = %v", ok, looks)
		}
		r, err := ParseBindingResponse(b)
		if err != nil {
			if r != (BindingResponse{}) {
				t.Fatalf("failed parse returned %+v", r)
			}
			return
		}
		if !looks || typ != 0x0101 || pid != r.ID {
			t.Fatalf("parsed a message PeekTxID sees as %#04x %x %v", typ, pid, ok)
		}
		if r.HasMapped != r.Mapped.IsValid() {
			t.Fatalf("HasMapped %v with Mapped %v", r.HasMapped, r.Mapped)
		}
		if r.Mapped.Addr().Is4In6() || r.Mapped.Addr().Zone() != "" {
			t.Fatalf("non-canonical mapped address %v", r.Mapped)
		}
		again := AppendBindingSuccess(nil, r.ID, r.Mapped)
		r2, err := ParseBindingResponse(again)
		r2.Other, r2.HasOther = r.Other, r.HasOther // the encoder writes no OTHER-ADDRESS
		if err != nil || r2 != r {
			t.Fatalf("re-encoded %x parses as %+v, %v; want %+v", again, r2, err, r)
		}
		if !stunFingerprintOK(again) {
			t.Fatalf("re-encoded %x has a bad fingerprint", again)
		}
	})
}

// fuzzCheckRequestParse checks what every request parser promises: a failed
// parse returns the zero ID, a good one the ID of a Binding Request as
// PeekTxID sees it. It reports whether the parse succeeded.
func fuzzCheckRequestParse(t *testing.T, b []byte, id TxID, err error) bool {
	t.Helper()
	if err != nil {
		if id != (TxID{}) {
			t.Fatalf("failed parse returned ID %x", id)
		}
		return false
	}
	typ, pid, ok := PeekTxID(b)
	if !ok || typ != 0x0001 || pid != id {
		t.Fatalf("parsed a message PeekTxID sees as %#04x %x %v", typ, pid, ok)
	}
	return true
}

func FuzzParseBindingRequest(f *testing.F) {
	for _, s := range stunFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseBindingRequest(b)
		if !fuzzCheckRequestParse(t, b, id, err) {
			return
		}
		again := AppendBindingRequest(nil, id)
		if id2, err := ParseBindingRequest(again); err != nil || id2 != id {
			t.Fatalf("re-encoded request parses as %x, %v", id2, err)
		}
		// Where the strict parser accepts the same bytes, it reads the same ID.
		if sid, serr := ParseFingerprintedBindingRequest(b); serr == nil && sid != id {
			t.Fatalf("strict parse ID %x, standard %x", sid, id)
		}
	})
}

func FuzzParseFingerprintedBindingRequest(f *testing.F) {
	for _, s := range stunFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseFingerprintedBindingRequest(b)
		if !fuzzCheckRequestParse(t, b, id, err) {
			return
		}
		if !stunFingerprintOK(b) {
			t.Fatalf("accepted %x without a valid trailing FINGERPRINT", b)
		}
	})
}

func FuzzReadBindingRequest(f *testing.F) {
	for _, s := range stunFuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadBindingRequest(b, false)
		if err != nil {
			if r != (BindingRequest{}) {
				t.Fatalf("failed parse returned %+v", r)
			}
			return
		}
		if typ, id, ok := PeekTxID(b); !ok || typ != 0x0001 || id != r.ID {
			t.Fatalf("parsed a message PeekTxID sees as %#04x %x %v", typ, id, ok)
		}
		if r.Fingerprint != stunFingerprintOK(b) {
			t.Fatalf("Fingerprint %v for %x", r.Fingerprint, b)
		}
		// Every answer built from it parses back.
		if e := AppendUnknownAttributes(nil, r); !LooksLikeSTUN(e) {
			t.Fatalf("420 answer %x is not STUN", e)
		}
	})
}

// FuzzResponsePort: every probe request (RESPONSE-PORT or none) the prober can build
// parses back with its port and fingerprint, and an answer to it carries
// any OTHER-ADDRESS the server adds back unchanged.
func FuzzResponsePort(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, uint16(3478))
	f.Add(make([]byte, 12), uint16(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(65535))
	f.Fuzz(func(t *testing.T, raw []byte, port uint16) {
		var id TxID
		copy(id[:], raw)
		b := AppendProbeRequest(nil, id, port)
		r, err := ReadBindingRequest(b, true)
		if err != nil {
			t.Fatalf("own request %x does not parse: %v", b, err)
		}
		if r.ID != id || r.ResponsePort != port || !r.Fingerprint || r.NUnknown != 0 || r.Credentials {
			t.Fatalf("request for port %d parsed as %+v", port, r)
		}
		if want := 52 + map[bool]int{true: 8}[port != 0]; len(b) != want {
			t.Fatalf("probe request is %d bytes, want %d", len(b), want)
		}
		other := netip.AddrPortFrom(netip.AddrFrom4([4]byte{raw0(raw), 51, 100, 8}), port)
		resp := stunBuild(0x0101, id, true, stunAttr(0x802C, 0, 1, byte(port>>8), byte(port), raw0(raw), 51, 100, 8))
		got, err := ParseBindingResponse(resp)
		if err != nil || !got.HasOther || got.Other != other {
			t.Fatalf("OTHER-ADDRESS %v came back as %+v, %v", other, got, err)
		}
	})
}

func raw0(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}
