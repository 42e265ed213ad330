package keepalive

import (
	"bytes"
	"strings"
	"testing"
)

func TestPayloadParse(t *testing.T) {
	tests := []struct {
		in    string
		kind  PayloadKind
		bytes []byte // nil means nil (stun)
		str   string
	}{
		{"", PayloadEmpty, []byte{}, "empty"},
		{"empty", PayloadEmpty, []byte{}, "empty"},
		{"nat-t", PayloadNATT, []byte{0xFF}, "nat-t"},
		{"crlf", PayloadCRLF, []byte("\r\n"), "crlf"},
		{"stun", PayloadSTUN, nil, "stun"},
		{"hex:00", PayloadBytes, []byte{0}, "hex:00"},
		{"hex:deadbeef", PayloadBytes, []byte{0xde, 0xad, 0xbe, 0xef}, "hex:deadbeef"},
		{"hex:DEADbeef", PayloadBytes, []byte{0xde, 0xad, 0xbe, 0xef}, "hex:DEADbeef"},
		{"hex:ff", PayloadBytes, []byte{0xFF}, "hex:ff"},
		{"text:ping", PayloadBytes, []byte("ping"), "text:ping"},
		{"text:a,b", PayloadBytes, []byte("a,b"), "text:a,b"},
		{"text: ", PayloadBytes, []byte(" "), "text: "},
		{"text:hex:00", PayloadBytes, []byte("hex:00"), "text:hex:00"},
		{"text:\r\n", PayloadBytes, []byte("\r\n"), "text:\r\n"},
		{"text:ünïcode", PayloadBytes, []byte("ünïcode"), "text:ünïcode"},
		{"hex:" + strings.Repeat("ab", MaxPayload), PayloadBytes, bytes.Repeat([]byte{0xab}, MaxPayload), "hex:" + strings.Repeat("ab", MaxPayload)},
		{"text:" + strings.Repeat("x", MaxPayload), PayloadBytes, bytes.Repeat([]byte("x"), MaxPayload), "text:" + strings.Repeat("x", MaxPayload)},
	}
	for _, tt := range tests {
		name := tt.in
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			p, err := ParsePayload(tt.in)
			if err != nil {
				t.Fatalf("ParsePayload(%q): %v", tt.in, err)
			}
			if p.Kind != tt.kind {
				t.Errorf("Kind %d, want %d", p.Kind, tt.kind)
			}
			if (p.Bytes == nil) != (tt.bytes == nil) || !bytes.Equal(p.Bytes, tt.bytes) {
				t.Errorf("Bytes %x (nil %v), want %x (nil %v)", p.Bytes, p.Bytes == nil, tt.bytes, tt.bytes == nil)
			}
			if p.String() != tt.str {
				t.Errorf("String() %q, want %q", p.String(), tt.str)
			}
			// String round-trips.
			q, err := ParsePayload(p.String())
			if err != nil || q.Kind != p.Kind || !bytes.Equal(q.Bytes, p.Bytes) || q.String() != p.String() {
				t.Errorf("round trip of %q: %+v, %v", p.String(), q, err)
			}
		})
	}
}

func TestPayloadZeroValue(t *testing.T) {
	var p Payload
	if p.Kind != PayloadEmpty || p.String() != "empty" {
		t.Errorf("zero Payload: kind %d string %q", p.Kind, p.String())
	}
	var r Reply
	if r.Kind != ReplyNone || r.String() != "none" || r.Enabled() || r.MatchBytes(nil) || r.MatchBytes([]byte{}) {
		t.Errorf("zero Reply: %+v %q", r, r.String())
	}
}

