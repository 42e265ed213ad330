package main

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/caarlos0/env/v11"

	"github.com/natkeep/natkeep/relay"
)

// interceptEnv is the environment of transparent interception, as
// caarlos0/env parses it. `natkeep intercept` reads only these variables;
// the help tags are written for `natkeep help`.
type interceptEnv struct {
	Intercept  string `env:"INTERCEPT" help:"transparent interception: comma-separated PROTO:[PREFIX:]PORT[-PORT][?key=value&...] such as udp:5060,udp:10.0.0.0/8:3478,tcp:[fd00::/8]:8000-8100; empty = off"`
	TCPPort    int    `env:"INTERCEPT_TCP_PORT" envDefault:"15001" help:"natkeep's transparent TCP listener; intercepted connections are redirected to it"`
	UDPPort    int    `env:"INTERCEPT_UDP_PORT" envDefault:"15002" help:"natkeep's TPROXY UDP listener; intercepted datagrams are diverted to it"`
	Mark       string `env:"INTERCEPT_MARK" envDefault:"0x4e4b" help:"fwmark that steers intercepted UDP into the TPROXY routing table"`
	BypassMark string `env:"INTERCEPT_BYPASS_MARK" envDefault:"0x4e4c" help:"SO_MARK on natkeep's own sockets; packets carrying it are never intercepted (setting it needs CAP_NET_ADMIN)"`
	UID        string `env:"INTERCEPT_UID" envDefault:"65532" help:"natkeep's user ID; its packets are never intercepted (needs no capability); off = rely on the bypass mark alone"`
	Table      string `env:"INTERCEPT_TABLE" envDefault:"100" help:"policy routing table for TPROXY (local default routes to lo)"`
}

// interceptConfig is the validated interception setup: what `natkeep
// intercept install` programs and what the relay must serve.
type interceptConfig struct {
	// Rules in the order written; empty means interception is off.
	Rules []interceptRule
	// TCPPort is the port of natkeep's transparent TCP listener (REDIRECT
	// target); UDPPort that of the TPROXY UDP listener.
	TCPPort, UDPPort uint16
	// Mark is the fwmark set on intercepted UDP packets so that policy
	// routing sends them through lo into the TPROXY rule.
	Mark uint32
	// BypassMark is the SO_MARK natkeep sets on its own sockets: packets
	// carrying it are never intercepted.
	BypassMark uint32
	// UID is natkeep's user ID, whose packets are never intercepted either;
	// MatchUID is false when NATKEEP_INTERCEPT_UID=off.
	UID      uint32
	MatchUID bool
	// Table is the policy routing table holding the local default routes.
	Table uint32
}

// interceptRule is one NATKEEP_INTERCEPT entry: traffic of Proto to a
// destination in Prefix (any destination if Prefix is invalid) with a
// destination port in PortLo..PortHi is intercepted.
type interceptRule struct {
	Proto          string       // "udp" or "tcp"
	Prefix         netip.Prefix // invalid = any destination (IPv4 and IPv6)
	PortLo, PortHi uint16

	// N is the entry's position in NATKEEP_INTERCEPT (1-based) and Entry
	// its text, for messages; Query holds its per-entry overrides
	// (key=value&...), already checked for known keys and syntax.
	N     int
	Entry string
	Query string
}

// Enabled reports whether any traffic is intercepted.
func (c *interceptConfig) Enabled() bool { return len(c.Rules) > 0 }

// HasProto reports whether some rule intercepts proto ("udp" or "tcp").
func (c *interceptConfig) HasProto(proto string) bool {
	for _, r := range c.Rules {
		if r.Proto == proto {
			return true
		}
	}
	return false
}

// Match returns the first rule that intercepts proto traffic to dst, as
// the relay needs it to pick the entry's per-entry settings for a flow.
func (c *interceptConfig) Match(proto string, dst netip.AddrPort) (interceptRule, bool) {
	for _, r := range c.Rules {
		if r.Proto == proto && r.Matches(dst) {
			return r, true
		}
	}
	return interceptRule{}, false
}

// Matches reports whether dst is in the rule's prefix and port range.
func (r interceptRule) Matches(dst netip.AddrPort) bool {
	a := dst.Addr().Unmap()
	if r.Prefix.IsValid() && !r.Prefix.Contains(a) {
		return false
	}
	return dst.Port() >= r.PortLo && dst.Port() <= r.PortHi
}

// String is the rule in canonical NATKEEP_INTERCEPT syntax, without the
// overrides.
func (r interceptRule) String() string {
	var b strings.Builder
	b.WriteString(r.Proto)
	b.WriteByte(':')
	if r.Prefix.IsValid() {
		dst := r.Prefix.String()
		if r.Prefix.IsSingleIP() {
			dst = r.Prefix.Addr().String()
		}
		if r.Prefix.Addr().Is6() {
			dst = "[" + dst + "]"
		}
		b.WriteString(dst + ":")
	}
	b.WriteString(strconv.Itoa(int(r.PortLo)))
	if r.PortHi != r.PortLo {
		b.WriteString("-" + strconv.Itoa(int(r.PortHi)))
	}
	return b.String()
}

