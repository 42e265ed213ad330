package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/relay"
	"github.com/natkeep/natkeep/sockopt"
)

// Test helpers are prefixed cfg* so they cannot collide with helpers in the
// other test files of this package.

const (
	cfgUDPRoute = "udp://127.0.0.1:5060/sip.example.net:5060"
	cfgTCPRoute = "tcp://:5432/db.internal:5432"
)

// cfgEnv returns an environment with the given routes and extra key=value pairs.
func cfgEnv(routes string, kv ...string) map[string]string {
	if len(kv)%2 != 0 {
		panic("cfgEnv: odd number of key/value arguments")
	}
	m := map[string]string{"NATKEEP_ROUTES": routes}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func cfgPayload(t testing.TB, s string) keepalive.Payload {
	t.Helper()
	p, err := keepalive.ParsePayload(s)
	if err != nil {
		t.Fatalf("ParsePayload(%q): %v", s, err)
	}
	return p
}

func cfgReply(t testing.TB, s string, p keepalive.Payload) keepalive.Reply {
	t.Helper()
	r, err := keepalive.ParseReply(s, p)
	if err != nil {
		t.Fatalf("ParseReply(%q, %s): %v", s, p, err)
	}
	return r
}

// cfgUDPDefaults are the UDP options of a route when nothing is overridden.
func cfgUDPDefaults(t testing.TB) relay.UDPOptions {
	p := cfgPayload(t, "empty")
	return relay.UDPOptions{
		Role:              relay.RoleClient,
		Heartbeat:         keepalive.Schedule{Interval: 20 * time.Second, DeadAfter: 3, Pong: cfgReply(t, "", p), Heal: 5 * time.Minute},
		Payload:           p,
		TTL:               0,
		FlowIdleTimeout:   10 * time.Minute,
		UnansweredTimeout: 30 * time.Second,
		AnswerRate:        20,
		MaxFlows:          65536,
	}
}

// cfgTCPDefaults are the TCP options of a route when nothing is overridden.
func cfgTCPDefaults() relay.TCPOptions {
	return relay.TCPOptions{
		Keepalive:      sockopt.Keepalive{Idle: 60 * time.Second, Interval: 10 * time.Second, Count: 6},
		UserTimeout:    2 * time.Minute, // idle + interval*count = 60s + 10s*6
		ConnectTimeout: 10 * time.Second,
		MaxConns:       0,
	}
}

// cfgLoad loads env and fails the test on error.
func cfgLoad(t *testing.T, env map[string]string) *Config {
	t.Helper()
	c, err := Load(env, machine.Facts{})
	if err != nil {
		t.Fatalf("Load(%v): unexpected error: %v", env, err)
	}
	if c == nil {
		t.Fatalf("Load(%v): nil config and nil error", env)
	}
	return c
}

// cfgOneRoute loads a single route and returns it.
func cfgOneRoute(t *testing.T, env map[string]string) relay.Route {
	t.Helper()
	c := cfgLoad(t, env)
	if len(c.Relay.Routes) != 1 {
		t.Fatalf("got %d routes, want 1: %+v", len(c.Relay.Routes), c.Relay.Routes)
	}
	return c.Relay.Routes[0]
}

// cfgWantErr loads env, expects an *Error and checks that the message
// starts with NATKEEP_ and contains every fragment.
func cfgWantErr(t *testing.T, env map[string]string, frags ...string) string {
	t.Helper()
	c, err := Load(env, machine.Facts{})
	if err == nil {
		t.Fatalf("Load(%v) = %+v, want an error containing %q", env, c, frags)
	}
	if c != nil {
		t.Errorf("Load returned a config along with error %v", err)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Errorf("error %v is %T, want *Error", err, err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, envPrefix) {
		t.Errorf("error %q does not start with %q", msg, envPrefix)
	}
	for _, dup := range []string{"listen listen", "upstream upstream", "host host", "port port"} {
		if strings.Contains(msg, dup) {
			t.Errorf("error %q repeats a word: %q", msg, dup)
		}
	}
	for _, f := range frags {
		if !strings.Contains(msg, f) {
			t.Errorf("error %q does not contain %q", msg, f)
		}
	}
	return msg
}

// cfgRouteErrPrefix is how every route error starts.
func cfgRouteErrPrefix(n int, entry string) string {
	return fmt.Sprintf("NATKEEP_ROUTES entry %d %q: ", n, entry)
}

func TestConfigDefaults(t *testing.T) {
	c := cfgLoad(t, cfgEnv(cfgUDPRoute+","+cfgTCPRoute))
	if c.AdminAddr != ":9299" {
		t.Errorf("AdminAddr = %q, want :9299", c.AdminAddr)
	}
	if c.LogLevel != "info" || c.LogFormat != "auto" {
		t.Errorf("log = %q/%q, want info/auto", c.LogLevel, c.LogFormat)
	}
	if c.Relay.ResolveInterval != 30*time.Second {
		t.Errorf("ResolveInterval = %v, want 30s", c.Relay.ResolveInterval)
	}
	if c.DrainTimeout != 15*time.Second {
		t.Errorf("DrainTimeout = %v, want 15s", c.DrainTimeout)
	}
	want := []relay.Route{
		{Name: cfgUDPRoute, Proto: relay.UDP, Listen: "127.0.0.1:5060", Upstream: "sip.example.net:5060", UDP: cfgUDPDefaults(t)},
		{Name: cfgTCPRoute, Proto: relay.TCP, Listen: ":5432", Upstream: "db.internal:5432", TCP: cfgTCPDefaults()},
	}
	if !reflect.DeepEqual(c.Relay.Routes, want) {
		t.Errorf("routes:\n got %+v\nwant %+v", c.Relay.Routes, want)
	}
	// Spot-check the documented defaults field by field as well, so a
	// failure names the field rather than a whole struct.
	u := c.Relay.Routes[0].UDP
	if u.Heartbeat.Interval != 20*time.Second || u.Payload.Kind != keepalive.PayloadEmpty || u.Payload.String() != "empty" ||
		u.TTL != 0 || u.Heartbeat.DeadAfter != 3 || u.FlowIdleTimeout != 10*time.Minute || u.MaxFlows != 65536 ||
		u.Heartbeat.Pong.Kind != keepalive.ReplyNone || u.Heartbeat.Pong.Enabled() || u.Role != relay.RoleClient {
		t.Errorf("UDP defaults wrong: %+v", u)
	}
	tc := c.Relay.Routes[1].TCP
	if tc.Keepalive.Idle != 60*time.Second || tc.Keepalive.Interval != 10*time.Second || tc.Keepalive.Count != 6 ||
		tc.UserTimeout != 2*time.Minute || tc.ConnectTimeout != 10*time.Second || tc.MaxConns != 0 {
		t.Errorf("TCP defaults wrong: %+v", tc)
	}
}

// TestConfigExplicitDefaultsMatchUnset sets every variable that has an
// envDefault tag to that default explicitly (and to the empty string, which
// the env library treats as unset) and expects the unset configuration.
func TestConfigExplicitDefaultsMatchUnset(t *testing.T) {
	base := cfgEnv(cfgUDPRoute + "," + cfgTCPRoute)
	want := cfgLoad(t, base)
	typ := reflect.TypeFor[envConfig]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		def, ok := f.Tag.Lookup("envDefault")
		if !ok {
			continue
		}
		key := envKey(f.Name)
		for _, v := range []string{def, ""} {
			t.Run(key+"="+v, func(t *testing.T) {
				env := cfgEnv(base["NATKEEP_ROUTES"], key, v)
				got := cfgLoad(t, env)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s=%q changed the config:\n got %+v\nwant %+v", key, v, got, want)
				}
			})
		}
	}
}

