package config

import (
	"syscall"
	"testing"

	"github.com/natkeep/natkeep/relay"
)

// TestListenFailureNamesOrigin: a route listener's bind failure is a
// configuration error that names where the route was configured: its
// NATKEEP_ROUTES entry, or the port variable of a transparent listener.
func TestListenFailureNamesOrigin(t *testing.T) {
	cfg := cfgLoad(t, cfgEnv("udp://127.0.0.1:5060/x:1,tcp://:5432/y:2", "NATKEEP_INTERCEPT", "udp:53,tcp:443"))
	want := []string{
		`NATKEEP_ROUTES entry 1 "udp://127.0.0.1:5060/x:1": listen 127.0.0.1:5060: address already in use`,
		`NATKEEP_ROUTES entry 2 "tcp://:5432/y:2": listen :5432: address already in use`,
		`NATKEEP_INTERCEPT_TCP_PORT=15001: listen :15001: address already in use`,
		`NATKEEP_INTERCEPT_UDP_PORT=15002: listen :15002: address already in use`,
	}
	if len(cfg.Relay.Routes) != len(want) {
		t.Fatalf("%d routes, want %d", len(cfg.Relay.Routes), len(want))
	}
	for i, rt := range cfg.Relay.Routes {
		err := cfg.ListenError(&relay.ListenError{Index: i, Route: rt, Err: syscall.EADDRINUSE})
		if _, ok := err.(*Error); !ok || err.Error() != want[i] {
			t.Errorf("route %d: %v (%T), want the configuration error %q", i, err, err, want[i])
		}
	}
}
