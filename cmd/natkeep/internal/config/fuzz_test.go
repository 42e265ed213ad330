package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/relay"
	"github.com/natkeep/natkeep/sockopt"
)

// fuzzCheckConfig checks what Load promises for any input: an error
// is an *Error naming a NATKEEP_ variable, and a config it accepts
// satisfies every validation rule.
func fuzzCheckConfig(t *testing.T, env map[string]string) {
	c, err := Load(env, machine.Facts{})
	if err != nil {
		if c != nil {
			t.Errorf("config %+v returned along with error %v", c, err)
		}
		var ce *Error
		if !errors.As(err, &ce) {
			t.Fatalf("error %q is %T, want *Error", err, err)
		}
		if !strings.HasPrefix(err.Error(), envPrefix) {
			t.Fatalf("error %q does not start with %s", err, envPrefix)
		}
		return
	}
	if c == nil {
		t.Fatal("nil config and nil error")
	}
	if len(c.Relay.Routes) == 0 {
		t.Fatal("accepted a configuration without routes")
	}
	if c.Relay.ResolveInterval <= 0 || c.DrainTimeout < 0 {
		t.Errorf("resolve %v drain %v", c.Relay.ResolveInterval, c.DrainTimeout)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		t.Errorf("log level %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		t.Errorf("log format %q", c.LogFormat)
	}
	if c.AdminAddr != "" {
		if _, err := parseListen(c.AdminAddr); err != nil {
			t.Errorf("admin addr %q: %v", c.AdminAddr, err)
		}
	}
	if n := len(strings.Split(env["NATKEEP_ROUTES"], ",")); n != len(c.Relay.Routes) {
		t.Errorf("%d entries became %d routes", n, len(c.Relay.Routes))
	}
	for i, r := range c.Relay.Routes {
		if r.Name == "" || r.Name != strings.TrimSpace(r.Name) {
			t.Errorf("route %d name %q", i+1, r.Name)
		}
		if _, err := parseListen(r.Listen); err != nil {
			t.Errorf("route %d listen %q: %v", i+1, r.Listen, err)
		}
		host, _, err := splitHostPort(r.Upstream)
		if err != nil || host == "" {
			t.Errorf("route %d upstream %q: host %q, %v", i+1, r.Upstream, host, err)
		}
		for j, o := range c.Relay.Routes[:i] {
			if o.Proto == r.Proto && conflicts(string(r.Proto)+" "+r.Listen, string(o.Proto)+" "+o.Listen) {
				t.Errorf("routes %d and %d both listen on %s %s / %s", j+1, i+1, r.Proto, o.Listen, r.Listen)
			}
		}
		switch r.Proto {
		case relay.UDP:
			fuzzCheckUDP(t, i+1, r.UDP)
			if !reflect.DeepEqual(r.TCP, relay.TCPOptions{}) {
				t.Errorf("route %d: udp route with TCP options %+v", i+1, r.TCP)
			}
		case relay.TCP:
			fuzzCheckTCP(t, i+1, r.TCP)
			if !reflect.DeepEqual(r.UDP, relay.UDPOptions{}) {
				t.Errorf("route %d: tcp route with UDP options %+v", i+1, r.UDP)
			}
		default:
			t.Errorf("route %d proto %q", i+1, r.Proto)
		}
	}
}

func fuzzCheckUDP(t *testing.T, n int, o relay.UDPOptions) {
	h := o.Heartbeat
	if h.Interval < 0 || (h.Interval > 0 && h.Interval < minHeartbeatInterval) {
		t.Errorf("route %d interval %v", n, h.Interval)
	}
	if o.Role != relay.RoleClient && o.Role != relay.RoleResponder {
		t.Errorf("route %d role %q", n, o.Role)
	}
	if o.Role == relay.RoleResponder && h.Interval != 0 {
		t.Errorf("route %d: responder sends heartbeats every %v", n, h.Interval)
	}
	if h.DeadAfter < 1 || o.MaxFlows < 1 || o.FlowIdleTimeout <= 0 {
		t.Errorf("route %d dead_after %d max_flows %d idle %v", n, h.DeadAfter, o.MaxFlows, o.FlowIdleTimeout)
	}
	if o.TTL < 0 || o.TTL > 255 || (o.TTL > 0 && h.Pong.Enabled()) {
		t.Errorf("route %d ttl %d reply %s", n, o.TTL, h.Pong)
	}
	if (o.Payload.Kind == keepalive.PayloadSTUN) != (h.Pong.Kind == keepalive.ReplySTUN) {
		t.Errorf("route %d payload %s with reply %s", n, o.Payload, h.Pong)
	}
	if len(o.Payload.Bytes) > keepalive.MaxPayload || len(h.Pong.Bytes) > keepalive.MaxPayload {
		t.Errorf("route %d payload %d bytes, reply %d bytes", n, len(o.Payload.Bytes), len(h.Pong.Bytes))
	}
	// What the config shows must parse back to the same thing.
	p, err := keepalive.ParsePayload(o.Payload.String())
	if err != nil || !reflect.DeepEqual(p, o.Payload) {
		t.Errorf("route %d payload %s does not round-trip: %+v, %v", n, o.Payload, p, err)
	}
	r, err := keepalive.ParseReply(h.Pong.String(), o.Payload)
	if err != nil || r.Kind != h.Pong.Kind || string(r.Bytes) != string(h.Pong.Bytes) {
		t.Errorf("route %d reply %s does not round-trip: %+v, %v", n, h.Pong, r, err)
	}
}

func fuzzCheckTCP(t *testing.T, n int, o relay.TCPOptions) {
	if o.Keepalive != (sockopt.Keepalive{}) {
		if err := o.Keepalive.Validate(); err != nil {
			t.Errorf("route %d keepalive %+v: %v", n, o.Keepalive, err)
		}
	}
	if err := sockopt.ValidateUserTimeout(o.UserTimeout); err != nil {
		t.Errorf("route %d user timeout %v: %v", n, o.UserTimeout, err)
	}
	if o.ConnectTimeout <= 0 || o.MaxConns < 0 {
		t.Errorf("route %d connect %v max_conns %d", n, o.ConnectTimeout, o.MaxConns)
	}
}

// FuzzLoadConfig feeds arbitrary NATKEEP_ROUTES lists to Load.
func FuzzLoadConfig(f *testing.F) {
	for _, s := range []string{
		"udp://127.0.0.1:5060/sip.example.net:5060",
		"tcp://:5432/db.internal:5432?keepalive_idle=30s",
		"udp://:5000/x:1,tcp://:5000/x:1",
		"udp://[::1]:5000/[2001:db8::1]:53?payload=stun&dead_after=2",
		"udp://:5000/x:1?payload=text:a%2Cb&reply=text:pong&interval=5s",
		"udp://:5000/x:1?role=responder&payload=stun",
		"udp://:99999/x:1",
		"udp://:1/x:1,,tcp://:2/x:1",
		"udp://:5000/a:1,udp://127.0.0.1:5000/b:1",
		"tcp://:1/x:1?interval=5s",
		"udp://:1/x:1?ttl=2&payload=stun",
		"tcp://:1/x:1?keepalive_idle=40000s&keepalive_interval=0",
		"sctp://:1/x:1",
		"",
		",",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, routes string) {
		fuzzCheckConfig(t, map[string]string{"NATKEEP_ROUTES": routes})
	})
}