func TestConfigGlobalVariables(t *testing.T) {
	tests := []struct {
		name  string
		kv    []string
		check func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions)
	}{
		{"heartbeat interval", []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "5s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.Interval != 5*time.Second {
				t.Errorf("Interval = %v", u.Heartbeat.Interval)
			}
		}},
		{"heartbeat interval 0 is off", []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "0"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.Interval != 0 || u.Heartbeat.Enabled() {
				t.Errorf("Interval = %v, want 0 (off)", u.Heartbeat.Interval)
			}
		}},
		{"heartbeat interval minimum 100ms", []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "100ms"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.Interval != 100*time.Millisecond {
				t.Errorf("Interval = %v", u.Heartbeat.Interval)
			}
		}},
		{"heartbeat payload crlf", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Payload.Kind != keepalive.PayloadCRLF || string(u.Payload.Bytes) != "\r\n" || u.Heartbeat.Pong.Kind != keepalive.ReplyNone || u.Heartbeat.Pong.Enabled() {
				t.Errorf("payload %+v reply %+v", u.Payload, u.Heartbeat.Pong)
			}
		}},
		{"heartbeat payload stun implies reply stun", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "stun"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Payload.Kind != keepalive.PayloadSTUN || u.Heartbeat.Pong.Kind != keepalive.ReplySTUN || !u.Heartbeat.Pong.Enabled() {
				t.Errorf("payload %+v reply %+v expect %v", u.Payload, u.Heartbeat.Pong, u.Heartbeat.Pong.Enabled())
			}
		}},
		{"heartbeat payload hex", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "hex:deadBEEF"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Payload.Kind != keepalive.PayloadBytes || string(u.Payload.Bytes) != "\xde\xad\xbe\xef" {
				t.Errorf("payload %+v", u.Payload)
			}
		}},
		{"heartbeat ttl", []string{"NATKEEP_UDP_HEARTBEAT_TTL", "3"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.TTL != 3 {
				t.Errorf("TTL = %d", u.TTL)
			}
		}},
		{"heartbeat ttl 255", []string{"NATKEEP_UDP_HEARTBEAT_TTL", "255"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.TTL != 255 {
				t.Errorf("TTL = %d", u.TTL)
			}
		}},
		{"heartbeat reply text", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "text:ping", "NATKEEP_UDP_HEARTBEAT_REPLY", "text:pong"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.Pong.Kind != keepalive.ReplyBytes || string(u.Heartbeat.Pong.Bytes) != "pong" || !u.Heartbeat.Pong.Enabled() || u.Heartbeat.Pong.String() != "text:pong" {
				t.Errorf("reply %+v expect %v", u.Heartbeat.Pong, u.Heartbeat.Pong.Enabled())
			}
		}},
		{"heartbeat reply none", []string{"NATKEEP_UDP_HEARTBEAT_REPLY", "none"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.Pong.Kind != keepalive.ReplyNone || u.Heartbeat.Pong.Enabled() {
				t.Errorf("reply %+v", u.Heartbeat.Pong)
			}
		}},
		{"dead after", []string{"NATKEEP_UDP_DEAD_AFTER", "5"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.Heartbeat.DeadAfter != 5 {
				t.Errorf("DeadAfter = %d", u.Heartbeat.DeadAfter)
			}
		}},
		{"flow idle timeout", []string{"NATKEEP_UDP_FLOW_IDLE_TIMEOUT", "90s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.FlowIdleTimeout != 90*time.Second {
				t.Errorf("FlowIdleTimeout = %v", u.FlowIdleTimeout)
			}
		}},
		{"max flows", []string{"NATKEEP_UDP_MAX_FLOWS", "10"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if u.MaxFlows != 10 {
				t.Errorf("MaxFlows = %d", u.MaxFlows)
			}
		}},
		{"keepalive idle changes default user timeout", []string{"NATKEEP_TCP_KEEPALIVE_IDLE", "30s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive.Idle != 30*time.Second || tc.UserTimeout != 90*time.Second {
				t.Errorf("keepalive %+v user timeout %v, want idle 30s, user timeout 90s", tc.Keepalive, tc.UserTimeout)
			}
		}},
		{"keepalive idle max 32767s", []string{"NATKEEP_TCP_KEEPALIVE_IDLE", "32767s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive.Idle != 32767*time.Second {
				t.Errorf("keepalive %+v", tc.Keepalive)
			}
		}},
		{"keepalive idle 0 turns keepalive and default user timeout off", []string{"NATKEEP_TCP_KEEPALIVE_IDLE", "0"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive != (sockopt.Keepalive{}) || tc.UserTimeout != 0 {
				t.Errorf("keepalive %+v user timeout %v, want zero", tc.Keepalive, tc.UserTimeout)
			}
		}},
		{"keepalive idle 0 keeps explicit user timeout", []string{"NATKEEP_TCP_KEEPALIVE_IDLE", "0", "NATKEEP_TCP_USER_TIMEOUT", "45s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive != (sockopt.Keepalive{}) || tc.UserTimeout != 45*time.Second {
				t.Errorf("keepalive %+v user timeout %v", tc.Keepalive, tc.UserTimeout)
			}
		}},
		{"keepalive interval", []string{"NATKEEP_TCP_KEEPALIVE_INTERVAL", "5s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive.Interval != 5*time.Second || tc.UserTimeout != 90*time.Second {
				t.Errorf("keepalive %+v user timeout %v", tc.Keepalive, tc.UserTimeout)
			}
		}},
		{"keepalive count", []string{"NATKEEP_TCP_KEEPALIVE_COUNT", "3"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive.Count != 3 || tc.UserTimeout != 90*time.Second {
				t.Errorf("keepalive %+v user timeout %v", tc.Keepalive, tc.UserTimeout)
			}
		}},
		{"keepalive count 127", []string{"NATKEEP_TCP_KEEPALIVE_COUNT", "127"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.Keepalive.Count != 127 {
				t.Errorf("keepalive %+v", tc.Keepalive)
			}
		}},
		{"user timeout", []string{"NATKEEP_TCP_USER_TIMEOUT", "30s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.UserTimeout != 30*time.Second {
				t.Errorf("UserTimeout = %v", tc.UserTimeout)
			}
		}},
		{"user timeout 0 is off", []string{"NATKEEP_TCP_USER_TIMEOUT", "0"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.UserTimeout != 0 || tc.Keepalive.Idle != 60*time.Second {
				t.Errorf("UserTimeout = %v keepalive %+v", tc.UserTimeout, tc.Keepalive)
			}
		}},
		{"connect timeout", []string{"NATKEEP_TCP_CONNECT_TIMEOUT", "3s"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.ConnectTimeout != 3*time.Second {
				t.Errorf("ConnectTimeout = %v", tc.ConnectTimeout)
			}
		}},
		{"max conns", []string{"NATKEEP_TCP_MAX_CONNS", "100"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if tc.MaxConns != 100 {
				t.Errorf("MaxConns = %d", tc.MaxConns)
			}
		}},
		{"resolve interval", []string{"NATKEEP_RESOLVE_INTERVAL", "1m"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.Relay.ResolveInterval != time.Minute {
				t.Errorf("ResolveInterval = %v", c.Relay.ResolveInterval)
			}
		}},
		{"admin addr ipv4", []string{"NATKEEP_ADMIN_ADDR", "127.0.0.1:9000"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.AdminAddr != "127.0.0.1:9000" {
				t.Errorf("AdminAddr = %q", c.AdminAddr)
			}
		}},
		{"admin addr ipv6", []string{"NATKEEP_ADMIN_ADDR", "[::1]:9000"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.AdminAddr != "[::1]:9000" {
				t.Errorf("AdminAddr = %q", c.AdminAddr)
			}
		}},
		{"admin addr all addresses", []string{"NATKEEP_ADMIN_ADDR", ":9000"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.AdminAddr != ":9000" {
				t.Errorf("AdminAddr = %q", c.AdminAddr)
			}
		}},
		{"admin addr empty disables", []string{"NATKEEP_ADMIN_ADDR", ""}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.AdminAddr != "" {
				t.Errorf("AdminAddr = %q, want disabled", c.AdminAddr)
			}
		}},
		{"admin addr off disables", []string{"NATKEEP_ADMIN_ADDR", "off"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.AdminAddr != "" {
				t.Errorf("AdminAddr = %q, want disabled", c.AdminAddr)
			}
		}},
		{"drain timeout", []string{"NATKEEP_DRAIN_TIMEOUT", "1m"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.DrainTimeout != time.Minute {
				t.Errorf("DrainTimeout = %v", c.DrainTimeout)
			}
		}},
		{"drain timeout 0", []string{"NATKEEP_DRAIN_TIMEOUT", "0"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.DrainTimeout != 0 {
				t.Errorf("DrainTimeout = %v", c.DrainTimeout)
			}
		}},
		{"log level case-insensitive", []string{"NATKEEP_LOG_LEVEL", "DEBUG"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.LogLevel != "debug" {
				t.Errorf("LogLevel = %q", c.LogLevel)
			}
		}},
		{"log level warn", []string{"NATKEEP_LOG_LEVEL", "warn"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.LogLevel != "warn" {
				t.Errorf("LogLevel = %q", c.LogLevel)
			}
		}},
		{"log level error", []string{"NATKEEP_LOG_LEVEL", "error"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.LogLevel != "error" {
				t.Errorf("LogLevel = %q", c.LogLevel)
			}
		}},
		{"log format json", []string{"NATKEEP_LOG_FORMAT", "json"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.LogFormat != "json" {
				t.Errorf("LogFormat = %q", c.LogFormat)
			}
		}},
		{"log format text", []string{"NATKEEP_LOG_FORMAT", "text"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if c.LogFormat != "text" {
				t.Errorf("LogFormat = %q", c.LogFormat)
			}
		}},
		{"unrelated variables are ignored", []string{"NATKEEPER_HOME", "x", "PATH", "/bin"}, func(t *testing.T, c *Config, u relay.UDPOptions, tc relay.TCPOptions) {
			if !reflect.DeepEqual(u, cfgUDPDefaults(t)) || !reflect.DeepEqual(tc, cfgTCPDefaults()) {
				t.Errorf("defaults changed: %+v %+v", u, tc)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfgLoad(t, cfgEnv(cfgUDPRoute+","+cfgTCPRoute, tt.kv...))
			if len(c.Relay.Routes) != 2 {
				t.Fatalf("got %d routes", len(c.Relay.Routes))
			}
			tt.check(t, c, c.Relay.Routes[0].UDP, c.Relay.Routes[1].TCP)
		})
	}
}

