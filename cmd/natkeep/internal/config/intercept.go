package config

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

// Intercept is the validated interception setup: what `intercept install` programs and transparent listeners serve.
type Intercept struct {
	// Rules are the NATKEEP_INTERCEPT entries as written (none: off), with options only when from Load.
	Rules []relay.InterceptRule
	// TCPPort is natkeep's transparent TCP listener (REDIRECT target), UDPPort its TPROXY UDP listener.
	TCPPort, UDPPort uint16
	// Mark is the fwmark on intercepted UDP that policy routing sends through lo to the TPROXY rule.
	Mark uint32
	// BypassMark is the SO_MARK on natkeep's own sockets: packets carrying it are never intercepted.
	BypassMark uint32
	// UID is natkeep's user ID, never intercepted when MatchUID (false with NATKEEP_INTERCEPT_UID=off).
	UID      uint32
	MatchUID bool
	// Table is the policy routing table holding the local default routes.
	Table uint32

	entries []entry // entries[i] is how Rules[i] was written
}

// entry is one NATKEEP_INTERCEPT entry as written: its text, for messages,
// and its per-entry overrides (key=value&...), already checked for known
// keys and syntax.
type entry struct{ text, query string }

// Enabled reports whether any traffic is intercepted.
func (c *Intercept) Enabled() bool { return len(c.Rules) > 0 }

// HasProto reports whether some rule intercepts proto.
func (c *Intercept) HasProto(proto relay.Proto) bool {
	for _, r := range c.Rules {
		if r.Proto == proto {
			return true
		}
	}
	return false
}