func TestPayloadParseErrors(t *testing.T) {
	tests := []struct {
		in    string
		frags []string
	}{
		{"bogus", []string{`payload "bogus"`, "unknown kind"}},
		{"none", []string{`payload "none"`, "unknown kind"}},
		{"CRLF", []string{"unknown kind"}},
		{"Empty", []string{"unknown kind"}},
		{"nat_t", []string{"unknown kind"}},
		{" crlf", []string{"unknown kind"}},
		{"hex", []string{"unknown kind"}},
		{"text", []string{"unknown kind"}},
		{"HEX:00", []string{"unknown kind"}},
		{"hex:", []string{`payload "hex:"`, "hex: needs at least one byte"}},
		{"text:", []string{`payload "text:"`, "text: needs at least one character"}},
		{"hex:zz", []string{`payload "hex:zz"`, "bad hex", "invalid byte"}},
		{"hex:abc", []string{"bad hex", "odd length"}},
		{"hex:0x00", []string{"bad hex"}},
		{"hex:de ad", []string{"bad hex"}},
		{"hex:" + strings.Repeat("00", MaxPayload+1), []string{"1201 bytes is over the 1200-byte limit"}},
		{"text:" + strings.Repeat("x", MaxPayload+1), []string{"1201 bytes is over the 1200-byte limit"}},
	}
	for _, tt := range tests {
		name := tt.in
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			p, err := ParsePayload(tt.in)
			if err == nil {
				t.Fatalf("ParsePayload(%q) = %+v, want error", tt.in, p)
			}
			msg := err.Error()
			for _, f := range append(tt.frags, "want empty, nat-t, crlf, stun, hex:<bytes> or text:<string>") {
				if !strings.Contains(msg, f) {
					t.Errorf("error %q does not contain %q", msg, f)
				}
			}
		})
	}
}

func TestReplyParse(t *testing.T) {
	payload := func(s string) Payload {
		t.Helper()
		p, err := ParsePayload(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		in, payload string
		kind        ReplyKind
		bytes       []byte
		str         string
		enabled     bool
	}{
		{"", "empty", ReplyNone, nil, "none", false},
		{"", "crlf", ReplyNone, nil, "none", false},
		{"", "nat-t", ReplyNone, nil, "none", false},
		{"", "hex:00", ReplyNone, nil, "none", false},
		{"", "stun", ReplySTUN, nil, "stun", true},
		{"none", "empty", ReplyNone, nil, "none", false},
		{"none", "text:ping", ReplyNone, nil, "none", false},
		{"stun", "stun", ReplySTUN, nil, "stun", true},
		{"hex:0d0a", "crlf", ReplyBytes, []byte("\r\n"), "hex:0d0a", true},
		{"text:pong", "text:ping", ReplyBytes, []byte("pong"), "text:pong", true},
		{"text:pong", "empty", ReplyBytes, []byte("pong"), "text:pong", true},
		{"hex:ff", "nat-t", ReplyBytes, []byte{0xff}, "hex:ff", true},
		{"text:" + strings.Repeat("y", MaxPayload), "empty", ReplyBytes, bytes.Repeat([]byte("y"), MaxPayload), "text:" + strings.Repeat("y", MaxPayload), true},
	}
	for _, tt := range tests {
		name := tt.in + "/" + tt.payload
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			p := payload(tt.payload)
			r, err := ParseReply(tt.in, p)
			if err != nil {
				t.Fatalf("ParseReply(%q, %s): %v", tt.in, p, err)
			}
			if r.Kind != tt.kind || !bytes.Equal(r.Bytes, tt.bytes) || r.String() != tt.str || r.Enabled() != tt.enabled {
				t.Errorf("got kind %d bytes %x string %q enabled %v, want %d %x %q %v",
					r.Kind, r.Bytes, r.String(), r.Enabled(), tt.kind, tt.bytes, tt.str, tt.enabled)
			}
			q, err := ParseReply(r.String(), p)
			if err != nil || q.Kind != r.Kind || !bytes.Equal(q.Bytes, r.Bytes) || q.String() != r.String() {
				t.Errorf("round trip of %q: %+v, %v", r.String(), q, err)
			}
		})
	}
}