func TestConfigGlobalErrors(t *testing.T) {
	tests := []struct {
		key, value string
		extra      []string // more variables
		frags      []string // besides KEY="value" or KEY=
	}{
		{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "abc", nil, []string{`NATKEEP_UDP_HEARTBEAT_INTERVAL="abc"`, "not a valid duration"}},
		{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "50ms", nil, []string{`NATKEEP_UDP_HEARTBEAT_INTERVAL="50ms"`, "must be 0 (off) or at least 100ms"}},
		{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "-1s", nil, []string{`NATKEEP_UDP_HEARTBEAT_INTERVAL="-1s"`, "must be 0 (off) or at least 100ms"}},
		{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "bogus", nil, []string{`NATKEEP_UDP_HEARTBEAT_PAYLOAD="bogus"`, "unknown kind"}},
		{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "hex:zz", nil, []string{`NATKEEP_UDP_HEARTBEAT_PAYLOAD="hex:zz"`, "bad hex"}},
		{"NATKEEP_UDP_HEARTBEAT_TTL", "300", nil, []string{`NATKEEP_UDP_HEARTBEAT_TTL="300": must be 0 (off), 1..255 or auto`}},
		{"NATKEEP_UDP_ON_DEAD", "reboot", nil, []string{`NATKEEP_UDP_ON_DEAD="reboot": want keep or rebind`}},
		{"NATKEEP_UDP_HEARTBEAT_TTL_HEAL", "-5m0s", nil, []string{`NATKEEP_UDP_HEARTBEAT_TTL_HEAL="-5m0s": must be 0 (never) or at least 100ms`}},
		{"NATKEEP_UDP_HEARTBEAT_TTL_HEAL", "x", nil, []string{`NATKEEP_UDP_HEARTBEAT_TTL_HEAL="x"`, "not a valid duration"}},
		{"NATKEEP_UDP_STUN_STRICT", "maybe", nil, []string{`NATKEEP_UDP_STUN_STRICT="maybe"`}},
		{"NATKEEP_UDP_HEARTBEAT_TTL", "-1", nil, []string{`NATKEEP_UDP_HEARTBEAT_TTL="-1": must be 0 (off), 1..255 or auto`}},
		{"NATKEEP_UDP_HEARTBEAT_TTL", "x", nil, []string{`NATKEEP_UDP_HEARTBEAT_TTL="x"`, "not a valid whole number"}},
		{"NATKEEP_UDP_HEARTBEAT_TTL", "2", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "stun"}, []string{`NATKEEP_UDP_HEARTBEAT_TTL="2"`, "reply stun can never arrive"}},
		{"NATKEEP_UDP_HEARTBEAT_REPLY", "stun", nil, []string{`NATKEEP_UDP_HEARTBEAT_REPLY="stun"`, "reply stun needs payload stun"}},
		{"NATKEEP_UDP_HEARTBEAT_REPLY", "bogus", nil, []string{`NATKEEP_UDP_HEARTBEAT_REPLY="bogus"`, "unknown kind"}},
		{"NATKEEP_UDP_HEARTBEAT_REPLY", "none", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "stun"}, []string{`NATKEEP_UDP_HEARTBEAT_REPLY="none"`, "always matched"}},
		{"NATKEEP_UDP_DEAD_AFTER", "0", nil, []string{`NATKEEP_UDP_DEAD_AFTER="0": must be at least 1`}},
		{"NATKEEP_UDP_DEAD_AFTER", "three", nil, []string{`NATKEEP_UDP_DEAD_AFTER="three"`, "not a valid whole number"}},
		{"NATKEEP_UDP_FLOW_IDLE_TIMEOUT", "0", nil, []string{`NATKEEP_UDP_FLOW_IDLE_TIMEOUT="0s": must be positive`}},
		{"NATKEEP_UDP_FLOW_IDLE_TIMEOUT", "10", nil, []string{`NATKEEP_UDP_FLOW_IDLE_TIMEOUT="10"`, "not a valid duration", "missing unit"}},
		{"NATKEEP_UDP_MAX_FLOWS", "0", nil, []string{`NATKEEP_UDP_MAX_FLOWS="0": must be at least 1`}},
		{"NATKEEP_UDP_MAX_FLOWS", "many", nil, []string{`NATKEEP_UDP_MAX_FLOWS="many"`, "not a valid whole number"}},
		{"NATKEEP_UDP_MAX_FLOWS", "99999999999", nil, []string{`NATKEEP_UDP_MAX_FLOWS="99999999999"`, "not a valid whole number", "out of range"}},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "40000s", nil, []string{`NATKEEP_TCP_KEEPALIVE_IDLE=`, "keepalive idle 40000s out of range 1s..32767s"}},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "1.5s", nil, []string{`NATKEEP_TCP_KEEPALIVE_IDLE="1.5s"`, "not a whole number of seconds"}},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "500ms", nil, []string{`NATKEEP_TCP_KEEPALIVE_IDLE="500ms"`, "out of range 1s..32767s"}},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "-1s", nil, []string{`NATKEEP_TCP_KEEPALIVE_IDLE="-1s"`, "must not be negative"}},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "soon", nil, []string{`NATKEEP_TCP_KEEPALIVE_IDLE="soon"`, "not a valid duration"}},
		{"NATKEEP_TCP_KEEPALIVE_INTERVAL", "0", nil, []string{`NATKEEP_TCP_KEEPALIVE_INTERVAL="0s"`, "keepalive interval 0s out of range"}},
		{"NATKEEP_TCP_KEEPALIVE_INTERVAL", "2.5s", nil, []string{`NATKEEP_TCP_KEEPALIVE_INTERVAL="2.5s"`, "not a whole number of seconds"}},
		{"NATKEEP_TCP_KEEPALIVE_COUNT", "0", nil, []string{`NATKEEP_TCP_KEEPALIVE_COUNT="0"`, "keepalive count 0 out of range 1..127"}},
		{"NATKEEP_TCP_KEEPALIVE_COUNT", "128", nil, []string{`NATKEEP_TCP_KEEPALIVE_COUNT="128"`, "out of range 1..127"}},
		{"NATKEEP_TCP_KEEPALIVE_COUNT", "six", nil, []string{`NATKEEP_TCP_KEEPALIVE_COUNT="six"`, "not a valid whole number"}},
		{"NATKEEP_TCP_USER_TIMEOUT", "abc", nil, []string{`NATKEEP_TCP_USER_TIMEOUT="abc"`, "not a valid duration"}},
		{"NATKEEP_TCP_USER_TIMEOUT", "1.5ms", nil, []string{`NATKEEP_TCP_USER_TIMEOUT="1.5ms"`, "not a whole number of milliseconds"}},
		{"NATKEEP_TCP_USER_TIMEOUT", "-1s", nil, []string{`NATKEEP_TCP_USER_TIMEOUT="-1s"`, "out of range"}},
		{"NATKEEP_TCP_CONNECT_TIMEOUT", "0", nil, []string{`NATKEEP_TCP_CONNECT_TIMEOUT="0s": must be positive`}},
		{"NATKEEP_TCP_CONNECT_TIMEOUT", "x", nil, []string{`NATKEEP_TCP_CONNECT_TIMEOUT="x"`, "not a valid duration"}},
		{"NATKEEP_TCP_MAX_CONNS", "-1", nil, []string{`NATKEEP_TCP_MAX_CONNS="-1": must be 0 (unlimited) or positive`}},
		{"NATKEEP_TCP_MAX_CONNS", "lots", nil, []string{`NATKEEP_TCP_MAX_CONNS="lots"`, "not a valid whole number"}},
		{"NATKEEP_RESOLVE_INTERVAL", "0", nil, []string{"NATKEEP_RESOLVE_INTERVAL=0s: must be positive"}},
		{"NATKEEP_RESOLVE_INTERVAL", "-5s", nil, []string{"NATKEEP_RESOLVE_INTERVAL=-5s: must be positive"}},
		{"NATKEEP_RESOLVE_INTERVAL", "often", nil, []string{`NATKEEP_RESOLVE_INTERVAL="often"`, "not a valid duration"}},
		{"NATKEEP_ADMIN_ADDR", "9299", nil, []string{`NATKEEP_ADMIN_ADDR="9299"`, "has no port"}},
		{"NATKEEP_ADMIN_ADDR", "localhost:9299", nil, []string{`NATKEEP_ADMIN_ADDR="localhost:9299": host "localhost" is not an IP address (use :9299 for all addresses)`}},
		{"NATKEEP_ADMIN_ADDR", ":0", nil, []string{`NATKEEP_ADMIN_ADDR=":0"`, "port 0 out of range 1..65535"}},
		{"NATKEEP_ADMIN_ADDR", ":http", nil, []string{`NATKEEP_ADMIN_ADDR=":http"`, `port "http" is not a number`}},
		{"NATKEEP_ADMIN_ADDR", "::1:9299", nil, []string{`NATKEEP_ADMIN_ADDR="::1:9299"`, "IPv6 addresses need brackets"}},
		{"NATKEEP_ADMIN_ADDR", "OFF", nil, []string{`NATKEEP_ADMIN_ADDR="OFF"`, "has no port"}},
		{"NATKEEP_DRAIN_TIMEOUT", "-1s", nil, []string{"NATKEEP_DRAIN_TIMEOUT=-1s: must not be negative"}},
		{"NATKEEP_DRAIN_TIMEOUT", "later", nil, []string{`NATKEEP_DRAIN_TIMEOUT="later"`, "not a valid duration"}},
		{"NATKEEP_LOG_LEVEL", "trace", nil, []string{`NATKEEP_LOG_LEVEL="trace": want debug, info, warn or error`}},
		{"NATKEEP_LOG_FORMAT", "xml", nil, []string{`NATKEEP_LOG_FORMAT="xml": want auto, text or json`}},
		{"NATKEEP_LOG_FORMAT", "yaml", nil, []string{`NATKEEP_LOG_FORMAT="yaml": want auto, text or json`}},
	}
	for _, tt := range tests {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			kv := append([]string{tt.key, tt.value}, tt.extra...)
			msg := cfgWantErr(t, cfgEnv(cfgUDPRoute+","+cfgTCPRoute, kv...), tt.frags...)
			if !strings.HasPrefix(msg, tt.key+"=") {
				t.Errorf("error %q does not start with %s=", msg, tt.key)
			}
		})
	}
}

