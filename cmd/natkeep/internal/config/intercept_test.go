package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natkeep/natkeep/relay"
)

// Test helpers here are prefixed icpt* so they cannot collide with helpers
// in the other test files of this package.

func icptLoad(t *testing.T, kv ...string) (*Intercept, error) {
	t.Helper()
	env := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return LoadIntercept(env)
}

func icptRule(proto, prefix string, lo, hi uint16) relay.InterceptRule {
	r := relay.InterceptRule{Proto: relay.Proto(proto), PortLo: lo, PortHi: hi}
	if prefix != "" {
		r.Prefix = netip.MustParsePrefix(prefix)
	}
	return r
}

// icptMatch is the entry (1-based) of the first rule that intercepts proto
// traffic to dst, 0 for none: the rule the relay picks for a flow.
func icptMatch(c *Intercept, proto string, dst netip.AddrPort) int {
	for i, r := range c.Rules {
		if r.Proto == relay.Proto(proto) && r.Matches(dst) {
			return i + 1
		}
	}
	return 0
}

func TestInterceptConfigDefaults(t *testing.T) {
	c, err := icptLoad(t)
	if err != nil {
		t.Fatal(err)
	}
	want := &Intercept{TCPPort: 15001, UDPPort: 15002, Mark: 0x4e4b, BypassMark: 0x4e4c, UID: 65532, MatchUID: true, Table: 100}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
	if c.Enabled() || c.HasProto(relay.UDP) || c.HasProto(relay.TCP) {
		t.Error("interception on without NATKEEP_INTERCEPT")
	}
	// Blank is off too, not an error.
	if c, err := icptLoad(t, "NATKEEP_INTERCEPT", "  "); err != nil || c.Enabled() {
		t.Errorf("blank NATKEEP_INTERCEPT: %+v, %v", c, err)
	}
	// The defaults the help tags show are the ones in force.
	typ := reflect.TypeFor[interceptEnv]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if f.Tag.Get("help") == "" || !strings.HasPrefix(f.Tag.Get("env"), "INTERCEPT") {
			t.Errorf("field %s: env tag %q, help %q", f.Name, f.Tag.Get("env"), f.Tag.Get("help"))
		}
	}
}

