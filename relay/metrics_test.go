package relay

import (
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestRouteStatsComplete: every collector of Metrics and of a route's stats
// exists right after construction, so no path can reach a nil counter (a
// missing one crashed natkeep on the first intercepted datagram without an
// original destination). Fields are found by reflection, so a field added
// later without being created fails here too.
func TestRouteStatsComplete(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	for name, v := range map[string]any{"Metrics": m, "udpStats": m.udp("u"), "tcpStats": m.tcp("t")} {
		for _, path := range nilFields(name, reflect.ValueOf(v)) {
			t.Errorf("%s is nil after construction", path)
		}
	}
	if got, want := len(m.tcp("t2").ends), len(endReasons); got != want {
		t.Errorf("tcpStats.ends has %d reasons, want one per end reason (%d)", got, want)
	}
}

// nilFields returns the paths of the nil fields of the struct that v
// points to, and of nil values in its map fields. It does not descend into
// the collectors themselves: their insides are the client library's.
func nilFields(name string, v reflect.Value) []string {
	var out []string
	v = v.Elem()
	for i := range v.NumField() {
		path, f := name+"."+v.Type().Field(i).Name, v.Field(i)
		switch f.Kind() {
		case reflect.Pointer, reflect.Interface, reflect.Func, reflect.Chan, reflect.Slice:
			if f.IsNil() {
				out = append(out, path)
			}
		case reflect.Map:
			if f.IsNil() {
				out = append(out, path)
			}
			for it := f.MapRange(); it.Next(); {
				if k := it.Value().Kind(); (k == reflect.Pointer || k == reflect.Interface) && it.Value().IsNil() {
					out = append(out, path+"["+it.Key().String()+"]")
				}
			}
		}
	}
	return out
}

// TestUDPDropReasonsExported: a fresh UDP route exports every drop reason
// at zero, so a dashboard sees each series before the first drop.
func TestUDPDropReasonsExported(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg).udp("r")
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range fams {
		if f.GetName() != "natkeep_udp_drops_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" {
					exported[lp.GetValue()] = true
				}
			}
		}
	}
	// The public label values, as README lists them.
	for _, reason := range []string{"flow_limit", "upstream_refused", "upstream_error", "client_error",
		"upstream_unresolved", "flow_setup", "stray_stun_reply", "no_orig_dst", "stun_rate_limited"} {
		if !exported[reason] {
			t.Errorf("natkeep_udp_drops_total{reason=%q} is not exported by a fresh route", reason)
		}
	}
}