func TestConfigRoutesRequired(t *testing.T) {
	msg := cfgWantErr(t, map[string]string{"NATKEEP_LOG_LEVEL": "info"}, "NATKEEP_ROUTES is required", "udp://")
	if strings.Contains(msg, "%!") {
		t.Errorf("formatting artefact in %q", msg)
	}
	cfgWantErr(t, map[string]string{}, "NATKEEP_ROUTES is required (or NATKEEP_INTERCEPT")
	cfgWantErr(t, cfgEnv(""), "NATKEEP_ROUTES is required")
	cfgWantErr(t, cfgEnv("   "), "NATKEEP_ROUTES is required")
	cfgWantErr(t, cfgEnv(" , "), cfgRouteErrPrefix(1, ""), "empty route")
	// A bad value of another variable is reported as such.
	cfgWantErr(t, map[string]string{"NATKEEP_UDP_HEARTBEAT_TTL": "x"}, "NATKEEP_UDP_HEARTBEAT_TTL")
	// With interception configured, routes are optional.
	c, err := Load(map[string]string{"NATKEEP_INTERCEPT": "udp:5060,tcp:10.0.0.0/8:5432?keepalive_idle=30s"}, machine.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Relay.Routes) != 2 || !c.Relay.Routes[0].Transparent || c.Relay.Routes[0].Listen != ":15001" || c.Relay.Routes[1].Listen != ":15002" {
		t.Fatalf("transparent routes: %+v", c.Relay.Routes)
	}
	if got := c.Relay.Routes[0].Intercept[1].TCP.Keepalive.Idle; got != 30*time.Second {
		t.Fatalf("per-entry override lost: keepalive idle %v", got)
	}
	cfgWantErr(t, map[string]string{"NATKEEP_INTERCEPT": "tcp:5432", "NATKEEP_ROUTES": "tcp://:15001/x:1"}, "transparent tcp listener")
}

func TestConfigRouteParsing(t *testing.T) {
	tests := []struct {
		entry, listen, upstream string
		proto                   relay.Proto
	}{
		{"udp://127.0.0.1:5060/sip.example.net:5060", "127.0.0.1:5060", "sip.example.net:5060", relay.UDP},
		{"tcp://:5432/db.internal:5432", ":5432", "db.internal:5432", relay.TCP},
		{"udp://0.0.0.0:1/10.0.0.1:65535", "0.0.0.0:1", "10.0.0.1:65535", relay.UDP},
		{"udp://[::1]:5000/[2001:db8::1]:53", "[::1]:5000", "[2001:db8::1]:53", relay.UDP},
		{"tcp://[::]:5000/example.com:443", "[::]:5000", "example.com:443", relay.TCP},
		{"UDP://:5000/example.com:1", ":5000", "example.com:1", relay.UDP},
		{"Tcp://:5000/example.com:1", ":5000", "example.com:1", relay.TCP},
		{"udp://:65535/x:1?", ":65535", "x:1", relay.UDP},
	}
	for _, tt := range tests {
		t.Run(tt.entry, func(t *testing.T) {
			r := cfgOneRoute(t, cfgEnv("  "+tt.entry+"\t"))
			if r.Name != tt.entry || r.Proto != tt.proto || r.Listen != tt.listen || r.Upstream != tt.upstream {
				t.Errorf("got name=%q proto=%q listen=%q upstream=%q, want %q %q %q %q",
					r.Name, r.Proto, r.Listen, r.Upstream, tt.entry, tt.proto, tt.listen, tt.upstream)
			}
			switch r.Proto {
			case relay.UDP:
				if !reflect.DeepEqual(r.UDP, cfgUDPDefaults(t)) || !reflect.DeepEqual(r.TCP, relay.TCPOptions{}) {
					t.Errorf("options: udp %+v tcp %+v", r.UDP, r.TCP)
				}
			case relay.TCP:
				if !reflect.DeepEqual(r.TCP, cfgTCPDefaults()) || !reflect.DeepEqual(r.UDP, relay.UDPOptions{}) {
					t.Errorf("options: udp %+v tcp %+v", r.UDP, r.TCP)
				}
			}
		})
	}
}

func TestConfigRouteListAllowed(t *testing.T) {
	tests := []struct {
		name, routes string
		n            int
	}{
		{"udp and tcp on the same port", "udp://:5000/a:1,tcp://:5000/a:1", 2},
		{"same port on different hosts", "udp://127.0.0.1:5000/a:1,udp://127.0.0.2:5000/a:1", 2},
		{"same port on v4 and v6 loopback", "tcp://127.0.0.1:5000/a:1,tcp://[::1]:5000/a:1", 2},
		{"different ports", "udp://:5000/a:1,udp://:5001/a:1,tcp://:5000/a:1,tcp://:5001/a:1", 4},
		{"spaces around entries", " udp://:5000/a:1 , tcp://:5001/a:1 ", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfgLoad(t, cfgEnv(tt.routes))
			if len(c.Relay.Routes) != tt.n {
				t.Fatalf("got %d routes, want %d", len(c.Relay.Routes), tt.n)
			}
			for i, entry := range strings.Split(tt.routes, ",") {
				if got := c.Relay.Routes[i].Name; got != strings.TrimSpace(entry) {
					t.Errorf("route %d name %q, want %q", i+1, got, strings.TrimSpace(entry))
				}
			}
		})
	}
}

