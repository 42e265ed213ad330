package keepalive

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
)

// PayloadKind names the family of a heartbeat payload.
type PayloadKind uint8

// Heartbeat payload kinds.
const (
	PayloadEmpty PayloadKind = iota // zero-length datagram (WireGuard-style keepalive)
	PayloadNATT                     // RFC 3948 NAT-keepalive: one byte 0xFF
	PayloadCRLF                     // RFC 5626 SIP keepalive: "\r\n"
	PayloadSTUN                     // RFC 5389 Binding Request, a fresh transaction per beat
	PayloadBytes                    // user-supplied hex: or text: bytes
)

// MaxPayload is the largest heartbeat payload accepted; heartbeats should be small.
const MaxPayload = 1200

// Payload is what a heartbeat carries.
type Payload struct {
	Kind  PayloadKind
	Bytes []byte // fixed content; nil for PayloadSTUN, which is built per beat
	spec  string
}

// String returns the payload in the form ParsePayload accepts.
func (p Payload) String() string {
	if p.spec == "" {
		return "empty"
	}
	return p.spec
}

// ParsePayload parses empty, nat-t, crlf, stun, hex:<bytes> or text:<string>.
func ParsePayload(s string) (Payload, error) {
	switch s {
	case "", "empty":
		return Payload{Kind: PayloadEmpty, Bytes: []byte{}, spec: "empty"}, nil
	case "nat-t":
		return Payload{Kind: PayloadNATT, Bytes: []byte{0xFF}, spec: s}, nil
	case "crlf":
		return Payload{Kind: PayloadCRLF, Bytes: []byte("\r\n"), spec: s}, nil
	case "stun":
		return Payload{Kind: PayloadSTUN, spec: s}, nil
	}
	b, err := parseBytesSpec(s)
	if err != nil {
		return Payload{}, fmt.Errorf("payload %q: %w (want empty, nat-t, crlf, stun, hex:<bytes> or text:<string>)", s, err)
	}
	return Payload{Kind: PayloadBytes, Bytes: b, spec: s}, nil
}

// parseBytesSpec decodes hex:... or text:... into bytes.
func parseBytesSpec(s string) ([]byte, error) {
	var b []byte
	switch {
	case strings.HasPrefix(s, "hex:"):
		h := strings.TrimPrefix(s, "hex:")
		if h == "" {
			return nil, fmt.Errorf("hex: needs at least one byte")
		}
		var err error
		if b, err = hex.DecodeString(h); err != nil {
			return nil, fmt.Errorf("bad hex: %v", err)
		}
	case strings.HasPrefix(s, "text:"):
		b = []byte(strings.TrimPrefix(s, "text:"))
		if len(b) == 0 {
			return nil, fmt.Errorf("text: needs at least one character")
		}
	default:
		return nil, fmt.Errorf("unknown kind")
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("%d bytes is over the %d-byte limit", len(b), MaxPayload)
	}
	return b, nil
}

// ReplyKind names how heartbeat replies are recognised.
type ReplyKind uint8

// Reply kinds.
const (
	ReplyNone  ReplyKind = iota // nothing is ever consumed
	ReplySTUN                   // a Binding Success Response to an outstanding request
	ReplyBytes                  // a datagram equal to the configured bytes
)

// Reply recognises heartbeat replies ("pongs") so they are consumed and never
// reach the application.
type Reply struct {
	Kind  ReplyKind
	Bytes []byte
	spec  string
}

// String returns the reply matcher in the form ParseReply accepts.
func (r Reply) String() string {
	if r.spec == "" {
		return "none"
	}
	return r.spec
}

// ParseReply parses a reply matcher: "" (the payload's default), none, stun,
// hex:<bytes> or text:<string>.
func ParseReply(s string, p Payload) (Reply, error) {
	switch s {
	case "":
		if p.Kind == PayloadSTUN {
			return Reply{Kind: ReplySTUN, spec: "stun"}, nil
		}
		return Reply{Kind: ReplyNone, spec: "none"}, nil
	case "none":
		if p.Kind == PayloadSTUN {
			return Reply{}, fmt.Errorf("reply none with payload stun: STUN responses are always matched")
		}
		return Reply{Kind: ReplyNone, spec: s}, nil
	case "stun":
		if p.Kind != PayloadSTUN {
			return Reply{}, fmt.Errorf("reply stun needs payload stun (got payload %s)", p)
		}
		return Reply{Kind: ReplySTUN, spec: s}, nil
	}
	if p.Kind == PayloadSTUN {
		return Reply{}, fmt.Errorf("reply %q with payload stun: STUN responses are matched by transaction ID", s)
	}
	b, err := parseBytesSpec(s)
	if err != nil {
		return Reply{}, fmt.Errorf("reply %q: %w (want none, stun, hex:<bytes> or text:<string>)", s, err)
	}
	return Reply{Kind: ReplyBytes, Bytes: b, spec: s}, nil
}

// Enabled reports whether replies are matched and consumed at all.
func (r Reply) Enabled() bool { return r.Kind != ReplyNone }

// MatchBytes reports whether b is the configured byte reply.
func (r Reply) MatchBytes(b []byte) bool {
	return r.Kind == ReplyBytes && bytes.Equal(b, r.Bytes)
}