// fail formats an error about this entry the way NATKEEP_ROUTES errors are.
func (r interceptRule) fail(err error) error {
	return errorf("%s entry %d %q: %v", interceptKey("Intercept"), r.N, r.Entry, err)
}

// settings applies the entry's overrides to defs (the global defaults).
func (r interceptRule) settings(defs routeSettings) (routeSettings, error) {
	s := defs
	if err := applyQuery(&s, relay.Proto(r.Proto), r.Query, interceptEntries); err != nil {
		return s, r.fail(err)
	}
	return s, nil
}

// udpOptions is the relay configuration of a udp entry: the global
// defaults with the entry's overrides, validated; errors name the entry.
func (r interceptRule) udpOptions(defs routeSettings) (relay.UDPOptions, error) {
	s, err := r.settings(defs)
	if err != nil {
		return relay.UDPOptions{}, err
	}
	o, err := s.udp()
	if err != nil {
		return o, r.fail(err)
	}
	return o, nil
}

// tcpOptions is udpOptions for a tcp entry.
func (r interceptRule) tcpOptions(defs routeSettings) (relay.TCPOptions, error) {
	s, err := r.settings(defs)
	if err != nil {
		return relay.TCPOptions{}, err
	}
	o, err := s.tcp()
	if err != nil {
		return o, r.fail(err)
	}
	return o, nil
}

// interceptKey returns the variable name of an interceptEnv field.
func interceptKey(field string) string { return envKeyOf(reflect.TypeFor[interceptEnv](), field) }

// loadInterceptConfig parses and validates the NATKEEP_INTERCEPT*
// variables. An unset or blank NATKEEP_INTERCEPT gives a config with no
// rules (interception off); the other variables are validated anyway, so
// `intercept remove` and `show` find the same table and marks.
func loadInterceptConfig(environ map[string]string) (*interceptConfig, error) {
	var ie interceptEnv
	if err := env.ParseWithOptions(&ie, env.Options{Prefix: envPrefix, Environment: environ}); err != nil {
		return nil, describeEnvError(err, environ, interceptKey)
	}
	c := &interceptConfig{}
	var err error
	if c.TCPPort, err = listenerPort("TCPPort", ie.TCPPort); err != nil {
		return nil, err
	}
	if c.UDPPort, err = listenerPort("UDPPort", ie.UDPPort); err != nil {
		return nil, err
	}
	if c.Mark, err = parseMark("Mark", ie.Mark); err != nil {
		return nil, err
	}
	if c.BypassMark, err = parseMark("BypassMark", ie.BypassMark); err != nil {
		return nil, err
	}
	if c.BypassMark == c.Mark {
		return nil, errorf("%s=%q: must differ from %s (%#x): natkeep's own packets would be intercepted", interceptKey("BypassMark"), ie.BypassMark, interceptKey("Mark"), c.Mark)
	}
	switch uid := strings.TrimSpace(ie.UID); strings.ToLower(uid) {
	case "off", "none":
	default:
		n, err := strconv.ParseUint(uid, 10, 32)
		switch {
		case err != nil:
			return nil, errorf("%s=%q: want a numeric user ID or off", interceptKey("UID"), ie.UID)
		case n == 0:
			return nil, errorf("%s=%q: UID 0 would exempt every root process, a root app too; run natkeep as another user or set off and rely on %s", interceptKey("UID"), ie.UID, interceptKey("BypassMark"))
		case n == math.MaxUint32:
			return nil, errorf("%s=%q: 4294967295 is (uid_t)-1, not a user", interceptKey("UID"), ie.UID)
		}
		c.UID, c.MatchUID = uint32(n), true
	}
	table, err := strconv.ParseUint(strings.TrimSpace(ie.Table), 10, 32)
	switch {
	case err != nil && isDigits(strings.TrimSpace(ie.Table)), err == nil && table == 0:
		return nil, errorf("%s=%q: out of range 1..4294967295", interceptKey("Table"), ie.Table)
	case err != nil:
		return nil, errorf("%s=%q: want a routing table number", interceptKey("Table"), ie.Table)
	case table == 253 || table == 254 || table == 255:
		name := map[uint64]string{253: "default", 254: "main", 255: "local"}[table]
		return nil, errorf("%s=%q: that is the kernel's %s table; pick a table of natkeep's own", interceptKey("Table"), ie.Table, name)
	}
	c.Table = uint32(table)

	if strings.TrimSpace(ie.Intercept) != "" {
		if c.Rules, err = parseInterceptList(ie.Intercept); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func listenerPort(field string, n int) (uint16, error) {
	if n < 1 || n > 65535 {
		return 0, errorf("%s=%d: out of range 1..65535", interceptKey(field), n)
	}
	return uint16(n), nil
}

// parseMark accepts a 32-bit mark in decimal, 0x hex or 0o octal; 0 is
// what every unmarked packet carries, so it cannot mark anything.
func parseMark(field, s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, errorf("%s=%q: out of range 1..0xffffffff", interceptKey(field), s)
		}
		return 0, errorf("%s=%q: want a 32-bit mark such as 0x4e4b", interceptKey(field), s)
	}
	if n == 0 {
		return 0, errorf("%s=%q: must not be 0 (every unmarked packet has mark 0)", interceptKey(field), s)
	}
	return uint32(n), nil
}