func TestReplyParseErrors(t *testing.T) {
	tests := []struct {
		in, payload string
		frags       []string
	}{
		{"none", "stun", []string{"reply none with payload stun", "always matched"}},
		{"stun", "empty", []string{"reply stun needs payload stun (got payload empty)"}},
		{"stun", "crlf", []string{"reply stun needs payload stun (got payload crlf)"}},
		{"stun", "hex:00", []string{"(got payload hex:00)"}},
		{"hex:00", "stun", []string{`reply "hex:00" with payload stun`, "transaction ID"}},
		{"text:x", "stun", []string{`reply "text:x" with payload stun`}},
		{"bogus", "stun", []string{`reply "bogus" with payload stun`}},
		{"bogus", "crlf", []string{`reply "bogus"`, "unknown kind", "want none, stun, hex:<bytes> or text:<string>"}},
		{"empty", "crlf", []string{`reply "empty"`, "unknown kind"}},
		{"crlf", "crlf", []string{`reply "crlf"`, "unknown kind"}},
		{"NONE", "crlf", []string{"unknown kind"}},
		{"hex:", "crlf", []string{"hex: needs at least one byte"}},
		{"hex:zz", "crlf", []string{"bad hex"}},
		{"text:", "crlf", []string{"text: needs at least one character"}},
		{"hex:" + strings.Repeat("00", MaxPayload+1), "crlf", []string{"over the 1200-byte limit"}},
	}
	for _, tt := range tests {
		name := tt.in + "/" + tt.payload
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			p, err := ParsePayload(tt.payload)
			if err != nil {
				t.Fatal(err)
			}
			r, err := ParseReply(tt.in, p)
			if err == nil {
				t.Fatalf("ParseReply(%q, %s) = %+v, want error", tt.in, p, r)
			}
			for _, f := range tt.frags {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not contain %q", err, f)
				}
			}
		})
	}
}

func TestReplyMatchBytes(t *testing.T) {
	crlf, _ := ParsePayload("crlf")
	stun, _ := ParsePayload("stun")
	pong, err := ParseReply("text:pong", crlf)
	if err != nil {
		t.Fatal(err)
	}
	none, _ := ParseReply("none", crlf)
	stunReply, _ := ParseReply("stun", stun)
	tests := []struct {
		r    Reply
		b    []byte
		want bool
	}{
		{pong, []byte("pong"), true},
		{pong, []byte("pong\n"), false},
		{pong, []byte("pon"), false},
		{pong, []byte("PONG"), false},
		{pong, nil, false},
		{pong, []byte{}, false},
		{none, []byte("pong"), false},
		{none, nil, false},
		{stunReply, nil, false},
		{stunReply, []byte("pong"), false},
		// Bytes are only compared for a byte matcher.
		{Reply{Kind: ReplyNone, Bytes: []byte("pong")}, []byte("pong"), false},
		{Reply{Kind: ReplySTUN, Bytes: []byte("pong")}, []byte("pong"), false},
		{Reply{Kind: ReplyBytes, Bytes: []byte{0xff}}, []byte{0xff}, true},
	}
	for i, tt := range tests {
		if got := tt.r.MatchBytes(tt.b); got != tt.want {
			t.Errorf("%d: %s.MatchBytes(%q) = %v, want %v", i, tt.r, tt.b, got, tt.want)
		}
	}
}

// TestPayloadBytesIndependent: two parses never share a buffer, so a relay
// that writes into one route's payload cannot corrupt another's.
func TestPayloadBytesIndependent(t *testing.T) {
	for _, s := range []string{"nat-t", "crlf", "hex:0102", "text:ab"} {
		a, _ := ParsePayload(s)
		b, _ := ParsePayload(s)
		a.Bytes[0] ^= 0xff
		if b.Bytes[0] == a.Bytes[0] {
			t.Errorf("%s: parses share their bytes", s)
		}
	}
}

func TestPayloadReplyStringKinds(t *testing.T) {
	// Every PayloadKind has a spelling that parses to it.
	seen := map[PayloadKind]bool{}
	for _, s := range []string{"empty", "nat-t", "crlf", "stun", "hex:01", "text:a"} {
		p, err := ParsePayload(s)
		if err != nil {
			t.Fatal(err)
		}
		seen[p.Kind] = true
	}
	for k := PayloadEmpty; k <= PayloadBytes; k++ {
		if !seen[k] {
			t.Errorf("payload kind %d has no spelling", k)
		}
	}
}