func TestConfigRouteErrors(t *testing.T) {
	const ok = "udp://:1/x:1"
	tests := []struct {
		name   string
		routes string
		n      int    // entry number in the message
		entry  string // entry text in the message
		frags  []string
	}{
		{"no scheme", "localhost:5000", 1, "localhost:5000", []string{"want PROTO://LISTEN/UPSTREAM"}},
		{"bad protocol", "sctp://:5000/x:1", 1, "sctp://:5000/x:1", []string{`protocol "sctp": want udp or tcp`}},
		{"empty protocol", "://:5000/x:1", 1, "://:5000/x:1", []string{`protocol "": want udp or tcp`}},
		{"missing upstream", "udp://:5000", 1, "udp://:5000", []string{"missing /UPSTREAM"}},
		{"empty upstream", "udp://:5000/", 1, "udp://:5000/", []string{"missing /UPSTREAM"}},
		{"empty upstream with query", "udp://:5000/?ttl=1", 1, "udp://:5000/?ttl=1", []string{"missing /UPSTREAM"}},
		{"listen port 0", "udp://:0/x:1", 1, "udp://:0/x:1", []string{"listen port 0 out of range 1..65535"}},
		{"listen port 99999", ok + ",udp://:99999/x:1", 2, "udp://:99999/x:1", []string{"listen port 99999 out of range 1..65535"}},
		{"listen port negative", "udp://:-1/x:1", 1, "udp://:-1/x:1", []string{"listen port -1 out of range"}},
		{"listen port not a number", "udp://:abc/x:1", 1, "udp://:abc/x:1", []string{`listen port "abc" is not a number`}},
		{"listen port empty", "udp://127.0.0.1:/x:1", 1, "udp://127.0.0.1:/x:1", []string{`listen port "" is not a number`}},
		{"listen without port", "udp://127.0.0.1/x:1", 1, "udp://127.0.0.1/x:1", []string{"listen", `"127.0.0.1" has no port`}},
		{"listen host dns name", "udp://localhost:5000/x:1", 1, "udp://localhost:5000/x:1", []string{`listen host "localhost" is not an IP address`, "use :5000 for all addresses"}},
		{"listen ipv6 without brackets", "udp://::1:5000/x:1", 1, "udp://::1:5000/x:1", []string{"listen", "IPv6 addresses need brackets, e.g. [::1]:5000"}},
		{"listen ipv6 missing bracket", "udp://[::1:5000/x:1", 1, "udp://[::1:5000/x:1", []string{"listen", "missing ] in IPv6 address"}},
		{"listen ipv6 zone", "udp://[fe80::1%25eth0]:5000/x:1", 1, "udp://[fe80::1%25eth0]:5000/x:1", []string{`listen host "fe80::1%25eth0": zones are not supported`}},
		{"listen ipv6 literal zone", "udp://[fe80::1%eth0]:5000/x:1", 1, "udp://[fe80::1%eth0]:5000/x:1", []string{`listen host "fe80::1%eth0": zones are not supported`}},
		{"upstream without port", "udp://:5000/example.com", 1, "udp://:5000/example.com", []string{`upstream "example.com" has no port`}},
		{"upstream without host", "udp://:5000/:53", 1, "udp://:5000/:53", []string{`upstream ":53" has no host`}},
		{"upstream port 0", "tcp://:5000/example.com:0", 1, "tcp://:5000/example.com:0", []string{"upstream port 0 out of range 1..65535"}},
		{"upstream port 70000", "tcp://:5000/example.com:70000", 1, "tcp://:5000/example.com:70000", []string{"upstream port 70000 out of range"}},
		{"upstream port name", "tcp://:5000/example.com:https", 1, "tcp://:5000/example.com:https", []string{`upstream port "https" is not a number`}},
		{"upstream ipv6 without brackets", "udp://:5000/2001:db8::1:53", 1, "udp://:5000/2001:db8::1:53", []string{"upstream", "IPv6 addresses need brackets"}},
		{"upstream host with slash", "udp://:5000/a/b:53", 1, "udp://:5000/a/b:53", []string{`upstream host "a/b" is not a name or IP address`}},
		{"upstream host with space", "udp://:5000/a b:53", 1, "udp://:5000/a b:53", []string{`upstream host "a b" is not a name or IP address`}},
		{"stray comma in the middle", ok + ",,tcp://:2/x:1", 2, "", []string{"empty route (stray comma?)"}},
		{"trailing comma", ok + ",", 2, "", []string{"empty route (stray comma?)"}},
		{"leading comma", "," + ok, 1, "", []string{"empty route (stray comma?)"}},
		{"blank entry", ok + ",  ,tcp://:2/x:1", 2, "", []string{"empty route (stray comma?)"}},
		{"duplicate listen", "udp://:5000/a:1,udp://:5000/b:1", 2, "udp://:5000/b:1", []string{"listen address udp://:5000 already used by entry 1"}},
		{"duplicate listen with host", "tcp://127.0.0.1:5000/a:1,tcp://127.0.0.1:5000/b:1", 2, "tcp://127.0.0.1:5000/b:1", []string{"listen address tcp://127.0.0.1:5000 already used by entry 1"}},
		{"duplicate listen later entry", ok + ",tcp://:7/a:1,udp://:8/a:1,tcp://:7/b:1", 4, "tcp://:7/b:1", []string{"already used by entry 2"}},
		{"specific after wildcard", "udp://:5000/a:1,udp://127.0.0.1:5000/b:1", 2, "udp://127.0.0.1:5000/b:1", []string{"listen address udp://127.0.0.1:5000 already used by entry 1"}},
		{"wildcard after specific", "udp://127.0.0.1:5000/a:1,udp://:5000/b:1", 2, "udp://:5000/b:1", []string{"already used by entry 1"}},
		{"0.0.0.0 vs specific", "tcp://0.0.0.0:5000/a:1,tcp://10.1.2.3:5000/b:1", 2, "tcp://10.1.2.3:5000/b:1", []string{"already used by entry 1"}},
		{"[::] vs ipv4", "tcp://[::]:5000/a:1,tcp://127.0.0.1:5000/b:1", 2, "tcp://127.0.0.1:5000/b:1", []string{"already used by entry 1"}},
		{"0.0.0.0 vs [::]", "udp://0.0.0.0:5000/a:1,udp://[::]:5000/b:1", 2, "udp://[::]:5000/b:1", []string{"already used by entry 1"}},
		{"same port spelled differently", "udp://:5000/a:1,udp://:05000/b:1", 2, "udp://:05000/b:1", []string{"already used by entry 1"}},
		{"ipv4-mapped ipv6 vs ipv4", "udp://127.0.0.1:5000/a:1,udp://[::ffff:127.0.0.1]:5000/b:1", 2, "udp://[::ffff:127.0.0.1]:5000/b:1", []string{"already used by entry 1"}},
		{"unknown key", "udp://:5000/x:1?foo=1", 1, "udp://:5000/x:1?foo=1", []string{`unknown key "foo"`, "known: answer_rate, conn_idle_timeout, connect_timeout, dead_after, idle_timeout, interval, interval_fallback, keepalive_count"}},
		{"key case matters", "udp://:5000/x:1?TTL=1", 1, "udp://:5000/x:1?TTL=1", []string{`unknown key "TTL"`}},
		{"bad query escape", "udp://:5000/x:1?payload=text:%zz", 1, "udp://:5000/x:1?payload=text:%zz", []string{`query "payload=text:%zz"`, "invalid URL escape"}},
		{"semicolon in query", "udp://:5000/x:1?ttl=1;ttl=2", 1, "udp://:5000/x:1?ttl=1;ttl=2", []string{"ttl=1;ttl=2: not a valid whole number"}},
		{"duplicate key", "udp://:5000/x:1?ttl=1&ttl=2", 1, "udp://:5000/x:1?ttl=1&ttl=2", []string{`key "ttl" given more than once`}},
		{"duplicate key same value", "tcp://:5000/x:1?max_conns=1&max_conns=1", 1, "tcp://:5000/x:1?max_conns=1&max_conns=1", []string{`key "max_conns" given more than once`}},
	}
	// Every UDP key on a TCP route and every TCP key on a UDP route.
	for key, qk := range queryKeys {
		var entry string
		other := relay.TCP
		if qk.proto == relay.TCP {
			other = relay.UDP
		}
		entry = fmt.Sprintf("%s://:5000/x:1?%s=1", other, key)
		tests = append(tests, struct {
			name   string
			routes string
			n      int
			entry  string
			frags  []string
		}{"wrong proto " + key, entry, 1, entry, []string{fmt.Sprintf("key %q applies to %s routes, not %s", key, qk.proto, other)}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := cfgWantErr(t, cfgEnv(tt.routes), tt.frags...)
			if p := cfgRouteErrPrefix(tt.n, tt.entry); !strings.HasPrefix(msg, p) {
				t.Errorf("error %q does not start with %q", msg, p)
			}
		})
	}
}

// TestConfigRouteErrorExample is the message quoted in the documentation.
func TestConfigRouteErrorExample(t *testing.T) {
	_, err := Load(cfgEnv("udp://:1/x:1,udp://:99999/x:1"), machine.Facts{})
	const want = `NATKEEP_ROUTES entry 2 "udp://:99999/x:1": listen port 99999 out of range 1..65535`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = Load(cfgEnv(cfgUDPRoute, "NATKEEP_UDP_HEARTBEAT_TTL", "300"), machine.Facts{})
	const want2 = `NATKEEP_UDP_HEARTBEAT_TTL="300": must be 0 (off), 1..255 or auto`
	if err == nil || err.Error() != want2 {
		t.Errorf("got %v, want %s", err, want2)
	}
}