// parseInterceptList parses the NATKEEP_INTERCEPT list.
func parseInterceptList(list string) ([]interceptRule, error) {
	var rules []interceptRule
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		r, err := parseInterceptRule(entry)
		r.N, r.Entry = i+1, entry
		if err != nil {
			return nil, r.fail(err)
		}
		for _, prev := range rules {
			if prev.Proto == r.Proto && prev.Prefix == r.Prefix && prev.PortLo == r.PortLo && prev.PortHi == r.PortHi {
				return nil, r.fail(fmt.Errorf("same traffic as entry %d", prev.N))
			}
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// interceptSyntax is the shape every entry error points to.
const interceptSyntax = "want PROTO:[PREFIX:]PORT[-PORT], e.g. udp:5060, tcp:10.0.0.0/8:5432 or tcp:[fd00::/8]:8000-8100"

// parseInterceptRule parses one PROTO:[PREFIX:]PORT[-PORT][?query] entry.
func parseInterceptRule(entry string) (interceptRule, error) {
	var r interceptRule
	if entry == "" {
		return r, errors.New("empty entry (stray comma?)")
	}
	body, query, hasQuery := strings.Cut(entry, "?")
	proto, rest, ok := strings.Cut(body, ":")
	if !ok {
		return r, errors.New(interceptSyntax)
	}
	switch p := strings.ToLower(proto); p {
	case "udp", "tcp":
		r.Proto = p
	default:
		return r, fmt.Errorf("protocol %q: want udp or tcp", proto)
	}

	var prefix, ports string
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.Index(rest, "]")
		if end < 0 {
			return r, fmt.Errorf("%q: missing ] after the IPv6 prefix", rest)
		}
		prefix, ports = rest[1:end], rest[end+1:]
		if !strings.HasPrefix(ports, ":") {
			return r, fmt.Errorf("%q: want :PORT after ]", rest)
		}
		ports = ports[1:]
		p, err := parseDestPrefix(prefix)
		if err != nil {
			return r, err
		}
		if p.Addr().Is4() {
			return r, fmt.Errorf("prefix %s: brackets are for IPv6 only (write %s:PORT)", prefix, prefix)
		}
		r.Prefix = p
	case strings.Contains(rest, ":"):
		i := strings.LastIndex(rest, ":")
		prefix, ports = rest[:i], rest[i+1:]
		if strings.Contains(prefix, ":") {
			return r, fmt.Errorf("IPv6 prefix %s needs brackets, e.g. %s:[%s]:%s", prefix, r.Proto, prefix, ports)
		}
		p, err := parseDestPrefix(prefix)
		if err != nil {
			return r, err
		}
		r.Prefix = p
	default:
		ports = rest
	}

	lo, hi, isRange := strings.Cut(ports, "-")
	var err error
	if r.PortLo, err = parseInterceptPort(lo); err != nil {
		return r, err
	}
	r.PortHi = r.PortLo
	if isRange {
		if r.PortHi, err = parseInterceptPort(hi); err != nil {
			return r, err
		}
		if r.PortHi < r.PortLo {
			return r, fmt.Errorf("port range %d-%d is reversed", r.PortLo, r.PortHi)
		}
	}

	if hasQuery {
		// Validate the overrides now (keys, protocol, syntax); their
		// values are checked against the defaults when the relay's
		// options are built.
		if err := applyQuery(&routeSettings{}, relay.Proto(r.Proto), query, interceptEntries); err != nil {
			return r, err
		}
		r.Query = query
	}
	return r, nil
}

// parseDestPrefix parses a destination: a prefix (10.0.0.0/8, fd00::/8)
// or a single address (10.1.2.3 = 10.1.2.3/32).
func parseDestPrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("empty destination prefix (leave it out to match any destination)")
	}
	addrText, bitsText, hasBits := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addrText)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("destination %q is not an IP prefix such as 10.0.0.0/8 or [fd00::/8]", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("destination %q: zones are not supported", s)
	}
	if a.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("destination %q is IPv4-mapped IPv6: write the IPv4 prefix %s", s, a.Unmap())
	}
	if !hasBits {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	bits, err := strconv.Atoi(bitsText)
	if err != nil || !isDigits(bitsText) {
		return netip.Prefix{}, fmt.Errorf("prefix %q: length %q is not a number", s, bitsText)
	}
	if bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("prefix %q: length %d out of range 0..%d", s, bits, a.BitLen())
	}
	p := netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("prefix %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func parseInterceptPort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port (" + interceptSyntax + ")")
	}
	if !isDigits(s) {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s out of range 1..65535", s)
	}
	return uint16(n), nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
