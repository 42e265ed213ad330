package config

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
)

// TestUnknownVariables: a NATKEEP_ variable natkeep does not read is a
// start-up error naming it, with the closest known name when one is near.
func TestUnknownVariables(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"NATKEEP_UDP_HEARTBEAT_INTERVL", "NATKEEP_UDP_HEARTBEAT_INTERVL: unknown variable; did you mean NATKEEP_UDP_HEARTBEAT_INTERVAL?"},
		{"NATKEEP_ROUTE", "NATKEEP_ROUTE: unknown variable; did you mean NATKEEP_ROUTES?"},
		{"NATKEEP_TCP_KEEPALIVE_IDEL", "NATKEEP_TCP_KEEPALIVE_IDEL: unknown variable; did you mean NATKEEP_TCP_KEEPALIVE_IDLE?"},
		{"NATKEEP_INTERCEPT_UDP_PROT", "NATKEEP_INTERCEPT_UDP_PROT: unknown variable; did you mean NATKEEP_INTERCEPT_UDP_PORT?"},
		{"NATKEEP_COMPLETELY_DIFFERENT", "NATKEEP_COMPLETELY_DIFFERENT: unknown variable (natkeep help lists them all)"},
	} {
		_, err := Load(map[string]string{"NATKEEP_ROUTES": "udp://:5000/x:1", tc.key: "5s"}, machine.Facts{})
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.key, err, tc.want)
		}
	}
	// NATKEEP_ROUTE alone: the typo is reported before "ROUTES is required".
	_, err := Load(map[string]string{"NATKEEP_ROUTE": "udp://:5000/x:1"}, machine.Facts{})
	if err == nil || !strings.Contains(err.Error(), "did you mean NATKEEP_ROUTES?") {
		t.Errorf("NATKEEP_ROUTE alone: %v", err)
	}
}

// TestCheckReportsEveryError: three independent mistakes are all reported,
// in order, where start-up stops at the first.
func TestCheckReportsEveryError(t *testing.T) {
	env := map[string]string{
		"NATKEEP_UDP_HEARTBEAT_INTERVL": "5s",
		"NATKEEP_LOG_LEVEL":             "chatty",
		"NATKEEP_ROUTES":                "udp://:5000/x:1,udp://:99999/x:1,tcp://:5432/db:5432?keepalive_count=999",
	}
	c, errs := Check(env, machine.Facts{})
	if c != nil || len(errs) != 4 {
		t.Fatalf("Check: config %v, %d errors: %v", c, len(errs), errs)
	}
	for i, want := range []string{"NATKEEP_UDP_HEARTBEAT_INTERVL: unknown variable", `NATKEEP_LOG_LEVEL="chatty"`,
		`NATKEEP_ROUTES entry 2 "udp://:99999/x:1"`, `NATKEEP_ROUTES entry 3 "tcp://:5432/db:5432?keepalive_count=999"`} {
		if !strings.Contains(errs[i].Error(), want) {
			t.Errorf("error %d = %q, want it to contain %q", i+1, errs[i], want)
		}
	}
	if _, err := Load(env, machine.Facts{}); err == nil || err.Error() != errs[0].Error() {
		t.Errorf("Load reported %v, want Check's first error", err)
	}
}

// TestEffectiveSources: every option of a route with its source.
func TestEffectiveSources(t *testing.T) {
	env := map[string]string{
		"NATKEEP_ROUTES":                 "udp://:5000/x:1?interval=5s,tcp://:5432/db:5432",
		"NATKEEP_UDP_HEARTBEAT_PAYLOAD":  "crlf",
		"NATKEEP_TCP_KEEPALIVE_INTERVAL": "5s",
	}
	c, errs := Check(env, machine.Facts{NoFile: 1024, PortLo: 50000, PortHi: 50999})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	views := c.Effective(env)
	if len(views) != 2 {
		t.Fatalf("%d routes", len(views))
	}
	get := func(v RouteView, key string) Setting {
		for _, s := range v.Settings {
			if s.Key == key {
				return s
			}
		}
		t.Fatalf("route %s has no setting %s", v.Name, key)
		return Setting{}
	}
	for _, tc := range []struct {
		route        int
		key, value   string
		source, vari string
	}{
		{0, "interval", "5s", "route key", "NATKEEP_UDP_HEARTBEAT_INTERVAL"},
		{0, "payload", "crlf", "variable", "NATKEEP_UDP_HEARTBEAT_PAYLOAD"},
		{0, "dead_after", "3", "default", "NATKEEP_UDP_DEAD_AFTER"},
		{0, "max_flows", "auto (500)", "default", "NATKEEP_UDP_MAX_FLOWS"},
		{0, "role", "client", "default", ""},
		{1, "keepalive_interval", "5s", "variable", "NATKEEP_TCP_KEEPALIVE_INTERVAL"},
		{1, "max_conns", "auto (448)", "default", "NATKEEP_TCP_MAX_CONNS"},
		{1, "user_timeout", "1m30s", "default", "NATKEEP_TCP_USER_TIMEOUT"},
	} {
		s := get(views[tc.route], tc.key)
		if s.Value != tc.value || s.Source != tc.source || s.Variable != tc.vari {
			t.Errorf("route %d %s = %+v, want value %q source %q variable %q", tc.route+1, tc.key, s, tc.value, tc.source, tc.vari)
		}
	}
	for _, v := range views {
		for _, s := range v.Settings {
			if s.Source == "" {
				t.Errorf("%s %s has no source", v.Name, s.Key)
			}
		}
	}
	if _, err := json.Marshal(views); err != nil {
		t.Fatal(err)
	}
}