func TestConfigRouteOverrides(t *testing.T) {
	udp := func(query string) string { return "udp://:5000/up.example:5000?" + query }
	tcp := func(query string) string { return "tcp://:5000/up.example:5000?" + query }
	tests := []struct {
		name  string
		entry string
		env   []string // globals, if any
		udp   func(t *testing.T, o *relay.UDPOptions)
		tcp   func(o *relay.TCPOptions)
	}{
		{"interval", udp("interval=5s"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.Interval = 5 * time.Second }, nil},
		{"interval 0 is off", udp("interval=0"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.Interval = 0 }, nil},
		{"interval 100ms", udp("interval=100ms"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.Interval = 100 * time.Millisecond }, nil},
		{"interval overrides global", udp("interval=7s"), []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "1m"}, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.Interval = 7 * time.Second }, nil},
		{"global interval applies", udp(""), []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "1m"}, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.Interval = time.Minute }, nil},
		{"payload nat-t", udp("payload=nat-t"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "nat-t") }, nil},
		{"payload crlf", udp("payload=crlf"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "crlf") }, nil},
		{"payload empty", udp("payload=empty"), []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf"}, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "empty") }, nil},
		{"payload hex", udp("payload=hex:00ff"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "hex:00ff") }, nil},
		{"payload text", udp("payload=text:hello"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "text:hello") }, nil},
		{"payload text percent-encoded comma", udp("payload=text:a%2Cb"), nil, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "text:a,b")
			if string(o.Payload.Bytes) != "a,b" {
				t.Fatalf("helper decoded %q", o.Payload.Bytes)
			}
		}, nil},
		{"payload text percent-encoded ampersand", udp("payload=text:a%26b%3Dc"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Payload = cfgPayload(t, "text:a&b=c") }, nil},
		{"payload stun sets reply stun", udp("payload=stun"), nil, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "stun")
			o.Heartbeat.Pong = cfgReply(t, "stun", o.Payload)
		}, nil},
		{"payload stun reply stun", udp("payload=stun&reply=stun"), nil, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "stun")
			o.Heartbeat.Pong = cfgReply(t, "stun", o.Payload)
		}, nil},
		{"reply text", udp("payload=text:ping&reply=text:pong"), nil, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "text:ping")
			o.Heartbeat.Pong = cfgReply(t, "text:pong", o.Payload)
		}, nil},
		{"reply hex on global payload", udp("reply=hex:0a0b"), []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf"}, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "crlf")
			o.Heartbeat.Pong = cfgReply(t, "hex:0a0b", o.Payload)
		}, nil},
		{"reply none overrides global reply", udp("reply=none"), []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf", "NATKEEP_UDP_HEARTBEAT_REPLY", "text:pong"}, func(t *testing.T, o *relay.UDPOptions) {
			o.Payload = cfgPayload(t, "crlf")
			o.Heartbeat.Pong = cfgReply(t, "none", o.Payload)
		}, nil},
		{"ttl", udp("ttl=2"), nil, func(t *testing.T, o *relay.UDPOptions) { o.TTL = 2 }, nil},
		{"ttl 255 with crlf", udp("ttl=255&payload=crlf"), nil, func(t *testing.T, o *relay.UDPOptions) { o.TTL = 255; o.Payload = cfgPayload(t, "crlf") }, nil},
		{"ttl 0 with stun", udp("ttl=0&payload=stun"), []string{"NATKEEP_UDP_HEARTBEAT_TTL", "4"}, func(t *testing.T, o *relay.UDPOptions) {
			o.TTL = 0
			o.Payload = cfgPayload(t, "stun")
			o.Heartbeat.Pong = cfgReply(t, "", o.Payload)
		}, nil},
		{"dead_after", udp("dead_after=7"), nil, func(t *testing.T, o *relay.UDPOptions) { o.Heartbeat.DeadAfter = 7 }, nil},
		{"idle_timeout", udp("idle_timeout=30s"), nil, func(t *testing.T, o *relay.UDPOptions) { o.FlowIdleTimeout = 30 * time.Second }, nil},
		{"max_flows", udp("max_flows=1"), nil, func(t *testing.T, o *relay.UDPOptions) { o.MaxFlows = 1 }, nil},
		{"role client", udp("role=client"), nil, func(t *testing.T, o *relay.UDPOptions) {}, nil},
		{"role responder disables heartbeats", udp("role=responder&payload=stun&interval=5s"), nil, func(t *testing.T, o *relay.UDPOptions) {
			o.Role = relay.RoleResponder
			o.Heartbeat.Interval = 0
			o.Payload = cfgPayload(t, "stun")
			o.Heartbeat.Pong = cfgReply(t, "", o.Payload)
		}, nil},
		{"keepalive_idle", tcp("keepalive_idle=30s"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive.Idle = 30 * time.Second
			o.UserTimeout = 90 * time.Second
		}},
		{"keepalive_idle 0 turns keepalive off", tcp("keepalive_idle=0"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive = sockopt.Keepalive{}
			o.UserTimeout = 0
		}},
		{"keepalive_idle 0 ignores bad interval", tcp("keepalive_idle=0&keepalive_interval=0"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive = sockopt.Keepalive{}
			o.UserTimeout = 0
		}},
		{"keepalive_idle 0 with user_timeout", tcp("keepalive_idle=0&user_timeout=20s"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive = sockopt.Keepalive{}
			o.UserTimeout = 20 * time.Second
		}},
		{"keepalive_interval", tcp("keepalive_interval=1s"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive.Interval = time.Second
			o.UserTimeout = 66 * time.Second
		}},
		{"keepalive_count", tcp("keepalive_count=1"), nil, nil, func(o *relay.TCPOptions) {
			o.Keepalive.Count = 1
			o.UserTimeout = 70 * time.Second
		}},
		{"user_timeout", tcp("user_timeout=5m"), nil, nil, func(o *relay.TCPOptions) { o.UserTimeout = 5 * time.Minute }},
		{"user_timeout 1ms", tcp("user_timeout=1ms"), nil, nil, func(o *relay.TCPOptions) { o.UserTimeout = time.Millisecond }},
		{"user_timeout 0 is off", tcp("user_timeout=0"), nil, nil, func(o *relay.TCPOptions) { o.UserTimeout = 0 }},
		{"user_timeout 0 overrides global", tcp("user_timeout=0"), []string{"NATKEEP_TCP_USER_TIMEOUT", "1m"}, nil, func(o *relay.TCPOptions) { o.UserTimeout = 0 }},
		{"connect_timeout", tcp("connect_timeout=2s"), nil, nil, func(o *relay.TCPOptions) { o.ConnectTimeout = 2 * time.Second }},
		{"max_conns", tcp("max_conns=50"), nil, nil, func(o *relay.TCPOptions) { o.MaxConns = 50 }},
		{"max_conns 0 unlimited", tcp("max_conns=0"), []string{"NATKEEP_TCP_MAX_CONNS", "9"}, nil, func(o *relay.TCPOptions) { o.MaxConns = 0 }},
		{"all tcp keys", tcp("keepalive_idle=20s&keepalive_interval=5s&keepalive_count=4&user_timeout=45s&connect_timeout=1s&max_conns=3"), nil, nil, func(o *relay.TCPOptions) {
			*o = relay.TCPOptions{Keepalive: sockopt.Keepalive{Idle: 20 * time.Second, Interval: 5 * time.Second, Count: 4},
				UserTimeout: 45 * time.Second, ConnectTimeout: time.Second, MaxConns: 3}
		}},
		{"all udp keys", udp("interval=3s&payload=text:hi&ttl=0&reply=text:ho&dead_after=2&idle_timeout=1h&max_flows=9&role=client&ttl_heal=1m&on_dead=rebind&stun_strict=true"), nil, func(t *testing.T, o *relay.UDPOptions) {
			p := cfgPayload(t, "text:hi")
			*o = relay.UDPOptions{Role: relay.RoleClient, Heartbeat: keepalive.Schedule{Interval: 3 * time.Second, DeadAfter: 2, Pong: cfgReply(t, "text:ho", p), Rebind: true, Heal: time.Minute}, STUNStrict: true,
				UnansweredTimeout: 30 * time.Second, AnswerRate: 20,
				Payload: p, FlowIdleTimeout: time.Hour, MaxFlows: 9}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cfgOneRoute(t, cfgEnv(tt.entry, tt.env...))
			// Start from the defaults with the globals applied: load the
			// same globals with a plain route of the same protocol.
			plain := "udp://:5000/up.example:5000"
			if tt.tcp != nil {
				plain = "tcp://:5000/up.example:5000"
			}
			base := cfgOneRoute(t, cfgEnv(plain, tt.env...))
			if tt.udp != nil {
				want := base.UDP
				tt.udp(t, &want)
				if !reflect.DeepEqual(r.UDP, want) {
					t.Errorf("UDP options:\n got %+v\nwant %+v", r.UDP, want)
				}
			}
			if tt.tcp != nil {
				want := base.TCP
				tt.tcp(&want)
				if !reflect.DeepEqual(r.TCP, want) {
					t.Errorf("TCP options:\n got %+v\nwant %+v", r.TCP, want)
				}
			}
			if r.Name != tt.entry {
				t.Errorf("Name = %q, want %q", r.Name, tt.entry)
			}
		})
	}
}