// fuzzGlobalKeys are the variables FuzzLoadConfigGlobal mutates, in
// envConfig order.
func fuzzGlobalKeys() []string {
	typ := reflect.TypeFor[envConfig]()
	keys := make([]string, 0, typ.NumField())
	for i := range typ.NumField() {
		keys = append(keys, envKey(typ.Field(i).Name))
	}
	return keys
}

// FuzzLoadConfigGlobal sets one variable, chosen by index, to an arbitrary
// value on top of a valid UDP+TCP route list.
func FuzzLoadConfigGlobal(f *testing.F) {
	keys := fuzzGlobalKeys()
	index := func(key string) uint8 {
		for i, k := range keys {
			if k == key {
				return uint8(i)
			}
		}
		f.Fatalf("no variable %s", key)
		return 0
	}
	for _, s := range []struct{ key, value string }{
		{"NATKEEP_UDP_HEARTBEAT_INTERVAL", "50ms"},
		{"NATKEEP_UDP_HEARTBEAT_PAYLOAD", "hex:0d0a"},
		{"NATKEEP_UDP_HEARTBEAT_TTL", "300"},
		{"NATKEEP_UDP_HEARTBEAT_REPLY", "stun"},
		{"NATKEEP_UDP_DEAD_AFTER", "0"},
		{"NATKEEP_TCP_KEEPALIVE_IDLE", "1.5s"},
		{"NATKEEP_TCP_USER_TIMEOUT", "0"},
		{"NATKEEP_ADMIN_ADDR", "[::1]:9000"},
		{"NATKEEP_DRAIN_TIMEOUT", "-1s"},
		{"NATKEEP_LOG_LEVEL", "WARN"},
		{"NATKEEP_ROUTES", "udp://:1/x:1"},
	} {
		f.Add(index(s.key), s.value)
	}
	f.Fuzz(func(t *testing.T, i uint8, value string) {
		env := map[string]string{"NATKEEP_ROUTES": "udp://127.0.0.1:5060/sip.example.net:5060,tcp://:5432/db.internal:5432"}
		env[keys[int(i)%len(keys)]] = value
		fuzzCheckConfig(t, env)
	})
}

// TestConfigFuzzKeys keeps the fuzz seed indexes meaningful.
func TestConfigFuzzKeys(t *testing.T) {
	keys := fuzzGlobalKeys()
	if len(keys) < 19 || keys[0] != "NATKEEP_ROUTES" {
		t.Errorf("keys %v", keys)
	}
}
