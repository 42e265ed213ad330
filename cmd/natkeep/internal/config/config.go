// Package config turns natkeep's environment into plain Go values: the
// relay's routes with their options, the transparent-interception setup,
// the admin address and the logging choices. It reads nothing but the map
// it is given and opens no socket. Every bad value is an *Error naming the
// variable (and the route entry) and what is wrong; main prints it on one
// line and exits with status 2.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/relay"
)

// envPrefix starts every variable natkeep reads.
const envPrefix = "NATKEEP_"

// DefaultAdminAddr is where /metrics, /healthz and /readyz are served when NATKEEP_ADMIN_ADDR is unset.
const DefaultAdminAddr = ":9299"

// Variables that messages outside this package name (TestVarNames keeps them equal to the tags).
const (
	VarAdminAddr    = envPrefix + "ADMIN_ADDR"    // the admin server's address
	VarIntercept    = envPrefix + "INTERCEPT"     // the traffic transparent mode intercepts
	VarInterceptUID = envPrefix + "INTERCEPT_UID" // natkeep's own user ID in transparent mode
)

// envConfig is the environment as caarlos0/env parses it. The help tag is
// what `natkeep help` prints, so the documentation lives next to the field.
type envConfig struct {
	Routes string `env:"ROUTES" help:"comma-separated routes PROTO://LISTEN/UPSTREAM[?key=value&...] (required unless NATKEEP_INTERCEPT is set)"`

	HeartbeatInterval string        `env:"UDP_HEARTBEAT_INTERVAL" envDefault:"20s" help:"send a heartbeat after this much outbound silence on a flow, then every interval, jittered to 80-100%; 0 turns heartbeats off; auto learns the NAT's binding lifetime through a STUN upstream that honours RESPONSE-PORT (a natkeep responder) and heartbeats just under it"`
	HeartbeatFallback time.Duration `env:"UDP_HEARTBEAT_INTERVAL_FALLBACK" envDefault:"15s" help:"interval=auto: the interval while nothing is learned (and if the upstream cannot be probed)"`
	PathRelearn       time.Duration `env:"UDP_PATH_RELEARN" envDefault:"1h" help:"interval=auto: learn the path again this long after the last success (at once when a flow's mapping is lost); 0 = never"`
	HeartbeatPayload  string        `env:"UDP_HEARTBEAT_PAYLOAD" envDefault:"empty" help:"empty, nat-t (0xFF), crlf, stun, hex:<bytes> or text:<string>"`
	HeartbeatTTL      string        `env:"UDP_HEARTBEAT_TTL" envDefault:"0" help:"IP TTL / hop limit of heartbeats only (1..255); a NAT within N hops is refreshed and the server never sees them; 0 = off; auto (with interval=auto and payload=stun) learns the NAT's distance"`
	HeartbeatReply    string        `env:"UDP_HEARTBEAT_REPLY" help:"what counts as a pong (consumed, never passed to the app): none, stun, hex:<bytes>, text:<string>; default stun for payload stun, else none"`
	HeartbeatTTLHeal  time.Duration `env:"UDP_HEARTBEAT_TTL_HEAL" envDefault:"5m" help:"with a heartbeat TTL: send one heartbeat at the normal TTL at least this often, so a mapping lost to a NAT restart comes back without app traffic (the server then sees one heartbeat per period); 0 = never"`
	DeadAfter         int           `env:"UDP_DEAD_AFTER" envDefault:"3" help:"heartbeat intervals in a row with nothing at all from the upstream that declare the peer dead (only with a reply)"`
	OnDead            string        `env:"UDP_ON_DEAD" envDefault:"keep" help:"what a dead peer's flow does: keep (same local port, so a lost mapping is re-created where the server expects it; follows a changed DNS address) or rebind (a new local port, for NATs that must be given a fresh mapping)"`
	STUNStrict        bool          `env:"UDP_STUN_STRICT" envDefault:"false" help:"responder routes: answer only Binding Requests that end in a valid FINGERPRINT (for servers whose own protocol could look like STUN); default answers every well-formed RFC 5389/8489 Binding Request"`
	FlowIdleTimeout   time.Duration `env:"UDP_FLOW_IDLE_TIMEOUT" envDefault:"10m" help:"forget a flow after this long without application traffic either way; heartbeats never extend it"`
	UnansweredTimeout time.Duration `env:"UDP_UNANSWERED_TIMEOUT" envDefault:"30s" help:"forget a flow whose upstream has sent nothing at all after this long without app traffic (like conntrack's unreplied timeout); 0 = the idle timeout for every flow"`
	MaxFlows          string        `env:"UDP_MAX_FLOWS" envDefault:"auto" help:"flows per UDP route, or auto: what the host allows (RLIMIT_NOFILE less a reserve, half the ephemeral ports; at most 65536); more are refused and counted"`
	MaxFlowsPerSource int           `env:"UDP_MAX_FLOWS_PER_SOURCE" envDefault:"0" help:"flows one client address may hold on a route (for listeners strangers can reach); 0 = no quota (a full route still lets a source below its fair share in)"`
	AnswerRate        int           `env:"UDP_RESPONDER_RATE" envDefault:"20" help:"responder routes: STUN answers per second per source address (burst twice that); excess requests are dropped and counted"`

	KeepaliveIdle     time.Duration `env:"TCP_KEEPALIVE_IDLE" envDefault:"60s" help:"TCP idle time before the first keepalive probe (whole seconds, 1s..32767s); 0 turns keepalive off"`
	KeepaliveInterval time.Duration `env:"TCP_KEEPALIVE_INTERVAL" envDefault:"10s" help:"time between TCP keepalive probes (whole seconds, 1s..32767s)"`
	KeepaliveCount    int           `env:"TCP_KEEPALIVE_COUNT" envDefault:"6" help:"unanswered probes before the connection is dropped (1..127)"`
	UserTimeout       string        `env:"TCP_USER_TIMEOUT" help:"TCP_USER_TIMEOUT: unacknowledged data older than this fails the connection; default idle + interval*count; 0 turns it off"`
	ConnectTimeout    time.Duration `env:"TCP_CONNECT_TIMEOUT" envDefault:"10s" help:"upstream dial timeout"`
	MaxConns          string        `env:"TCP_MAX_CONNS" envDefault:"auto" help:"open connections per TCP route, or auto: what the host's descriptors allow (two per connection); 0 = no per-route limit; more are reset and counted"`
	ConnIdleTimeout   time.Duration `env:"TCP_IDLE_TIMEOUT" envDefault:"0" help:"close a TCP connection idle both ways this long; 0 = never (idle connections are what natkeep keeps alive)"`

	ResolveInterval time.Duration `env:"RESOLVE_INTERVAL" envDefault:"30s" help:"how often upstream DNS names are re-resolved"`
	Workers         string        `env:"WORKERS" envDefault:"auto" help:"UDP listeners per route (SO_REUSEPORT; transparent routes keep one), each with its own flow table, scheduler and epoll loop, so every core relays; the kernel keeps each client on one; auto = GOMAXPROCS (the CPUs natkeep may use); flow limits are split between them"`
	AdminAddr       string        `env:"ADMIN_ADDR" help:"HTTP address for /metrics, /healthz, /readyz (default :9299); empty or off disables"`
	DrainTimeout    time.Duration `env:"DRAIN_TIMEOUT" envDefault:"15s" help:"on SIGTERM/SIGINT: stop accepting, let open connections finish for up to this long"`
	LogLevel        string        `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat       string        `env:"LOG_FORMAT" envDefault:"auto" help:"auto (coloured text on a terminal, JSON otherwise), text or json; NO_COLOR is honoured"`
}

// Config is the validated configuration that main wires together.
type Config struct {
	Relay     relay.Config  // NATKEEP_ROUTES in order, then the transparent listeners
	Intercept *Intercept    // transparent mode; no rules when off
	AdminAddr string        // "" = no admin server
	LogLevel  string        // debug, info, warn or error
	LogFormat string        // auto, text or json
	Host      machine.Facts // the limits the budget and the auto limits come from

	DrainTimeout time.Duration // on SIGTERM/SIGINT: how long open connections may finish
}

// Error is a configuration error: main prints it on one line and exits with status 2.
type Error struct{ msg string }

// Error is the message, which names the variable and what is wrong with it.
func (e *Error) Error() string { return e.msg }

func errorf(format string, args ...any) error {
	return &Error{msg: fmt.Sprintf(format, args...)}
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

// Load parses and validates the environment, given as a map, for a host
// with the given limits (machine.Read(); zero Facts = no known limits).
// It is Check stopping at the first error, so that start-up and `natkeep
// check` can never disagree.
func Load(environ map[string]string, host machine.Facts) (*Config, error) {
	c, errs := Check(environ, host)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return c, nil
}

// loadProcess validates what concerns the whole process: logging, the
// admin address, re-resolution and the drain.
func loadProcess(ec envConfig, environ map[string]string) (*Config, error) {
	c := &Config{LogLevel: strings.ToLower(ec.LogLevel), LogFormat: strings.ToLower(ec.LogFormat)}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return nil, errorf("%s=%q: want debug, info, warn or error", envKey("LogLevel"), ec.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return nil, errorf("%s=%q: want auto, text or json", envKey("LogFormat"), ec.LogFormat)
	}
	var err error
	if c.AdminAddr, err = adminAddr(environ); err != nil {
		return nil, err
	}
	if ec.ResolveInterval <= 0 {
		return nil, errorf("%s=%s: must be positive", envKey("ResolveInterval"), ec.ResolveInterval)
	}
	if ec.DrainTimeout < 0 {
		return nil, errorf("%s=%s: must not be negative", envKey("DrainTimeout"), ec.DrainTimeout)
	}
	c.Relay.ResolveInterval = ec.ResolveInterval
	c.DrainTimeout = ec.DrainTimeout
	return c, nil
}

// adminAddr is NATKEEP_ADMIN_ADDR: the default when unset, "" when off.
func adminAddr(environ map[string]string) (string, error) {
	v, set := environ[VarAdminAddr]
	switch {
	case !set:
		return DefaultAdminAddr, nil
	case v == "" || v == "off":
		return "", nil
	}
	if _, err := parseListen(v); err != nil {
		return "", errorf("%s=%q: %v", VarAdminAddr, v, err)
	}
	return v, nil
}

// loadDefaults validates the global variables as the defaults of every
// route, naming the variable, before any route overrides them.
func loadDefaults(ec envConfig, host machine.Facts) (routeSettings, error) {
	defs := routeSettings{
		fallback: ec.HeartbeatFallback, relearn: ec.PathRelearn, payload: ec.HeartbeatPayload,
		reply: ec.HeartbeatReply, deadAfter: ec.DeadAfter, idleTimeout: ec.FlowIdleTimeout,
		ttlHeal: ec.HeartbeatTTLHeal, onDead: ec.OnDead, stunStrict: ec.STUNStrict,
		role: string(relay.RoleClient), unanswered: ec.UnansweredTimeout, perSource: ec.MaxFlowsPerSource, answerRate: ec.AnswerRate,
		kaIdle: ec.KeepaliveIdle, kaInterval: ec.KeepaliveInterval, kaCount: ec.KeepaliveCount,
		userTimeout: ec.UserTimeout, connectTimeout: ec.ConnectTimeout, connIdle: ec.ConnIdleTimeout, host: host,
	}
	if err := setInterval(&defs, ec.HeartbeatInterval); err != nil {
		return defs, errorf("%s=%q: %v", envKey("HeartbeatInterval"), ec.HeartbeatInterval, err)
	}
	if err := setTTL(&defs, ec.HeartbeatTTL); err != nil {
		return defs, errorf("%s=%q: %v", envKey("HeartbeatTTL"), ec.HeartbeatTTL, err)
	}
	if err := queryKeys["max_flows"].set(&defs, ec.MaxFlows); err != nil {
		return defs, errorf("%s=%q: %v", envKey("MaxFlows"), ec.MaxFlows, err)
	}
	if err := queryKeys["max_conns"].set(&defs, ec.MaxConns); err != nil {
		return defs, errorf("%s=%q: %v", envKey("MaxConns"), ec.MaxConns, err)
	}
	if _, err := defs.udp(); err != nil {
		return defs, globalError(err)
	}
	if _, err := defs.tcp(); err != nil {
		return defs, globalError(err)
	}
	return defs, nil
}

// loadRoutes builds the relay's routes: the NATKEEP_ROUTES entries, in
// order, then the transparent listeners that interception needs.
func loadRoutes(list string, ic *Intercept, defs routeSettings) ([]relay.Route, error) {
	var routes []relay.Route
	var err error
	if strings.TrimSpace(list) == "" {
		if !ic.Enabled() {
			return nil, errorf("%s is required (or %s for transparent mode): set it to a route list such as udp://127.0.0.1:5060/sip.example.net:5060", envKey("Routes"), VarIntercept)
		}
	} else if routes, err = parseRoutes(list, defs); err != nil {
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
	return append(routes, transparent...), nil
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

// ListenError makes a route's bind failure (*relay.ListenError) an *Error naming where the route was set.
func (c *Config) ListenError(err error) error {
	// Other errors pass as they are.
	var le *relay.ListenError
	if !errors.As(err, &le) {
		return err
	}
	return errorf("%s: listen %s: %v", c.routeOrigin(le.Index), le.Route.Listen, le.Err)
}

// AdminListenError is the *Error for an admin address that cannot be bound.
func (c *Config) AdminListenError(err error) error {
	return errorf("%s=%q: listen %s: %v", VarAdminAddr, c.AdminAddr, c.AdminAddr, bindCause(err))
}

// routeOrigin names the setting that route i comes from: its
// NATKEEP_ROUTES entry (Load puts those first, in order), or for a
// transparent listener the variable with its port.
func (c *Config) routeOrigin(i int) string {
	rt := c.Relay.Routes[i]
	if !rt.Transparent {
		return fmt.Sprintf("%s entry %d %q", envKey("Routes"), i+1, rt.Name)
	}
	field := "UDPPort"
	if rt.Proto == relay.TCP {
		field = "TCPPort"
	}
	return fmt.Sprintf("%s=%s", interceptKey(field), strings.TrimPrefix(rt.Listen, ":"))
}

// bindCause is a bind failure without the operation, address and syscall
// name that net wraps it in, which the message says already.
func bindCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		err = sc.Err
	}
	return err
}