// TestConfigPercentEncodedPayload is the example in the help text.
func TestConfigPercentEncodedPayload(t *testing.T) {
	r := cfgOneRoute(t, cfgEnv("udp://:5000/x:1?payload=text:a%2Cb"))
	if r.UDP.Payload.Kind != keepalive.PayloadBytes || string(r.UDP.Payload.Bytes) != "a,b" {
		t.Errorf("payload %+v, want bytes \"a,b\"", r.UDP.Payload)
	}
	// An unencoded comma splits the list instead.
	cfgWantErr(t, cfgEnv("udp://:5000/x:1?payload=text:a,b"), cfgRouteErrPrefix(2, "b"), "want PROTO://LISTEN/UPSTREAM")
}

func TestConfigRouteOverrideErrors(t *testing.T) {
	tests := []struct {
		entry string
		env   []string
		frags []string
	}{
		{"udp://:1/x:1?interval=50ms", nil, []string{"interval=50ms: must be 0 (off) or at least 100ms"}},
		{"udp://:1/x:1?interval=99ms", nil, []string{"interval=99ms", "at least 100ms"}},
		{"udp://:1/x:1?interval=-1s", nil, []string{"interval=-1s", "must be 0 (off)"}},
		{"udp://:1/x:1?interval=abc", nil, []string{"interval=abc: not a valid duration"}},
		{"udp://:1/x:1?interval=", nil, []string{"interval=: not a valid duration"}},
		{"udp://:1/x:1?payload=hex:zz", nil, []string{"payload=hex:zz", "bad hex"}},
		{"udp://:1/x:1?payload=hex:", nil, []string{"payload=hex:", "hex: needs at least one byte"}},
		{"udp://:1/x:1?payload=hex:abc", nil, []string{"payload=hex:abc", "bad hex", "odd length"}},
		{"udp://:1/x:1?payload=text:", nil, []string{"payload=text:", "text: needs at least one character"}},
		{"udp://:1/x:1?payload=ping", nil, []string{"payload=ping", "unknown kind", "want empty, nat-t, crlf, stun, hex:<bytes> or text:<string>"}},
		{"udp://:1/x:1?payload=STUN", nil, []string{"payload=STUN", "unknown kind"}},
		{"udp://:1/x:1?payload=hex:" + strings.Repeat("ab", keepalive.MaxPayload+1), nil, []string{"1201 bytes is over the 1200-byte limit"}},
		{"udp://:1/x:1?reply=stun", nil, []string{"reply=stun", "reply stun needs payload stun (got payload empty)"}},
		{"udp://:1/x:1?payload=crlf&reply=stun", nil, []string{"reply=stun", "reply stun needs payload stun (got payload crlf)"}},
		{"udp://:1/x:1?payload=stun&reply=none", nil, []string{"reply=none", "STUN responses are always matched"}},
		{"udp://:1/x:1?payload=stun&reply=text:x", nil, []string{"reply=text:x", "matched by transaction ID"}},
		{"udp://:1/x:1?reply=bogus", nil, []string{"reply=bogus", "unknown kind", "want none, stun, hex:<bytes> or text:<string>"}},
		{"udp://:1/x:1?reply=hex:", nil, []string{"reply=hex:", "needs at least one byte"}},
		{"udp://:1/x:1?payload=stun", []string{"NATKEEP_UDP_HEARTBEAT_REPLY", "text:pong", "NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf"}, []string{"reply=text:pong", "matched by transaction ID"}},
		{"udp://:1/x:1?ttl=256", nil, []string{"ttl=256: must be 0 (off), 1..255 or auto"}},
		{"udp://:1/x:1?on_dead=restart", nil, []string{"on_dead=restart: want keep or rebind"}},
		{"udp://:1/x:1?on_dead=", nil, []string{"on_dead=: want keep or rebind"}},
		{"udp://:1/x:1?ttl=2&ttl_heal=-1s", nil, []string{"ttl_heal=-1s: must be 0 (never) or at least 100ms"}},
		{"udp://:1/x:1?ttl=2&ttl_heal=10ms", nil, []string{"ttl_heal=10ms: must be 0 (never) or at least 100ms"}},
		{"udp://:1/x:1?ttl_heal=soon", nil, []string{"ttl_heal=soon: not a valid duration"}},
		{"udp://:1/x:1?role=responder&stun_strict=yes please", nil, []string{"stun_strict=yes please: want true or false"}},
		{"udp://:1/x:1?ttl=-1", nil, []string{"ttl=-1: must be 0 (off), 1..255 or auto"}},
		{"udp://:1/x:1?ttl=one", nil, []string{"ttl=one: not a valid whole number"}},
		{"udp://:1/x:1?ttl=2&payload=stun", nil, []string{"ttl=2", "a TTL-limited heartbeat never reaches the server", "reply stun"}},
		{"udp://:1/x:1?ttl=2&payload=crlf&reply=text:pong", nil, []string{"ttl=2", "reply text:pong can never arrive"}},
		{"udp://:1/x:1?ttl=2", []string{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "crlf", "NATKEEP_UDP_HEARTBEAT_REPLY", "hex:0d0a"}, []string{"ttl=2", "reply hex:0d0a can never arrive"}},
		{"udp://:1/x:1?dead_after=0", nil, []string{"dead_after=0: must be at least 1"}},
		{"udp://:1/x:1?dead_after=-3", nil, []string{"dead_after=-3: must be at least 1"}},
		{"udp://:1/x:1?dead_after=x", nil, []string{"dead_after=x: not a valid whole number"}},
		{"udp://:1/x:1?idle_timeout=0", nil, []string{"idle_timeout=0s: must be positive"}},
		{"udp://:1/x:1?idle_timeout=-1m", nil, []string{"idle_timeout=-1m0s: must be positive"}},
		{"udp://:1/x:1?idle_timeout=10", nil, []string{"idle_timeout=10: not a valid duration"}},
		{"udp://:1/x:1?max_flows=0", nil, []string{"max_flows=0: must be at least 1"}},
		{"udp://:1/x:1?max_flows=1e3", nil, []string{"max_flows=1e3: not a valid whole number"}},
		{"udp://:1/x:1?role=server", nil, []string{"role=server: want client or responder"}},
		{"udp://:1/x:1?role=", nil, []string{"role=: want client or responder"}},
		{"udp://:1/x:1?role=Responder", nil, []string{"role=Responder: want client or responder"}},
		{"tcp://:1/x:1?keepalive_idle=40000s", nil, []string{"keepalive_idle=11h6m40s", "keepalive idle 40000s out of range 1s..32767s"}},
		{"tcp://:1/x:1?keepalive_idle=1.5s", nil, []string{"keepalive_idle=1.5s", "keepalive idle 1.5s is not a whole number of seconds"}},
		{"tcp://:1/x:1?keepalive_idle=-1s", nil, []string{"keepalive_idle=-1s", "must not be negative"}},
		{"tcp://:1/x:1?keepalive_idle=x", nil, []string{"keepalive_idle=x: not a valid duration"}},
		{"tcp://:1/x:1?keepalive_interval=0", nil, []string{"keepalive_interval=0s", "keepalive interval 0s out of range 1s..32767s"}},
		{"tcp://:1/x:1?keepalive_interval=40000s", nil, []string{"keepalive_interval=11h6m40s", "keepalive interval 40000s out of range"}},
		{"tcp://:1/x:1?keepalive_interval=1500ms", nil, []string{"keepalive_interval=1.5s", "not a whole number of seconds"}},
		{"tcp://:1/x:1?keepalive_interval=x", nil, []string{"keepalive_interval=x: not a valid duration"}},
		{"tcp://:1/x:1?keepalive_count=0", nil, []string{"keepalive_count=0", "keepalive count 0 out of range 1..127"}},
		{"tcp://:1/x:1?keepalive_count=128", nil, []string{"keepalive_count=128", "keepalive count 128 out of range 1..127"}},
		{"tcp://:1/x:1?keepalive_count=x", nil, []string{"keepalive_count=x: not a valid whole number"}},
		{"tcp://:1/x:1?user_timeout=abc", nil, []string{"user_timeout=abc", "not a valid duration (e.g. 2m, 0 = off)"}},
		{"tcp://:1/x:1?user_timeout=1.5ms", nil, []string{"user_timeout=1.5ms", "not a whole number of milliseconds"}},
		{"tcp://:1/x:1?user_timeout=500us", nil, []string{"user_timeout=500us", "out of range 1ms.."}},
		{"tcp://:1/x:1?user_timeout=-1s", nil, []string{"user_timeout=-1s", "out of range"}},
		{"tcp://:1/x:1?user_timeout=1000h", nil, []string{"user_timeout=1000h", "out of range"}},
		{"tcp://:1/x:1?connect_timeout=0", nil, []string{"connect_timeout=0s: must be positive"}},
		{"tcp://:1/x:1?connect_timeout=x", nil, []string{"connect_timeout=x: not a valid duration"}},
		{"tcp://:1/x:1?max_conns=-1", nil, []string{"max_conns=-1: must be 0 (unlimited) or positive"}},
		{"tcp://:1/x:1?max_conns=x", nil, []string{"max_conns=x: not a valid whole number"}},
	}
	for _, tt := range tests {
		name := tt.entry
		if len(name) > 80 {
			name = name[:80]
		}
		t.Run(name, func(t *testing.T) {
			routes := "tcp://:9/x:1," + tt.entry
			msg := cfgWantErr(t, cfgEnv(routes, tt.env...), tt.frags...)
			if p := cfgRouteErrPrefix(2, tt.entry); !strings.HasPrefix(msg, p) {
				t.Errorf("error %q does not start with %q", msg, p)
			}
		})
	}
}