func TestInterceptConfigRules(t *testing.T) {
	c, err := icptLoad(t, "NATKEEP_INTERCEPT", "udp:5060, udp:10.0.0.0/8:3478,tcp:5432,tcp:[fd00::/8]:8000-8100,UDP:10.1.2.3:53,tcp:[fd00::1]:1-65535,udp:0.0.0.0/0:9?payload=stun&interval=15s,tcp:[::/0]:7")
	if err != nil {
		t.Fatal(err)
	}
	want := []relay.InterceptRule{
		icptRule("udp", "", 5060, 5060),
		icptRule("udp", "10.0.0.0/8", 3478, 3478),
		icptRule("tcp", "", 5432, 5432),
		icptRule("tcp", "fd00::/8", 8000, 8100),
		icptRule("udp", "10.1.2.3/32", 53, 53),
		icptRule("tcp", "fd00::1/128", 1, 65535),
		icptRule("udp", "0.0.0.0/0", 9, 9),
		icptRule("tcp", "::/0", 7, 7),
	}
	entries := []string{"udp:5060", "udp:10.0.0.0/8:3478", "tcp:5432", "tcp:[fd00::/8]:8000-8100", "UDP:10.1.2.3:53", "tcp:[fd00::1]:1-65535", "udp:0.0.0.0/0:9?payload=stun&interval=15s", "tcp:[::/0]:7"}
	canon := []string{"udp:5060", "udp:10.0.0.0/8:3478", "tcp:5432", "tcp:[fd00::/8]:8000-8100", "udp:10.1.2.3:53", "tcp:[fd00::1]:1-65535", "udp:0.0.0.0/0:9", "tcp:[::/0]:7"}
	if len(c.Rules) != len(want) {
		t.Fatalf("%d rules, want %d: %+v", len(c.Rules), len(want), c.Rules)
	}
	for i, w := range want {
		we := entry{text: entries[i]}
		if i == 6 {
			we.query = "payload=stun&interval=15s"
		}
		if !reflect.DeepEqual(c.Rules[i], w) || c.entries[i] != we {
			t.Errorf("rule %d = %+v %+v, want %+v %+v", i+1, c.Rules[i], c.entries[i], w, we)
		}
		if s := InterceptEntry(c.Rules[i]); s != canon[i] {
			t.Errorf("rule %d InterceptEntry = %q, want %q", i+1, s, canon[i])
		}
	}
	if !c.Enabled() || !c.HasProto(relay.UDP) || !c.HasProto(relay.TCP) {
		t.Errorf("Enabled/HasProto wrong for %+v", c)
	}
	for _, tt := range []struct {
		proto string
		dst   string
		rule  int // 1-based; 0 = no match
	}{
		{"udp", "192.0.2.1:5060", 1},
		{"udp", "[2001:db8::1]:5060", 1},
		{"udp", "10.9.9.9:3478", 2},
		{"udp", "[::ffff:10.9.9.9]:3478", 2}, // mapped addresses match as IPv4
		{"udp", "11.0.0.1:3478", 0},
		{"tcp", "10.0.0.1:5060", 0},
		{"tcp", "[fd12::1]:8000", 4},
		{"tcp", "[fd12::1]:8100", 4},
		{"tcp", "[fd12::1]:8101", 0},
		{"tcp", "[fe80::1]:8050", 0},
		{"tcp", "[fd00::1]:22", 6},
		{"udp", "10.1.2.3:53", 5},
		{"udp", "10.1.2.4:53", 0},
		{"udp", "1.2.3.4:9", 7},
		{"udp", "[2001:db8::1]:9", 0}, // 0.0.0.0/0 is IPv4 only
		{"tcp", "[2001:db8::1]:7", 8},
		{"tcp", "1.2.3.4:7", 0},
	} {
		if got := icptMatch(c, tt.proto, netip.MustParseAddrPort(tt.dst)); got != tt.rule {
			t.Errorf("Match(%s, %s) = entry %d, want %d", tt.proto, tt.dst, got, tt.rule)
		}
	}
}

func TestInterceptConfigVariables(t *testing.T) {
	c, err := icptLoad(t,
		"NATKEEP_INTERCEPT", "tcp:1",
		"NATKEEP_INTERCEPT_TCP_PORT", "1",
		"NATKEEP_INTERCEPT_UDP_PORT", "65535",
		"NATKEEP_INTERCEPT_MARK", "20043",
		"NATKEEP_INTERCEPT_BYPASS_MARK", "0xFFFFFFFF",
		"NATKEEP_INTERCEPT_UID", "1000",
		"NATKEEP_INTERCEPT_TABLE", "4294967295")
	if err != nil {
		t.Fatal(err)
	}
	if c.TCPPort != 1 || c.UDPPort != 65535 || c.Mark != 20043 || c.BypassMark != 0xffffffff || c.UID != 1000 || !c.MatchUID || c.Table != 4294967295 {
		t.Errorf("got %+v", c)
	}
	for _, off := range []string{"off", "OFF", "none"} {
		c, err := icptLoad(t, "NATKEEP_INTERCEPT_UID", off, "NATKEEP_INTERCEPT_MARK", "0o17")
		if err != nil {
			t.Fatal(err)
		}
		if c.MatchUID || c.UID != 0 || c.Mark != 0o17 {
			t.Errorf("UID=%s: %+v", off, c)
		}
	}
}

