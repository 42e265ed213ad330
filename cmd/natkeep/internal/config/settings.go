package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/relay"
	"github.com/natkeep/natkeep/sockopt"
)

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
	intervalAuto   bool // interval=auto: learn it (path learning)
	fallback       time.Duration
	relearn        time.Duration
	payload        string
	ttl            int // autoLimit: ttl=auto
	reply          string
	deadAfter      int
	ttlHeal        time.Duration
	onDead         string
	stunStrict     bool
	idleTimeout    time.Duration
	unanswered     time.Duration
	maxFlows       int // autoLimit: derived from the host
	perSource      int
	answerRate     int
	role           string
	kaIdle         time.Duration
	kaInterval     time.Duration
	kaCount        int
	userTimeout    string
	connectTimeout time.Duration
	maxConns       int // autoLimit: derived from the host
	connIdle       time.Duration

	host machine.Facts // what the machine allows
}

// autoLimit is max_flows=auto / max_conns=auto: as many as the host's
// budget allows (see package machine).
const autoLimit = math.MinInt32

// maxFlowsCap is the auto flow limit on a host without known limits.
const maxFlowsCap = 65536

func limitSetter(dst func(*routeSettings) *int) func(*routeSettings, string) error {
	return func(s *routeSettings, v string) error {
		if v == "auto" {
			*dst(s) = autoLimit
			return nil
		}
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			var ne *strconv.NumError
			if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
				return errors.New("not a valid whole number: value out of range")
			}
			return errors.New("not a valid whole number (or auto)")
		}
		*dst(s) = int(n)
		return nil
	}
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
	"interval":             {"HeartbeatInterval", relay.UDP, setInterval},
	"interval_fallback":    {"HeartbeatFallback", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.fallback })},
	"relearn":              {"PathRelearn", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.relearn })},
	"payload":              {"HeartbeatPayload", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.payload })},
	"ttl":                  {"HeartbeatTTL", relay.UDP, setTTL},
	"reply":                {"HeartbeatReply", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.reply })},
	"dead_after":           {"DeadAfter", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.deadAfter })},
	"ttl_heal":             {"HeartbeatTTLHeal", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.ttlHeal })},
	"on_dead":              {"OnDead", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.onDead })},
	"stun_strict":          {"STUNStrict", relay.UDP, boolSetter(func(s *routeSettings) *bool { return &s.stunStrict })},
	"idle_timeout":         {"FlowIdleTimeout", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.idleTimeout })},
	"max_flows":            {"MaxFlows", relay.UDP, limitSetter(func(s *routeSettings) *int { return &s.maxFlows })},
	"unanswered_timeout":   {"UnansweredTimeout", relay.UDP, durationSetter(func(s *routeSettings) *time.Duration { return &s.unanswered })},
	"max_flows_per_source": {"MaxFlowsPerSource", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.perSource })},
	"answer_rate":          {"AnswerRate", relay.UDP, intSetter(func(s *routeSettings) *int { return &s.answerRate })},
	"role":                 {"", relay.UDP, stringSetter(func(s *routeSettings) *string { return &s.role })},
	"keepalive_idle":       {"KeepaliveIdle", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.kaIdle })},
	"keepalive_interval":   {"KeepaliveInterval", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.kaInterval })},
	"keepalive_count":      {"KeepaliveCount", relay.TCP, intSetter(func(s *routeSettings) *int { return &s.kaCount })},
	"user_timeout":         {"UserTimeout", relay.TCP, stringSetter(func(s *routeSettings) *string { return &s.userTimeout })},
	"connect_timeout":      {"ConnectTimeout", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.connectTimeout })},
	"max_conns":            {"MaxConns", relay.TCP, limitSetter(func(s *routeSettings) *int { return &s.maxConns })},
	"conn_idle_timeout":    {"ConnIdleTimeout", relay.TCP, durationSetter(func(s *routeSettings) *time.Duration { return &s.connIdle })},
}

// setInterval takes a duration or auto (learn the path's binding lifetime).
func setInterval(s *routeSettings, v string) error {
	if v == "auto" {
		s.intervalAuto = true
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("not a valid duration (e.g. 20s, 1m30s) or auto")
	}
	s.interval, s.intervalAuto = d, false
	return nil
}

// setTTL takes a whole number or auto (learn the NAT distance).
func setTTL(s *routeSettings, v string) error {
	if v == "auto" {
		s.ttl = autoLimit
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return errors.New("not a valid whole number (or auto)")
	}
	s.ttl = n
	return nil
}

// minRelearn keeps re-learning from turning into constant probing.
const minRelearn = time.Minute

