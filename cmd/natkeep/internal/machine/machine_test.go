package machine

import (
	"testing"

	"github.com/natkeep/natkeep/relay"
)

func TestBudgetFromFacts(t *testing.T) {
	for _, tc := range []struct {
		f                 Facts
		reserve           int
		budget            relay.Budget
		flows, tflows, tc int
	}{
		{Facts{NoFile: 1024, PortLo: 50000, PortHi: 50999}, 128, relay.Budget{Descriptors: 896, Ports: 500}, 500, 448, 448},
		{Facts{NoFile: 20000, PortLo: 32768, PortHi: 60999}, 1024, relay.Budget{Descriptors: 18976, Ports: 14116}, 14116, 9488, 9488},
		{Facts{NoFile: 256}, 64, relay.Budget{Descriptors: 192}, 192, 96, 96},
		{Facts{PortLo: 1024, PortHi: 65535}, 64, relay.Budget{Ports: 32256}, 32256, 32256, 0},
		{Facts{}, 64, relay.Budget{}, 0, 0, 0},
	} {
		if got := tc.f.Reserve(); got != tc.reserve {
			t.Errorf("%+v: reserve %d, want %d", tc.f, got, tc.reserve)
		}
		if got := tc.f.Budget(); got != tc.budget {
			t.Errorf("%+v: budget %+v, want %+v", tc.f, got, tc.budget)
		}
		if got := tc.f.MaxFlows(false); got != tc.flows {
			t.Errorf("%+v: max flows %d, want %d", tc.f, got, tc.flows)
		}
		if got := tc.f.MaxFlows(true); got != tc.tflows {
			t.Errorf("%+v: transparent max flows %d, want %d", tc.f, got, tc.tflows)
		}
		if got := tc.f.MaxConns(); got != tc.tc {
			t.Errorf("%+v: max conns %d, want %d", tc.f, got, tc.tc)
		}
	}
}

func TestReadThisHost(t *testing.T) {
	f := Read()
	t.Logf("this host: %+v: %s; budget %+v", f, f.Describe(), f.Budget())
	if f.NoFile == 0 {
		t.Skip("RLIMIT_NOFILE not readable here")
	}
	if b := f.Budget(); b.Descriptors <= 0 || b.Descriptors >= int(f.NoFile) {
		t.Fatalf("descriptor budget %d for RLIMIT_NOFILE %d", b.Descriptors, f.NoFile)
	}
}