func TestInterceptConfigErrors(t *testing.T) {
	const ok = "udp:1"
	entry := func(n int, e, msg string) string {
		return "NATKEEP_INTERCEPT entry " + strconv.Itoa(n) + " " + strconv.Quote(e) + ": " + msg
	}
	for _, tt := range []struct {
		name string
		kv   []string
		want string
	}{
		{"prefix length", []string{"NATKEEP_INTERCEPT", ok + ",udp:10.0.0.0/33:1"}, entry(2, "udp:10.0.0.0/33:1", `prefix "10.0.0.0/33": length 33 out of range 0..32`)},
		{"ipv6 prefix length", []string{"NATKEEP_INTERCEPT", "tcp:[fd00::/129]:1"}, entry(1, "tcp:[fd00::/129]:1", `prefix "fd00::/129": length 129 out of range 0..128`)},
		{"prefix length not a number", []string{"NATKEEP_INTERCEPT", "tcp:10.0.0.0/x:1"}, entry(1, "tcp:10.0.0.0/x:1", `prefix "10.0.0.0/x": length "x" is not a number`)},
		{"prefix length signed", []string{"NATKEEP_INTERCEPT", "tcp:10.0.0.0/+8:1"}, entry(1, "tcp:10.0.0.0/+8:1", `prefix "10.0.0.0/+8": length "+8" is not a number`)},
		{"host bits", []string{"NATKEEP_INTERCEPT", "tcp:10.1.2.3/8:1"}, entry(1, "tcp:10.1.2.3/8:1", `prefix "10.1.2.3/8" has host bits set (did you mean 10.0.0.0/8?)`)},
		{"ipv6 host bits", []string{"NATKEEP_INTERCEPT", "tcp:[fd00::1/8]:1"}, entry(1, "tcp:[fd00::1/8]:1", `prefix "fd00::1/8" has host bits set (did you mean fd00::/8?)`)},
		{"not an address", []string{"NATKEEP_INTERCEPT", "tcp:db.internal:5432"}, entry(1, "tcp:db.internal:5432", `destination "db.internal" is not an IP prefix such as 10.0.0.0/8 or [fd00::/8]`)},
		{"empty prefix", []string{"NATKEEP_INTERCEPT", "tcp::5432"}, entry(1, "tcp::5432", "empty destination prefix (leave it out to match any destination)")},
		{"empty brackets", []string{"NATKEEP_INTERCEPT", "tcp:[]:5432"}, entry(1, "tcp:[]:5432", "empty destination prefix (leave it out to match any destination)")},
		{"ipv6 without brackets", []string{"NATKEEP_INTERCEPT", "tcp:fd00::/8:8000"}, entry(1, "tcp:fd00::/8:8000", "IPv6 prefix fd00::/8 needs brackets, e.g. tcp:[fd00::/8]:8000")},
		{"missing bracket", []string{"NATKEEP_INTERCEPT", "tcp:[fd00::/8:8000"}, entry(1, "tcp:[fd00::/8:8000", `"[fd00::/8:8000": missing ] after the IPv6 prefix`)},
		{"no colon after bracket", []string{"NATKEEP_INTERCEPT", "tcp:[fd00::/8]8000"}, entry(1, "tcp:[fd00::/8]8000", `"[fd00::/8]8000": want :PORT after ]`)},
		{"ipv4 in brackets", []string{"NATKEEP_INTERCEPT", "tcp:[10.0.0.0/8]:1"}, entry(1, "tcp:[10.0.0.0/8]:1", "prefix 10.0.0.0/8: brackets are for IPv6 only (write 10.0.0.0/8:PORT)")},
		{"zone", []string{"NATKEEP_INTERCEPT", "tcp:[fe80::1%eth0]:1"}, entry(1, "tcp:[fe80::1%eth0]:1", `destination "fe80::1%eth0": zones are not supported`)},
		{"mapped", []string{"NATKEEP_INTERCEPT", "tcp:[::ffff:10.0.0.0/104]:1"}, entry(1, "tcp:[::ffff:10.0.0.0/104]:1", `destination "::ffff:10.0.0.0/104" is IPv4-mapped IPv6: write the IPv4 prefix 10.0.0.0`)},
		{"no colon", []string{"NATKEEP_INTERCEPT", "udp"}, entry(1, "udp", interceptSyntax)},
		{"protocol", []string{"NATKEEP_INTERCEPT", "sctp:1"}, entry(1, "sctp:1", `protocol "sctp": want udp or tcp`)},
		{"empty protocol", []string{"NATKEEP_INTERCEPT", ":1"}, entry(1, ":1", `protocol "": want udp or tcp`)},
		{"url form", []string{"NATKEEP_INTERCEPT", "udp://:5060"}, entry(1, "udp://:5060", `destination "//" is not an IP prefix such as 10.0.0.0/8 or [fd00::/8]`)},
		{"missing port", []string{"NATKEEP_INTERCEPT", "udp:"}, entry(1, "udp:", "missing port ("+interceptSyntax+")")},
		{"missing port after prefix", []string{"NATKEEP_INTERCEPT", "udp:10.0.0.0/8:"}, entry(1, "udp:10.0.0.0/8:", "missing port ("+interceptSyntax+")")},
		{"port name", []string{"NATKEEP_INTERCEPT", "tcp:https"}, entry(1, "tcp:https", `port "https" is not a number`)},
		{"port signed", []string{"NATKEEP_INTERCEPT", "tcp:+5"}, entry(1, "tcp:+5", `port "+5" is not a number`)},
		{"port 0", []string{"NATKEEP_INTERCEPT", "tcp:0"}, entry(1, "tcp:0", "port 0 out of range 1..65535")},
		{"port 65536", []string{"NATKEEP_INTERCEPT", "tcp:65536"}, entry(1, "tcp:65536", "port 65536 out of range 1..65535")},
		{"huge port", []string{"NATKEEP_INTERCEPT", "tcp:99999999999999999999"}, entry(1, "tcp:99999999999999999999", "port 99999999999999999999 out of range 1..65535")},
		{"range end missing", []string{"NATKEEP_INTERCEPT", "tcp:8000-"}, entry(1, "tcp:8000-", "missing port ("+interceptSyntax+")")},
		{"range reversed", []string{"NATKEEP_INTERCEPT", "tcp:8100-8000"}, entry(1, "tcp:8100-8000", "port range 8100-8000 is reversed")},
		{"range end 0", []string{"NATKEEP_INTERCEPT", "tcp:1-0"}, entry(1, "tcp:1-0", "port 0 out of range 1..65535")},
		{"three ports", []string{"NATKEEP_INTERCEPT", "tcp:1-2-3"}, entry(1, "tcp:1-2-3", `port "2-3" is not a number`)},
		{"stray comma", []string{"NATKEEP_INTERCEPT", ok + ",,tcp:2"}, entry(2, "", "empty entry (stray comma?)")},
		{"trailing comma", []string{"NATKEEP_INTERCEPT", ok + ","}, entry(2, "", "empty entry (stray comma?)")},
		{"duplicate", []string{"NATKEEP_INTERCEPT", "udp:5060,tcp:5060,UDP:5060"}, entry(3, "UDP:5060", "same traffic as entry 1")},
		{"duplicate prefix spelled differently", []string{"NATKEEP_INTERCEPT", "udp:10.1.2.3:1,udp:10.1.2.3/32:1"}, entry(2, "udp:10.1.2.3/32:1", "same traffic as entry 1")},
		{"unknown key", []string{"NATKEEP_INTERCEPT", "udp:1?foo=1"}, entry(1, "udp:1?foo=1", `unknown key "foo" (known: `+knownKeys()+")")},
		{"key of other proto", []string{"NATKEEP_INTERCEPT", "tcp:1?payload=crlf"}, entry(1, "tcp:1?payload=crlf", `key "payload" applies to udp entries, not tcp`)},
		{"udp key of tcp", []string{"NATKEEP_INTERCEPT", "udp:1?keepalive_idle=5s"}, entry(1, "udp:1?keepalive_idle=5s", `key "keepalive_idle" applies to tcp entries, not udp`)},
		{"role", []string{"NATKEEP_INTERCEPT", "udp:1?role=responder"}, entry(1, "udp:1?role=responder", `key "role" does not apply to intercepted traffic (natkeep is always the client side here)`)},
		{"no value", []string{"NATKEEP_INTERCEPT", "udp:1?ttl"}, entry(1, "udp:1?ttl", `key "ttl" has no value (want ttl=VALUE)`)},
		{"key twice", []string{"NATKEEP_INTERCEPT", "udp:1?ttl=1&ttl=2"}, entry(1, "udp:1?ttl=1&ttl=2", `key "ttl" given more than once`)},
		{"bad duration", []string{"NATKEEP_INTERCEPT", "udp:1?interval=soon"}, entry(1, "udp:1?interval=soon", "interval=soon: not a valid duration (e.g. 20s, 1m30s) or auto")},
		{"bad escape", []string{"NATKEEP_INTERCEPT", "udp:1?payload=text:%zz"}, entry(1, "udp:1?payload=text:%zz", `query "payload=text:%zz": invalid URL escape "%zz"`)},

		{"tcp port 0", []string{"NATKEEP_INTERCEPT_TCP_PORT", "0"}, "NATKEEP_INTERCEPT_TCP_PORT=0: out of range 1..65535"},
		{"udp port 70000", []string{"NATKEEP_INTERCEPT_UDP_PORT", "70000"}, "NATKEEP_INTERCEPT_UDP_PORT=70000: out of range 1..65535"},
		{"tcp port word", []string{"NATKEEP_INTERCEPT_TCP_PORT", "x"}, `NATKEEP_INTERCEPT_TCP_PORT="x": not a valid whole number: invalid syntax`},
		{"table word", []string{"NATKEEP_INTERCEPT_TABLE", "main"}, `NATKEEP_INTERCEPT_TABLE="main": want a routing table number`},
		{"table negative", []string{"NATKEEP_INTERCEPT_TABLE", "-1"}, `NATKEEP_INTERCEPT_TABLE="-1": want a routing table number`},
		{"mark 0", []string{"NATKEEP_INTERCEPT_MARK", "0x0"}, `NATKEEP_INTERCEPT_MARK="0x0": must not be 0 (every unmarked packet has mark 0)`},
		{"mark word", []string{"NATKEEP_INTERCEPT_MARK", "nk"}, `NATKEEP_INTERCEPT_MARK="nk": want a 32-bit mark such as 0x4e4b`},
		{"mark negative", []string{"NATKEEP_INTERCEPT_MARK", "-1"}, `NATKEEP_INTERCEPT_MARK="-1": want a 32-bit mark such as 0x4e4b`},
		{"mark too big", []string{"NATKEEP_INTERCEPT_MARK", "0x100000000"}, `NATKEEP_INTERCEPT_MARK="0x100000000": out of range 1..0xffffffff`},
		{"bypass mark 0", []string{"NATKEEP_INTERCEPT_BYPASS_MARK", "0"}, `NATKEEP_INTERCEPT_BYPASS_MARK="0": must not be 0 (every unmarked packet has mark 0)`},
		{"marks equal", []string{"NATKEEP_INTERCEPT_BYPASS_MARK", "20043"}, `NATKEEP_INTERCEPT_BYPASS_MARK="20043": must differ from NATKEEP_INTERCEPT_MARK (0x4e4b): natkeep's own packets would be intercepted`},
		{"uid 0", []string{"NATKEEP_INTERCEPT_UID", "0"}, `NATKEEP_INTERCEPT_UID="0": UID 0 would exempt every root process, a root app too; run natkeep as another user or set off and rely on NATKEEP_INTERCEPT_BYPASS_MARK`},
		{"uid word", []string{"NATKEEP_INTERCEPT_UID", "nonroot"}, `NATKEEP_INTERCEPT_UID="nonroot": want a numeric user ID or off`},
		{"uid negative", []string{"NATKEEP_INTERCEPT_UID", "-1"}, `NATKEEP_INTERCEPT_UID="-1": want a numeric user ID or off`},
		{"uid -1", []string{"NATKEEP_INTERCEPT_UID", "4294967295"}, `NATKEEP_INTERCEPT_UID="4294967295": 4294967295 is (uid_t)-1, not a user`},
		{"uid too big", []string{"NATKEEP_INTERCEPT_UID", "4294967296"}, `NATKEEP_INTERCEPT_UID="4294967296": want a numeric user ID or off`},
		{"table 0", []string{"NATKEEP_INTERCEPT_TABLE", "0"}, `NATKEEP_INTERCEPT_TABLE="0": out of range 1..4294967295`},
		{"table too big", []string{"NATKEEP_INTERCEPT_TABLE", "4294967296"}, `NATKEEP_INTERCEPT_TABLE="4294967296": out of range 1..4294967295`},
		{"table main", []string{"NATKEEP_INTERCEPT_TABLE", "254"}, `NATKEEP_INTERCEPT_TABLE="254": that is the kernel's main table; pick a table of natkeep's own`},
		{"table local", []string{"NATKEEP_INTERCEPT_TABLE", "255"}, `NATKEEP_INTERCEPT_TABLE="255": that is the kernel's local table; pick a table of natkeep's own`},
		{"table default", []string{"NATKEEP_INTERCEPT_TABLE", "253"}, `NATKEEP_INTERCEPT_TABLE="253": that is the kernel's default table; pick a table of natkeep's own`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := icptLoad(t, tt.kv...)
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not an *Error (exit status 2)", err)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

// icptDefaults are the route settings Load derives from an empty
// environment (the defaults of every intercepted entry).
func icptDefaults() routeSettings {
	return routeSettings{
		interval: 20 * time.Second, payload: "empty", deadAfter: 3, idleTimeout: 10 * time.Minute,
		maxFlows: 65536, role: "client", kaIdle: 60 * time.Second, kaInterval: 10 * time.Second,
		kaCount: 6, connectTimeout: 10 * time.Second, onDead: "keep", ttlHeal: 5 * time.Minute,
		unanswered: 30 * time.Second, answerRate: 20,
	}
}

func TestInterceptConfigOverrides(t *testing.T) {
	c, err := icptLoad(t, "NATKEEP_INTERCEPT", "udp:5060?payload=stun&interval=15s,udp:5061,tcp:5432?keepalive_idle=30s&max_conns=5,udp:5062?ttl=300,tcp:1?user_timeout=1us")
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.udpOptions(0, icptDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if u.Heartbeat.Interval != 15*time.Second || u.Payload.String() != "stun" || !u.Heartbeat.Pong.Enabled() {
		t.Errorf("udp:5060 overrides not applied: %+v", u)
	}
	u, err = c.udpOptions(1, icptDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if u.Heartbeat.Interval != 20*time.Second || u.Payload.String() != "empty" || u.MaxFlows != 65536 {
		t.Errorf("udp:5061 is not the defaults: %+v", u)
	}
	tc, err := c.tcpOptions(2, icptDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if tc.Keepalive.Idle != 30*time.Second || tc.MaxConns != 5 || tc.UserTimeout != 90*time.Second {
		t.Errorf("tcp:5432 overrides not applied: %+v", tc)
	}
	// Values are checked against the defaults when options are built, and
	// the error names the entry.
	if _, err := c.udpOptions(3, icptDefaults()); err == nil || err.Error() != `NATKEEP_INTERCEPT entry 4 "udp:5062?ttl=300": ttl=300: must be 0 (off), 1..255 or auto` {
		t.Errorf("ttl=300: %v", err)
	}
	if _, err := c.tcpOptions(4, icptDefaults()); err == nil || !strings.HasPrefix(err.Error(), `NATKEEP_INTERCEPT entry 5 "tcp:1?user_timeout=1us": user_timeout=1us: `) {
		t.Errorf("user_timeout=1us: %v", err)
	}
}
