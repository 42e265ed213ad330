package main

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/relay"
	"github.com/natkeep/natkeep/sockopt"
)

// envPrefix starts every variable natkeep reads.
const envPrefix = "NATKEEP_"

// defaultAdminAddr serves /metrics, /healthz and /readyz when NATKEEP_ADMIN_ADDR is unset.
const defaultAdminAddr = ":9299"

// envConfig is the environment as caarlos0/env parses it. The help tag is
// what `natkeep help` prints, so the documentation lives next to the field.
type envConfig struct {
	Routes string `env:"ROUTES" help:"comma-separated routes PROTO://LISTEN/UPSTREAM[?key=value&...] (required unless NATKEEP_INTERCEPT is set)"`

	HeartbeatInterval time.Duration `env:"UDP_HEARTBEAT_INTERVAL" envDefault:"20s" help:"send a heartbeat after this much outbound silence on a flow, then every interval, jittered to 80-100%; 0 turns heartbeats off"`
	HeartbeatPayload  string        `env:"UDP_HEARTBEAT_PAYLOAD" envDefault:"empty" help:"empty, nat-t (0xFF), crlf, stun, hex:<bytes> or text:<string>"`
	HeartbeatTTL      int           `env:"UDP_HEARTBEAT_TTL" envDefault:"0" help:"IP TTL / hop limit of heartbeats only (1..255); a NAT within N hops is refreshed and the server never sees them; 0 = off"`
	HeartbeatReply    string        `env:"UDP_HEARTBEAT_REPLY" help:"what counts as a pong (consumed, never passed to the app): none, stun, hex:<bytes>, text:<string>; default stun for payload stun, else none"`
	HeartbeatTTLHeal  time.Duration `env:"UDP_HEARTBEAT_TTL_HEAL" envDefault:"5m" help:"with a heartbeat TTL: send one heartbeat at the normal TTL at least this often, so a mapping lost to a NAT restart comes back without app traffic (the server then sees one heartbeat per period); 0 = never"`
	DeadAfter         int           `env:"UDP_DEAD_AFTER" envDefault:"3" help:"heartbeat intervals in a row with nothing at all from the upstream that declare the peer dead (only with a reply)"`
	OnDead            string        `env:"UDP_ON_DEAD" envDefault:"keep" help:"what a dead peer's flow does: keep (same local port, so a lost mapping is re-created where the server expects it; follows a changed DNS address) or rebind (a new local port, for NATs that must be given a fresh mapping)"`
	STUNStrict        bool          `env:"UDP_STUN_STRICT" envDefault:"false" help:"responder routes: answer only Binding Requests that end in a valid FINGERPRINT (for servers whose own protocol could look like STUN); default answers every well-formed RFC 5389/8489 Binding Request"`
	FlowIdleTimeout   time.Duration `env:"UDP_FLOW_IDLE_TIMEOUT" envDefault:"10m" help:"forget a flow after this long without application traffic either way; heartbeats never extend it"`
	MaxFlows          int           `env:"UDP_MAX_FLOWS" envDefault:"65536" help:"flows per UDP route; new flows beyond it are refused and counted"`

	KeepaliveIdle     time.Duration `env:"TCP_KEEPALIVE_IDLE" envDefault:"60s" help:"TCP idle time before the first keepalive probe (whole seconds, 1s..32767s); 0 turns keepalive off"`
	KeepaliveInterval time.Duration `env:"TCP_KEEPALIVE_INTERVAL" envDefault:"10s" help:"time between TCP keepalive probes (whole seconds, 1s..32767s)"`
	KeepaliveCount    int           `env:"TCP_KEEPALIVE_COUNT" envDefault:"6" help:"unanswered probes before the connection is dropped (1..127)"`
	UserTimeout       string        `env:"TCP_USER_TIMEOUT" help:"TCP_USER_TIMEOUT: unacknowledged data older than this fails the connection; default idle + interval*count; 0 turns it off"`
	ConnectTimeout    time.Duration `env:"TCP_CONNECT_TIMEOUT" envDefault:"10s" help:"upstream dial timeout"`
	MaxConns          int           `env:"TCP_MAX_CONNS" envDefault:"0" help:"open connections per TCP route; 0 = unlimited"`

	ResolveInterval time.Duration `env:"RESOLVE_INTERVAL" envDefault:"30s" help:"how often upstream DNS names are re-resolved"`
	AdminAddr       string        `env:"ADMIN_ADDR" help:"HTTP address for /metrics, /healthz, /readyz (default :9299); empty or off disables"`
	DrainTimeout    time.Duration `env:"DRAIN_TIMEOUT" envDefault:"15s" help:"on SIGTERM/SIGINT: stop accepting, let open connections finish for up to this long"`
	LogLevel        string        `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat       string        `env:"LOG_FORMAT" envDefault:"auto" help:"auto (coloured text on a terminal, JSON otherwise), text or json; NO_COLOR is honoured"`
}

// config is the validated configuration that main wires together.
type config struct {
	Relay     relay.Config
	Intercept *interceptConfig // transparent mode; no rules when off
	AdminAddr string           // "" = no admin server
	LogLevel  string
	LogFormat string
}

// configError is a start-up error; main prints it and exits with status 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func errorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// routeOrigin names the setting that route i of cfg comes from, for
// start-up errors: its NATKEEP_ROUTES entry (loadConfig puts those first,
// in order), or for a transparent listener the variable with its port.
func routeOrigin(cfg *config, i int) string {
	rt := cfg.Relay.Routes[i]
	if !rt.Transparent {
		return fmt.Sprintf("%s entry %d %q", envKey("Routes"), i+1, rt.Name)
	}
	field := "UDPPort"
	if rt.Proto == relay.TCP {
		field = "TCPPort"
	}
	return fmt.Sprintf("%s=%s", interceptKey(field), strings.TrimPrefix(rt.Listen, ":"))
}

// envKey returns the variable name of an envConfig field.
func envKey(field string) string { return envKeyOf(reflect.TypeFor[envConfig](), field) }

// envKeyOf returns the variable name of a field of the env struct t.
func envKeyOf(t reflect.Type, field string) string {
	f, ok := t.FieldByName(field)
	if !ok {
		return field
	}
	key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
	return envPrefix + key
}

// loadConfig parses and validates the environment given as a map.
func loadConfig(environ map[string]string) (*config, error) {
	var ec envConfig
	err := env.ParseWithOptions(&ec, env.Options{Prefix: envPrefix, Environment: environ})
	if err != nil {
		return nil, describeEnvError(err, environ, envKey)
	}
	c := &config{LogLevel: ec.LogLevel, LogFormat: ec.LogFormat}

	switch strings.ToLower(ec.LogLevel) {
	case "debug", "info", "warn", "error":
		c.LogLevel = strings.ToLower(ec.LogLevel)
	default:
		return nil, errorf("%s=%q: want debug, info, warn or error", envKey("LogLevel"), ec.LogLevel)
	}
	switch c.LogFormat = strings.ToLower(ec.LogFormat); c.LogFormat {
	case "auto", "text", "json":
	default:
		return nil, errorf("%s=%q: want auto, text or json", envKey("LogFormat"), ec.LogFormat)
	}

	if v, set := environ[envKey("AdminAddr")]; !set {
		c.AdminAddr = defaultAdminAddr
	} else if v != "" && v != "off" {
		if _, err := parseListen(v); err != nil {
			return nil, errorf("%s=%q: %v", envKey("AdminAddr"), v, err)
		}
		c.AdminAddr = v
	}
	if ec.ResolveInterval <= 0 {
		return nil, errorf("%s=%s: must be positive", envKey("ResolveInterval"), ec.ResolveInterval)
	}
	if ec.DrainTimeout < 0 {
		return nil, errorf("%s=%s: must not be negative", envKey("DrainTimeout"), ec.DrainTimeout)
	}
	c.Relay.ResolveInterval = ec.ResolveInterval
	c.Relay.DrainTimeout = ec.DrainTimeout

	// The global variables are the defaults of every route: validate them
	// as such, naming the variable, before any route overrides them.
	defs := routeSettings{
		interval: ec.HeartbeatInterval, payload: ec.HeartbeatPayload, ttl: ec.HeartbeatTTL,
		reply: ec.HeartbeatReply, deadAfter: ec.DeadAfter, idleTimeout: ec.FlowIdleTimeout,
		ttlHeal: ec.HeartbeatTTLHeal, onDead: ec.OnDead, stunStrict: ec.STUNStrict,
		maxFlows: ec.MaxFlows, role: string(relay.RoleClient),
		kaIdle: ec.KeepaliveIdle, kaInterval: ec.KeepaliveInterval, kaCount: ec.KeepaliveCount,
		userTimeout: ec.UserTimeout, connectTimeout: ec.ConnectTimeout, maxConns: ec.MaxConns,
	}
	if _, err := defs.udp(); err != nil {
		return nil, globalError(err)
	}
	if _, err := defs.tcp(); err != nil {
		return nil, globalError(err)
	}

	ic, err := loadInterceptConfig(environ)
	if err != nil {
		return nil, err
	}
	var routes []relay.Route
	if strings.TrimSpace(ec.Routes) == "" {
		if !ic.Enabled() {
			return nil, errorf("%s is required (or %s for transparent mode): set it to a route list such as udp://127.0.0.1:5060/sip.example.net:5060", envKey("Routes"), interceptKey("Intercept"))
		}
	} else if routes, err = parseRoutes(ec.Routes, defs); err != nil {
		return nil, err
	}
	transparent, err := interceptRoutes(ic, defs)
	if err != nil {
		return nil, err
	}
	for _, t := range transparent {
		for _, r := range routes {
			if conflicts(string(t.Proto)+" "+t.Listen, string(r.Proto)+" "+r.Listen) {
				return nil, errorf("%s: route %q listens on %s, the transparent %s listener's port", envKey("Routes"), r.Name, r.Listen, t.Proto)
			}
		}
	}
	if ic.Enabled() {
		// natkeep's own traffic on ordinary routes must not be caught either.
		for i := range routes {
			routes[i].BypassMark = ic.BypassMark
		}
	}
	c.Relay.Routes = append(routes, transparent...)
	c.Intercept = ic
	return c, nil
}

// describeEnvError turns the env library's errors into one message that
// names the variable and its value.
func describeEnvError(err error, environ map[string]string, keyOf func(field string) string) error {
	var agg env.AggregateError
	if errors.As(err, &agg) && len(agg.Errors) > 0 {
		err = agg.Errors[0]
	}
	var pe env.ParseError
	if errors.As(err, &pe) {
		key := keyOf(pe.Name)
		cause := pe.Err
		var ne *strconv.NumError
		if errors.As(cause, &ne) {
			cause = ne.Err
		}
		return errorf("%s=%q: not a valid %s: %v", key, environ[key], typeWord(pe.Type), cause)
	}
	var unset env.VarIsNotSetError
	if errors.As(err, &unset) {
		return errorf("%s is required: set it to a route list such as udp://127.0.0.1:5060/sip.example.net:5060", unset.Key)
	}
	var empty env.EmptyVarError
	if errors.As(err, &empty) {
		return errorf("%s is empty: set it to a route list such as udp://127.0.0.1:5060/sip.example.net:5060", empty.Key)
	}
	return errorf("configuration: %v", err)
}

// typeWord names a field type the way a user thinks of it.
func typeWord(t reflect.Type) string {
	if t == reflect.TypeFor[time.Duration]() {
		return "duration (e.g. 20s, 1m30s)"
	}
	if t.Kind() == reflect.Int {
		return "whole number"
	}
	return t.String()
}

// settingError is a bad value of one setting, known both as an
// environment variable and as a route query key.
type settingError struct {
	key   string // query key, e.g. "ttl"
	field string // envConfig field, e.g. "HeartbeatTTL"
	value string
	msg   string
}

func (e *settingError) Error() string { return fmt.Sprintf("%s=%s: %s", e.key, e.value, e.msg) }

func globalError(err error) error {
	var se *settingError
	if errors.As(err, &se) {
		return errorf("%s=%q: %s", envKey(se.field), se.value, se.msg)
	}
	return errorf("%v", err)
}

// routeSettings are the tunables a route may override with query keys.
type routeSettings struct {
	interval       time.Duration
	payload        string
	ttl            int
	reply          string
	deadAfter      int
	ttlHeal        time.Duration
	onDead         string
	stunStrict     bool
	idleTimeout    time.Duration
	maxFlows       int
	role           string
	kaIdle         time.Duration
	kaInterval     time.Duration
	kaCount        int
	userTimeout    string
	connectTimeout time.Duration
	maxConns       int
}

// queryKey describes one per-route override.
type queryKey struct {
	field string // envConfig field it overrides ("" for route-only keys)
	proto relay.Proto
	set   func(s *routeSettings, v string) error
}

func durationSetter(dst func(*routeSettings) *time.Duration) func(*routeSettings, string) error {
	return func(s *routeSettings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("not a valid duration (e.g. 20s, 1m30s)")
		}
		*dst(s) = d
		return nil
	}
}

func intSetter(dst func(*routeSettings) *int) func(*routeSettings, string) error {
	return func(s *routeSettings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("not a valid whole number")
		}
		*dst(s) = n
		return nil
	}
}

func boolSetter(dst func(*routeSettings) *bool) func(*routeSettings, string) error {
	return func(s *routeSettings, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		*dst(s) = b
		return nil
	}
}

func stringSetter(dst func(*routeSettings) *string) func(*routeSettings, string) error {
	return func(s *routeSettings, v string) error { *dst(s) = v; return nil }
}

// queryKeys are the per-route overrides; each names the variable it overrides.
var queryKeys = map[string]queryKey{
	"interval":           {"HeartbeatInterval", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.interval })},
	"payload":            {"HeartbeatPayload", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.payload })},
	"ttl":                {"HeartbeatTTL", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.ttl })},
	"reply":              {"HeartbeatReply", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.reply })},
	"dead_after":         {"DeadAfter", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.deadAfter })},
	"ttl_heal":           {"HeartbeatTTLHeal", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.ttlHeal })},
	"on_dead":            {"OnDead", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.onDead })},
	"stun_strict":        {"STUNStrict", relay.UDP, boolSetter(func(s *routeSettings) *bool { return &s.stunStrict })},
	"idle_timeout":       {"FlowIdleTimeout", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.idleTimeout })},
	"max_flows":          {"MaxFlows", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.maxFlows })},
	"role":               {"", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.role })},
	"keepalive_idle":     {"KeepaliveIdle", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.kaIdle })},
	"keepalive_interval": {"KeepaliveInterval", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.kaInterval })},
	"keepalive_count":    {"KeepaliveCount", relay.TCP, intSetter(func(s *routeSettings) *int { return &s.kaCount })},
	"user_timeout":       {"UserTimeout", relay.TCP, stringSetter(func(s *routeSettings) *string { return &s.userTimeout })},
	"connect_timeout":    {"ConnectTimeout", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.connectTimeout })},
	"max_conns":          {"MaxConns", relay.TCP, intSetter(func(s *routeSettings) *int { return &s.maxConns })},
}

// minHeartbeatInterval keeps a typo such as 20ms from flooding the upstream.
const minHeartbeatInterval = 100 * time.Millisecond

// udp validates the UDP settings and builds the relay options.
func (s routeSettings) udp() (relay.UDPOptions, error) {
	var o relay.UDPOptions
	switch s.role {
	case string(relay.RoleClient), string(relay.RoleResponder):
		o.Role = relay.Role(s.role)
	default:
		return o, &settingError{"role", "", s.role, "want client or responder"}
	}
	if s.interval < 0 || (s.interval > 0 && s.interval < minHeartbeatInterval) {
		return o, &settingError{"interval", "HeartbeatInterval", s.interval.String(), fmt.Sprintf("must be 0 (off) or at least %s", minHeartbeatInterval)}
	}
	p, err := keepalive.ParsePayload(s.payload)
	if err != nil {
		return o, &settingError{"payload", "HeartbeatPayload", s.payload, err.Error()}
	}
	r, err := keepalive.ParseReply(s.reply, p)
	if err != nil {
		return o, &settingError{"reply", "HeartbeatReply", s.reply, err.Error()}
	}
	if s.ttl < 0 || s.ttl > 255 {
		return o, &settingError{"ttl", "HeartbeatTTL", strconv.Itoa(s.ttl), "must be 0 (off) or 1..255"}
	}
	if s.ttl > 0 && r.Enabled() {
		return o, &settingError{"ttl", "HeartbeatTTL", strconv.Itoa(s.ttl), fmt.Sprintf("a TTL-limited heartbeat never reaches the server, so reply %s can never arrive; use one or the other", r)}
	}
	if s.deadAfter < 1 {
		return o, &settingError{"dead_after", "DeadAfter", strconv.Itoa(s.deadAfter), "must be at least 1"}
	}
	if s.ttlHeal < 0 || (s.ttlHeal > 0 && s.ttlHeal < minHeartbeatInterval) {
		return o, &settingError{"ttl_heal", "HeartbeatTTLHeal", s.ttlHeal.String(), fmt.Sprintf("must be 0 (never) or at least %s", minHeartbeatInterval)}
	}
	var rebind bool
	switch s.onDead {
	case "keep":
	case "rebind":
		rebind = true
	default:
		return o, &settingError{"on_dead", "OnDead", s.onDead, "want keep or rebind"}
	}
	if s.idleTimeout <= 0 {
		return o, &settingError{"idle_timeout", "FlowIdleTimeout", s.idleTimeout.String(), "must be positive"}
	}
	if s.maxFlows < 1 {
		return o, &settingError{"max_flows", "MaxFlows", strconv.Itoa(s.maxFlows), "must be at least 1"}
	}
	o.Payload, o.Reply, o.TTL, o.STUNStrict = p, r, s.ttl, s.stunStrict
	o.FlowIdleTimeout, o.MaxFlows = s.idleTimeout, s.maxFlows
	// Heal matters only with a TTL (the relay sends every heartbeat at the
	// normal TTL otherwise); it is kept as configured so the options read
	// the same whatever the ttl.
	o.Heartbeat = keepalive.Schedule{Interval: s.interval, DeadAfter: s.deadAfter, ExpectReply: r.Enabled(), Rebind: rebind, Heal: s.ttlHeal}
	if o.Role == relay.RoleResponder {
		// A responder sits beside the server: it answers heartbeats, it
		// does not send its own across a NAT it is not behind.
		o.Heartbeat.Interval = 0
	}
	return o, nil
}

// tcp validates the TCP settings and builds the relay options.
func (s routeSettings) tcp() (relay.TCPOptions, error) {
	var o relay.TCPOptions
	if s.kaIdle < 0 {
		return o, &settingError{"keepalive_idle", "KeepaliveIdle", s.kaIdle.String(), "must not be negative (0 turns keepalive off)"}
	}
	ka := sockopt.Keepalive{Idle: s.kaIdle, Interval: s.kaInterval, Count: s.kaCount}
	if s.kaIdle > 0 {
		if err := ka.Validate(); err != nil {
			// Validate reports every bad field, one per line: name the first.
			first, _, _ := strings.Cut(err.Error(), "\n")
			err = errors.New(strings.TrimPrefix(first, "sockopt: "))
			key, field, val := "keepalive_idle", "KeepaliveIdle", s.kaIdle.String()
			switch {
			case strings.HasPrefix(err.Error(), "keepalive interval"):
				key, field, val = "keepalive_interval", "KeepaliveInterval", s.kaInterval.String()
			case strings.HasPrefix(err.Error(), "keepalive count"):
				key, field, val = "keepalive_count", "KeepaliveCount", strconv.Itoa(s.kaCount)
			}
			return o, &settingError{key, field, val, err.Error()}
		}
		o.Keepalive = ka
	}
	switch s.userTimeout {
	case "":
		if s.kaIdle > 0 {
			o.UserTimeout = ka.Idle + ka.Interval*time.Duration(ka.Count)
		}
	default:
		d, err := time.ParseDuration(s.userTimeout)
		if err != nil {
			return o, &settingError{"user_timeout", "UserTimeout", s.userTimeout, "not a valid duration (e.g. 2m, 0 = off)"}
		}
		if err := sockopt.ValidateUserTimeout(d); err != nil {
			return o, &settingError{"user_timeout", "UserTimeout", s.userTimeout, err.Error()}
		}
		o.UserTimeout = d
	}
	if s.connectTimeout <= 0 {
		return o, &settingError{"connect_timeout", "ConnectTimeout", s.connectTimeout.String(), "must be positive"}
	}
	if s.maxConns < 0 {
		return o, &settingError{"max_conns", "MaxConns", strconv.Itoa(s.maxConns), "must be 0 (unlimited) or positive"}
	}
	o.ConnectTimeout, o.MaxConns = s.connectTimeout, s.maxConns
	return o, nil
}

// parseRoutes parses the NATKEEP_ROUTES list.
func parseRoutes(list string, defs routeSettings) ([]relay.Route, error) {
	var routes []relay.Route
	var seen []string // "proto listen" of each earlier entry, in order
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		n := i + 1
		fail := func(format string, args ...any) error {
			return errorf("%s entry %d %q: %s", envKey("Routes"), n, entry, fmt.Sprintf(format, args...))
		}
		if entry == "" {
			return nil, fail("empty route (stray comma?)")
		}
		r, err := parseRoute(entry, defs)
		if err != nil {
			return nil, fail("%v", err)
		}
		key := string(r.Proto) + " " + r.Listen
		for m, other := range seen {
			if conflicts(key, other) {
				return nil, fail("listen address %s://%s already used by entry %d", r.Proto, r.Listen, m+1)
			}
		}
		seen = append(seen, key)
		routes = append(routes, r)
	}
	return routes, nil
}

// conflicts reports whether two "proto host:port" listen keys would collide
// when bound: the same protocol and port, with equal hosts or a wildcard.
func conflicts(a, b string) bool {
	pa, ha, _ := strings.Cut(a, " ")
	pb, hb, _ := strings.Cut(b, " ")
	if pa != pb {
		return false
	}
	apa, _ := parseListen(ha)
	apb, _ := parseListen(hb)
	if apa.Port() != apb.Port() {
		return false
	}
	return apa.Addr().Unmap() == apb.Addr().Unmap() || !apa.Addr().IsValid() || !apb.Addr().IsValid() ||
		apa.Addr().IsUnspecified() || apb.Addr().IsUnspecified()
}

// parseListen accepts Go's host:port with an IP literal or empty host; the
// returned Addr is invalid for "all addresses".
func parseListen(hostport string) (netip.AddrPort, error) {
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var addr netip.Addr
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("host %q is not an IP address (use :%d for all addresses)", host, port)
		}
		if a.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("host %q: zones are not supported", host)
		}
		addr = a
	}
	return netip.AddrPortFrom(addr, port), nil
}

// splitHostPort splits and range-checks host:port.
func splitHostPort(hostport string) (string, uint16, error) {
	if !strings.Contains(hostport, ":") {
		return "", 0, fmt.Errorf("%q has no port (want host:port)", hostport)
	}
	i := strings.LastIndex(hostport, ":")
	host, p := hostport[:i], hostport[i+1:]
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return "", 0, fmt.Errorf("%q: missing ] in IPv6 address", hostport)
		}
		host = host[1 : len(host)-1]
	} else if strings.Contains(host, ":") {
		return "", 0, fmt.Errorf("%q: IPv6 addresses need brackets, e.g. [::1]:5000", hostport)
	}
	n, err := strconv.Atoi(p)
	if err != nil || p == "" {
		return "", 0, fmt.Errorf("port %q is not a number", p)
	}
	if n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("port %d out of range 1..65535", n)
	}
	return host, uint16(n), nil
}

// parseRoute parses one PROTO://LISTEN/UPSTREAM[?query] entry.
func parseRoute(entry string, defs routeSettings) (relay.Route, error) {
	r := relay.Route{Name: entry}
	scheme, rest, ok := strings.Cut(entry, "://")
	if !ok {
		return r, errors.New("want PROTO://LISTEN/UPSTREAM, e.g. udp://:5060/sip.example.net:5060")
	}
	switch relay.Proto(strings.ToLower(scheme)) {
	case relay.UDP:
		r.Proto = relay.UDP
	case relay.TCP:
		r.Proto = relay.TCP
	default:
		return r, fmt.Errorf("protocol %q: want udp or tcp", scheme)
	}
	rest, rawQuery, _ := strings.Cut(rest, "?")
	listen, upstream, ok := strings.Cut(rest, "/")
	if !ok || upstream == "" {
		return r, errors.New("missing /UPSTREAM (want PROTO://LISTEN/UPSTREAM)")
	}
	if _, err := parseListen(listen); err != nil {
		return r, fmt.Errorf("listen %w", err)
	}
	host, _, err := splitHostPort(upstream)
	if err != nil {
		return r, fmt.Errorf("upstream %w", err)
	}
	if host == "" {
		return r, fmt.Errorf("upstream %q has no host", upstream)
	}
	if strings.ContainsAny(host, "/ ") {
		return r, fmt.Errorf("upstream host %q is not a name or IP address", host)
	}
	r.Listen, r.Upstream = listen, upstream

	s := defs
	if err := applyQuery(&s, r.Proto, rawQuery, routeEntries); err != nil {
		return r, err
	}
	switch r.Proto {
	case relay.UDP:
		r.UDP, err = s.udp()
	case relay.TCP:
		r.TCP, err = s.tcp()
	}
	return r, err
}

func knownKeys() string {
	keys := make([]string, 0, len(queryKeys))
	for k := range queryKeys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// interceptRoutes builds the transparent listeners that NATKEEP_INTERCEPT
// needs: one per protocol, carrying every rule of that protocol with its
// options (the global defaults plus the entry's overrides).
func interceptRoutes(ic *interceptConfig, defs routeSettings) ([]relay.Route, error) {
	var rules []relay.InterceptRule
	for _, r := range ic.Rules {
		ir := relay.InterceptRule{Proto: relay.Proto(r.Proto), Prefix: r.Prefix, PortLo: r.PortLo, PortHi: r.PortHi}
		var err error
		switch ir.Proto {
		case relay.UDP:
			ir.UDP, err = r.udpOptions(defs)
		case relay.TCP:
			ir.TCP, err = r.tcpOptions(defs)
		}
		if err != nil {
			return nil, err
		}
		rules = append(rules, ir)
	}
	var routes []relay.Route
	for _, p := range []struct {
		proto relay.Proto
		port  uint16
	}{{relay.TCP, ic.TCPPort}, {relay.UDP, ic.UDPPort}} {
		if !ic.HasProto(string(p.proto)) {
			continue
		}
		r := relay.Route{
			Name: fmt.Sprintf("intercept %s", p.proto), Proto: p.proto, Listen: fmt.Sprintf(":%d", p.port),
			Transparent: true, Intercept: rules, BypassMark: ic.BypassMark,
		}
		var err error
		if r.UDP, err = defs.udp(); err != nil {
			return nil, globalError(err)
		}
		if r.TCP, err = defs.tcp(); err != nil {
			return nil, globalError(err)
		}
		routes = append(routes, r)
	}
	return routes, nil
}

// queryOwner says whose query applyQuery reads, for its messages and rules.
type queryOwner int

const (
	routeEntries     queryOwner = iota // NATKEEP_ROUTES
	interceptEntries                   // NATKEEP_INTERCEPT: no role key, natkeep is always the client side
)

// applyQuery applies key=value&... overrides to s: known keys of proto,
// each once. Keys are taken in the order written, so the first bad one is
// the one reported; values are percent-decoded but '+' stays a plus.
func applyQuery(s *routeSettings, proto relay.Proto, rawQuery string, owner queryOwner) error {
	noun := "routes"
	if owner == interceptEntries {
		noun = "entries"
	}
	given := map[string]bool{}
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		rawKey, rawVal, hasEq := strings.Cut(kv, "=")
		key, err1 := url.PathUnescape(rawKey)
		val, err2 := url.PathUnescape(rawVal)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("query %q: %v", kv, err)
		}
		qk, ok := queryKeys[key]
		if !ok {
			return fmt.Errorf("unknown key %q (known: %s)", key, knownKeys())
		}
		if key == "role" && owner == interceptEntries {
			return errors.New(`key "role" does not apply to intercepted traffic (natkeep is always the client side here)`)
		}
		if qk.proto != proto {
			return fmt.Errorf("key %q applies to %s %s, not %s", key, qk.proto, noun, proto)
		}
		if !hasEq {
			return fmt.Errorf("key %q has no value (want %s=VALUE)", key, key)
		}
		if given[key] {
			return fmt.Errorf("key %q given more than once", key)
		}
		given[key] = true
		if err := qk.set(s, val); err != nil {
			return fmt.Errorf("%s=%s: %v", key, val, err)
		}
	}
	return nil
}