// errTransparentAuto is why path learning is not offered in transparent mode.
const errTransparentAuto = "not available in transparent mode: each intercepted flow goes to a destination of its own, so there is no one upstream to probe; give the interval (and ttl) as values"

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
	autoTTL := s.ttl == autoLimit
	if !autoTTL && (s.ttl < 0 || s.ttl > 255) {
		return o, &settingError{"ttl", "HeartbeatTTL", strconv.Itoa(s.ttl), "must be 0 (off), 1..255 or auto"}
	}
	if autoTTL && !s.intervalAuto {
		return o, &settingError{"ttl", "HeartbeatTTL", "auto", "needs interval=auto: the distance search waits out the learned binding lifetime"}
	}
	if autoTTL && p.Kind != keepalive.PayloadSTUN {
		return o, &settingError{"ttl", "HeartbeatTTL", "auto", fmt.Sprintf("needs payload=stun (payload is %s): the route's normal-TTL heal heartbeats are its only source of liveness and RTT", p)}
	}
	if s.intervalAuto {
		if s.fallback < keepalive.MinLearnedInterval {
			return o, &settingError{"interval_fallback", "HeartbeatFallback", s.fallback.String(), fmt.Sprintf("must be at least %s", keepalive.MinLearnedInterval)}
		}
		if s.relearn != 0 && s.relearn < minRelearn {
			return o, &settingError{"relearn", "PathRelearn", s.relearn.String(), fmt.Sprintf("must be 0 (never) or at least %s", minRelearn)}
		}
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
	if s.unanswered < 0 {
		return o, &settingError{"unanswered_timeout", "UnansweredTimeout", s.unanswered.String(), "must not be negative (0 = the idle timeout for every flow)"}
	}
	if o.MaxFlows, err = s.flowLimit(); err != nil {
		return o, err
	}
	if s.perSource < 0 || s.perSource > o.MaxFlows {
		return o, &settingError{"max_flows_per_source", "MaxFlowsPerSource", strconv.Itoa(s.perSource), fmt.Sprintf("must be 0 (no quota) or 1..max_flows (%d)", o.MaxFlows)}
	}
	if s.answerRate < 1 {
		return o, &settingError{"answer_rate", "AnswerRate", strconv.Itoa(s.answerRate), "must be at least 1 (answers per second per source)"}
	}
	o.Payload, o.TTL, o.STUNStrict = p, s.ttl, s.stunStrict
	o.FlowIdleTimeout, o.UnansweredTimeout = s.idleTimeout, s.unanswered
	o.MaxFlowsPerSource, o.AnswerRate = s.perSource, s.answerRate
	// Heal matters only with a TTL (the relay sends every heartbeat at the
	// normal TTL otherwise); it is kept as configured so the options read
	// the same whatever the ttl.
	o.Heartbeat = keepalive.Schedule{Interval: s.interval, DeadAfter: s.deadAfter, Pong: r, Rebind: rebind, Heal: s.ttlHeal}
	if s.intervalAuto {
		// The fallback is in force until the relay has learned the path.
		o.Heartbeat.Interval = s.fallback
		o.Path = relay.PathOptions{AutoInterval: true, Fallback: s.fallback, Relearn: s.relearn, AutoTTL: autoTTL}
	}
	if autoTTL {
		o.TTL = 0 // learned; the normal TTL until then
	}
	if o.Role == relay.RoleResponder {
		// A responder sits beside the server: it answers heartbeats, it
		// does not send its own across a NAT it is not behind.
		o.Heartbeat.Interval = 0
		o.Path = relay.PathOptions{}
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
		if err := validateKeepalive(s); err != nil {
			return o, err
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
	var err error
	if o.MaxConns, err = s.connLimit(); err != nil {
		return o, err
	}
	if s.connIdle < 0 {
		return o, &settingError{"conn_idle_timeout", "ConnIdleTimeout", s.connIdle.String(), "must not be negative (0 = never)"}
	}
	o.ConnectTimeout, o.IdleTimeout = s.connectTimeout, s.connIdle
	return o, nil
}

// flowLimit resolves max_flows against what the host allows: auto takes
// the host's budget (at most 65536); an explicit value above it is an error,
// because past it flows would fail on exhaustion instead of being refused.
func (s routeSettings) flowLimit() (int, error) {
	allowed := s.host.MaxFlows(false)
	switch {
	case s.maxFlows == autoLimit:
		if allowed > 0 && allowed < maxFlowsCap {
			return allowed, nil
		}
		return maxFlowsCap, nil
	case s.maxFlows < 1:
		return 0, &settingError{"max_flows", "MaxFlows", strconv.Itoa(s.maxFlows), "must be at least 1 (or auto)"}
	case allowed > 0 && s.maxFlows > allowed:
		return 0, &settingError{"max_flows", "MaxFlows", strconv.Itoa(s.maxFlows), fmt.Sprintf("above what this host allows: %d (%s); raise the limits or use auto", allowed, s.host.Describe())}
	}
	return s.maxFlows, nil
}

// connLimit resolves max_conns the same way: auto is the host's descriptor
// budget over two descriptors a connection (0, no limit, where unknown); 0
// sets no per-route limit (the budget still holds).
func (s routeSettings) connLimit() (int, error) {
	allowed := s.host.MaxConns()
	switch {
	case s.maxConns == autoLimit:
		return allowed, nil
	case s.maxConns < 0:
		return 0, &settingError{"max_conns", "MaxConns", strconv.Itoa(s.maxConns), "must be 0 (unlimited) or positive, or auto"}
	case allowed > 0 && s.maxConns > allowed:
		return 0, &settingError{"max_conns", "MaxConns", strconv.Itoa(s.maxConns), fmt.Sprintf("above what this host allows: %d (%s); raise the limits or use auto", allowed, s.host.Describe())}
	}
	return s.maxConns, nil
}

// validateKeepalive checks the keepalive settings one field at a time (the
// others at a value the kernel takes), so that an error is the first bad
// field's, named by its own key, with sockopt's message and ranges.
func validateKeepalive(s routeSettings) error {
	for _, f := range []struct {
		key, field, value string
		ka                sockopt.Keepalive
	}{
		{"keepalive_idle", "KeepaliveIdle", s.kaIdle.String(), sockopt.Keepalive{Idle: s.kaIdle, Interval: time.Second, Count: 1}},
		{"keepalive_interval", "KeepaliveInterval", s.kaInterval.String(), sockopt.Keepalive{Idle: time.Second, Interval: s.kaInterval, Count: 1}},
		{"keepalive_count", "KeepaliveCount", strconv.Itoa(s.kaCount), sockopt.Keepalive{Idle: time.Second, Interval: time.Second, Count: s.kaCount}},
	} {
		if err := f.ka.Validate(); err != nil {
			return &settingError{f.key, f.field, f.value, err.Error()}
		}
	}
	return nil
}