// TestConfigQueryKeysNameVariables checks that every per-route key that
// overrides a variable names a real envConfig field and is listed in help.
func TestConfigQueryKeysNameVariables(t *testing.T) {
	typ := reflect.TypeFor[envConfig]()
	for key, qk := range queryKeys {
		if qk.proto != relay.UDP && qk.proto != relay.TCP {
			t.Errorf("key %q has proto %q", key, qk.proto)
		}
		if qk.field == "" {
			if key != "role" {
				t.Errorf("key %q overrides no variable", key)
			}
			continue
		}
		f, ok := typ.FieldByName(qk.field)
		if !ok {
			t.Errorf("key %q names field %q, which envConfig lacks", key, qk.field)
			continue
		}
		prefix := "UDP_"
		if qk.proto == relay.TCP {
			prefix = "TCP_"
		}
		if !strings.HasPrefix(f.Tag.Get("env"), prefix) {
			t.Errorf("key %q (%s) overrides %s, which is not a %s variable", key, qk.proto, envKey(qk.field), prefix)
		}
	}
}

// TestConfigErrorsDeterministic: the same bad input always gives the same
// message (no map-order dependence), naming the first problem as written.
func TestConfigErrorsDeterministic(t *testing.T) {
	cases := []struct {
		routes string
		want   string
	}{
		{"udp://127.0.0.1:5/x:1,udp://127.0.0.2:5/x:1,udp://:5/x:1", `entry 3 "udp://:5/x:1": listen address udp://:5 already used by entry 1`},
		{"udp://:5000/x:1?foo=1&bar=2", `unknown key "foo"`},
		{"tcp://:5000/x:1?keepalive_idle=40000s&keepalive_interval=0", `keepalive_idle=11h6m40s: keepalive idle 40000s out of range`},
	}
	for _, c := range cases {
		for range 50 {
			_, err := Load(map[string]string{"NATKEEP_ROUTES": c.routes}, machine.Facts{})
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%s: error %v, want one line containing %q", c.routes, err, c.want)
			}
		}
	}
}

// TestConfigPlusStaysPlus: '+' in a route value is a literal plus, not a space.
func TestConfigPlusStaysPlus(t *testing.T) {
	c, err := Load(map[string]string{"NATKEEP_ROUTES": "udp://:5000/x:1?payload=text:a+b%2Cc"}, machine.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c.Relay.Routes[0].UDP.Payload.Bytes); got != "a+b,c" {
		t.Fatalf("payload %q, want %q", got, "a+b,c")
	}
}

// TestConfigPathLearning: interval=auto and ttl=auto, from the variables and
// from route keys, with what they need and what they refuse.
func TestConfigPathLearning(t *testing.T) {
	r := cfgOneRoute(t, cfgEnv("udp://:5000/x:1?interval=auto&payload=stun&ttl=auto&relearn=10m&interval_fallback=5s"))
	p := r.UDP.Path
	if !p.AutoInterval || !p.AutoTTL || p.Fallback != 5*time.Second || p.Relearn != 10*time.Minute {
		t.Fatalf("path options %+v", p)
	}
	if r.UDP.Heartbeat.Interval != 5*time.Second || r.UDP.TTL != 0 {
		t.Fatalf("interval %v ttl %d before learning, want the 5s fallback and the normal TTL", r.UDP.Heartbeat.Interval, r.UDP.TTL)
	}
	g := cfgOneRoute(t, cfgEnv("udp://:5000/x:1", "NATKEEP_UDP_HEARTBEAT_INTERVAL", "auto"))
	if !g.UDP.Path.AutoInterval || g.UDP.Path.AutoTTL || g.UDP.Path.Fallback != 15*time.Second || g.UDP.Path.Relearn != time.Hour {
		t.Fatalf("defaults with NATKEEP_UDP_HEARTBEAT_INTERVAL=auto: %+v", g.UDP.Path)
	}
	// A route can turn it off again.
	if o := cfgOneRoute(t, cfgEnv("udp://:5000/x:1?interval=5s", "NATKEEP_UDP_HEARTBEAT_INTERVAL", "auto")); o.UDP.Path.AutoInterval || o.UDP.Heartbeat.Interval != 5*time.Second {
		t.Fatalf("interval=5s over a global auto: %+v %v", o.UDP.Path, o.UDP.Heartbeat.Interval)
	}
	// A responder sends no heartbeats: nothing to learn.
	if o := cfgOneRoute(t, cfgEnv("udp://:5000/x:1?role=responder&interval=auto")); o.UDP.Path.AutoInterval {
		t.Fatal("a responder route learns a path")
	}
	for _, c := range []struct {
		routes string
		kv     []string
		frags  []string
	}{
		{"udp://:5000/x:1?ttl=auto&payload=stun", nil, []string{"ttl=auto", "needs interval=auto"}},
		{"udp://:5000/x:1?ttl=auto&interval=auto", nil, []string{"ttl=auto", "needs payload=stun"}},
		{"udp://:5000/x:1?interval=auto&interval_fallback=500ms", nil, []string{"interval_fallback=500ms", "at least 1s"}},
		{"udp://:5000/x:1?interval=auto&relearn=10s", nil, []string{"relearn=10s", "at least 1m0s"}},
		{"udp://:5000/x:1?interval=soon", nil, []string{"interval=soon", "or auto"}},
		{"udp://:5000/x:1?ttl=many", nil, []string{"ttl=many", "(or auto)"}},
		{"udp://:5000/x:1", []string{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "often"}, []string{`NATKEEP_UDP_HEARTBEAT_INTERVAL="often"`, "or auto"}},
		{"", []string{"NATKEEP_INTERCEPT", "udp:53?interval=auto"}, []string{"interval=auto", "transparent mode"}},
		{"", []string{"NATKEEP_INTERCEPT", "udp:53", "NATKEEP_UDP_HEARTBEAT_INTERVAL", "auto"}, []string{"interval=auto", "transparent mode"}},
	} {
		cfgWantErr(t, cfgEnv(c.routes, c.kv...), c.frags...)
	}
	// A fixed TTL still refuses a reply matcher; ttl=auto (above) does not.
	cfgWantErr(t, cfgEnv("udp://:5000/x:1?ttl=2&payload=stun"), "ttl=2", "never reaches the server")
}

// TestConfigWorkers: NATKEEP_WORKERS is auto (the host's CPUs, at least one)
// or 1..256.
func TestConfigWorkers(t *testing.T) {
	for _, c := range []struct {
		v    string
		cpus int
		want int
	}{{"", 2, 2}, {"auto", 8, 8}, {"auto", 0, 1}, {"1", 8, 1}, {"4", 1, 4}} {
		env := cfgEnv(cfgUDPRoute)
		if c.v != "" {
			env["NATKEEP_WORKERS"] = c.v
		}
		cfg, err := Load(env, machine.Facts{CPUs: c.cpus})
		if err != nil {
			t.Fatalf("NATKEEP_WORKERS=%q: %v", c.v, err)
		}
		if cfg.Relay.Workers != c.want {
			t.Errorf("NATKEEP_WORKERS=%q with %d CPUs: %d workers, want %d", c.v, c.cpus, cfg.Relay.Workers, c.want)
		}
	}
	for _, v := range []string{"0", "257", "many", "-1"} {
		cfgWantErr(t, cfgEnv(cfgUDPRoute, "NATKEEP_WORKERS", v), `NATKEEP_WORKERS="`+v+`": want auto or 1..256`)
	}
}