// InterceptEntry is r in canonical NATKEEP_INTERCEPT syntax, without overrides.
func InterceptEntry(r relay.InterceptRule) string {
	var b strings.Builder
	b.WriteString(string(r.Proto))
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

// entryError is an error about entry n (1-based), formatted the way
// NATKEEP_ROUTES errors are.
func entryError(n int, text string, err error) error {
	return errorf("%s entry %d %q: %v", interceptKey("Intercept"), n, text, err)
}

// fail is entryError for rule i.
func (c *Intercept) fail(i int, err error) error { return entryError(i+1, c.entries[i].text, err) }

// settings applies rule i's overrides to defs (the global defaults).
func (c *Intercept) settings(i int, defs routeSettings) (routeSettings, error) {
	s := defs
	if err := applyQuery(&s, c.Rules[i].Proto, c.entries[i].query, interceptEntries); err != nil {
		return s, c.fail(i, err)
	}
	return s, nil
}

// udpOptions is the relay configuration of udp rule i: the global defaults
// with the entry's overrides, validated; errors name the entry.
func (c *Intercept) udpOptions(i int, defs routeSettings) (relay.UDPOptions, error) {
	o, err := ruleOptions(c, i, defs, routeSettings.udp)
	if err == nil && (o.Path.AutoInterval || o.Path.AutoTTL) {
		return o, c.fail(i, &settingError{"interval", "HeartbeatInterval", "auto", errTransparentAuto})
	}
	return o, err
}

// tcpOptions is udpOptions for a tcp rule.
func (c *Intercept) tcpOptions(i int, defs routeSettings) (relay.TCPOptions, error) {
	return ruleOptions(c, i, defs, routeSettings.tcp)
}

// ruleOptions applies rule i's overrides to defs and builds the options.
func ruleOptions[O any](c *Intercept, i int, defs routeSettings, build func(routeSettings) (O, error)) (O, error) {
	s, err := c.settings(i, defs)
	if err != nil {
		var zero O
		return zero, err
	}
	o, err := build(s)
	if err != nil {
		return o, c.fail(i, err)
	}
	return o, nil
}

// interceptRoutes gives every rule its options (the global defaults plus
// the entry's overrides) and builds the transparent listeners that
// NATKEEP_INTERCEPT needs: one per protocol, carrying every rule.
func interceptRoutes(ic *Intercept, defs routeSettings) ([]relay.Route, error) {
	for i := range ic.Rules {
		var err error
		switch ic.Rules[i].Proto {
		case relay.UDP:
			ic.Rules[i].UDP, err = ic.udpOptions(i, defs)
		case relay.TCP:
			ic.Rules[i].TCP, err = ic.tcpOptions(i, defs)
		}
		if err != nil {
			return nil, err
		}
	}
	var routes []relay.Route
	for _, p := range []struct {
		proto relay.Proto
		port  uint16
	}{{relay.TCP, ic.TCPPort}, {relay.UDP, ic.UDPPort}} {
		if !ic.HasProto(p.proto) {
			continue
		}
		r := relay.Route{
			Name: fmt.Sprintf("intercept %s", p.proto), Proto: p.proto, Listen: fmt.Sprintf(":%d", p.port),
			Transparent: true, Intercept: ic.Rules, BypassMark: ic.BypassMark,
		}
		var err error
		if r.UDP, err = defs.udp(); err != nil {
			return nil, globalError(err)
		}
		if p.proto == relay.UDP && r.UDP.Path.AutoInterval {
			return nil, globalError(&settingError{"interval", "HeartbeatInterval", "auto", errTransparentAuto})
		}
		if r.TCP, err = defs.tcp(); err != nil {
			return nil, globalError(err)
		}
		routes = append(routes, r)
	}
	return routes, nil
}

// interceptKey returns the variable name of an interceptEnv field.
func interceptKey(field string) string { return envKeyOf(reflect.TypeFor[interceptEnv](), field) }

// LoadIntercept parses and validates the NATKEEP_INTERCEPT* variables alone, leaving rule options zero.
func LoadIntercept(environ map[string]string) (*Intercept, error) {
	// An unset or blank NATKEEP_INTERCEPT gives no rules (interception
	// off); the other variables are validated anyway, so `intercept
	// remove` and `show` find the same table and marks. Load fills in the
	// rules' options: the global defaults with each entry's overrides.
	var ie interceptEnv
	if err := env.ParseWithOptions(&ie, env.Options{Prefix: envPrefix, Environment: environ}); err != nil {
		return nil, describeEnvError(err, environ, interceptKey)
	}
	c := &Intercept{}
	var err error
	if c.TCPPort, err = listenerPort("TCPPort", ie.TCPPort); err != nil {
		return nil, err
	}
	if c.UDPPort, err = listenerPort("UDPPort", ie.UDPPort); err != nil {
		return nil, err
	}
	if err := c.parseMarks(ie); err != nil {
		return nil, err
	}
	if c.UID, c.MatchUID, err = parseUID(ie.UID); err != nil {
		return nil, err
	}
	if c.Table, err = parseTable(ie.Table); err != nil {
		return nil, err
	}
	if strings.TrimSpace(ie.Intercept) != "" {
		if c.Rules, c.entries, err = parseInterceptList(ie.Intercept); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// parseMarks reads the routing mark and the bypass mark, which must differ.
func (c *Intercept) parseMarks(ie interceptEnv) error {
	var err error
	if c.Mark, err = parseMark("Mark", ie.Mark); err != nil {
		return err
	}
	if c.BypassMark, err = parseMark("BypassMark", ie.BypassMark); err != nil {
		return err
	}
	if c.BypassMark == c.Mark {
		return errorf("%s=%q: must differ from %s (%#x): natkeep's own packets would be intercepted", interceptKey("BypassMark"), ie.BypassMark, interceptKey("Mark"), c.Mark)
	}
	return nil
}

// parseUID reads NATKEEP_INTERCEPT_UID: a user ID other than root, or off.
func parseUID(v string) (uid uint32, match bool, err error) {
	switch s := strings.TrimSpace(v); strings.ToLower(s) {
	case "off", "none":
		return 0, false, nil
	default:
		n, err := strconv.ParseUint(s, 10, 32)
		switch {
		case err != nil:
			return 0, false, errorf("%s=%q: want a numeric user ID or off", interceptKey("UID"), v)
		case n == 0:
			return 0, false, errorf("%s=%q: UID 0 would exempt every root process, a root app too; run natkeep as another user or set off and rely on %s", interceptKey("UID"), v, interceptKey("BypassMark"))
		case n == math.MaxUint32:
			return 0, false, errorf("%s=%q: 4294967295 is (uid_t)-1, not a user", interceptKey("UID"), v)
		}
		return uint32(n), true, nil
	}
}

// parseTable reads NATKEEP_INTERCEPT_TABLE: a routing table of natkeep's own.
func parseTable(v string) (uint32, error) {
	table, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	switch {
	case err != nil && isDigits(strings.TrimSpace(v)), err == nil && table == 0:
		return 0, errorf("%s=%q: out of range 1..4294967295", interceptKey("Table"), v)
	case err != nil:
		return 0, errorf("%s=%q: want a routing table number", interceptKey("Table"), v)
	case table == 253 || table == 254 || table == 255:
		name := map[uint64]string{253: "default", 254: "main", 255: "local"}[table]
		return 0, errorf("%s=%q: that is the kernel's %s table; pick a table of natkeep's own", interceptKey("Table"), v, name)
	}
	return uint32(table), nil
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
func parseInterceptList(list string) ([]relay.InterceptRule, []entry, error) {
	var rules []relay.InterceptRule
	var entries []entry
	for i, text := range strings.Split(list, ",") {
		text = strings.TrimSpace(text)
		r, query, err := parseInterceptRule(text)
		if err != nil {
			return nil, nil, entryError(i+1, text, err)
		}
		for j, prev := range rules {
			if prev.Proto == r.Proto && prev.Prefix == r.Prefix && prev.PortLo == r.PortLo && prev.PortHi == r.PortHi {
				return nil, nil, entryError(i+1, text, fmt.Errorf("same traffic as entry %d", j+1))
			}
		}
		rules = append(rules, r)
		entries = append(entries, entry{text, query})
	}
	return rules, entries, nil
}

// interceptSyntax is the shape every entry error points to.
const interceptSyntax = "want PROTO:[PREFIX:]PORT[-PORT], e.g. udp:5060, tcp:10.0.0.0/8:5432 or tcp:[fd00::/8]:8000-8100"

// parseInterceptRule parses one PROTO:[PREFIX:]PORT[-PORT][?query] entry;
// it returns the rule (without options) and the query.
func parseInterceptRule(text string) (relay.InterceptRule, string, error) {
	var r relay.InterceptRule
	if text == "" {
		return r, "", errors.New("empty entry (stray comma?)")
	}
	body, query, hasQuery := strings.Cut(text, "?")
	proto, rest, ok := strings.Cut(body, ":")
	if !ok {
		return r, "", errors.New(interceptSyntax)
	}
	switch p := relay.Proto(strings.ToLower(proto)); p {
	case relay.UDP, relay.TCP:
		r.Proto = p
	default:
		return r, "", fmt.Errorf("protocol %q: want udp or tcp", proto)
	}
	prefix, ports, err := parseInterceptDest(r.Proto, rest)
	if err != nil {
		return r, "", err
	}
	r.Prefix = prefix
	if r.PortLo, r.PortHi, err = parsePortRange(ports); err != nil {
		return r, "", err
	}
	if !hasQuery {
		return r, "", nil
	}
	// Validate the overrides now (keys, protocol, syntax); their values
	// are checked against the defaults when the relay's options are built.
	if err := applyQuery(&routeSettings{}, r.Proto, query, interceptEntries); err != nil {
		return r, "", err
	}
	return r, query, nil
}

// parseInterceptDest splits [PREFIX:]PORTS into the destination prefix
// (invalid = any destination) and the port text.
func parseInterceptDest(proto relay.Proto, rest string) (netip.Prefix, string, error) {
	switch {
	case strings.HasPrefix(rest, "["):
		end := strings.Index(rest, "]")
		if end < 0 {
			return netip.Prefix{}, "", fmt.Errorf("%q: missing ] after the IPv6 prefix", rest)
		}
		prefix, ports := rest[1:end], rest[end+1:]
		if !strings.HasPrefix(ports, ":") {
			return netip.Prefix{}, "", fmt.Errorf("%q: want :PORT after ]", rest)
		}
		p, err := parseDestPrefix(prefix)
		if err != nil {
			return netip.Prefix{}, "", err
		}
		if p.Addr().Is4() {
			return netip.Prefix{}, "", fmt.Errorf("prefix %s: brackets are for IPv6 only (write %s:PORT)", prefix, prefix)
		}
		return p, ports[1:], nil
	case strings.Contains(rest, ":"):
		i := strings.LastIndex(rest, ":")
		prefix, ports := rest[:i], rest[i+1:]
		if strings.Contains(prefix, ":") {
			return netip.Prefix{}, "", fmt.Errorf("IPv6 prefix %s needs brackets, e.g. %s:[%s]:%s", prefix, proto, prefix, ports)
		}
		p, err := parseDestPrefix(prefix)
		return p, ports, err
	default:
		return netip.Prefix{}, rest, nil
	}
}

// parsePortRange parses PORT or PORT-PORT.
func parsePortRange(ports string) (lo, hi uint16, err error) {
	loText, hiText, isRange := strings.Cut(ports, "-")
	if lo, err = parseInterceptPort(loText); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	if hi, err = parseInterceptPort(hiText); err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("port range %d-%d is reversed", lo, hi)
	}
	return lo, hi, nil
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
