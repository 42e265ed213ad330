package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCheckCommand: `natkeep check` reports three simultaneous mistakes,
// one line each, exit 2; a good configuration prints as JSON with every
// route option and its source, exit 0.
func TestCheckCommand(t *testing.T) {
	var out, errb bytes.Buffer
	bad := map[string]string{
		"NATKEEP_UDP_HEARTBEAT_INTERVL": "5s",
		"NATKEEP_LOG_FORMAT":            "xml",
		"NATKEEP_ROUTES":                "udp://:5000/x:1?payload=ping",
	}
	if code := run([]string{"check"}, bad, &out, &errb); code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "did you mean NATKEEP_UDP_HEARTBEAT_INTERVAL?") ||
		!strings.Contains(lines[1], `NATKEEP_LOG_FORMAT="xml"`) || !strings.Contains(lines[2], `payload=ping`) {
		t.Fatalf("want the three errors in order, got:\n%s", errb.String())
	}

	out.Reset()
	errb.Reset()
	good := map[string]string{"NATKEEP_ROUTES": "udp://127.0.0.1:5000/x:1?interval=5s,tcp://127.0.0.1:5432/db:5432", "NATKEEP_UDP_ON_DEAD": "rebind"}
	if code := run([]string{"check", "--json"}, good, &out, &errb); code != 0 {
		t.Fatalf("exit %d\n%s", code, errb.String())
	}
	var res struct {
		OK     bool `json:"ok"`
		Routes []struct {
			Route    string `json:"route"`
			Settings []struct {
				Key, Value, Source, Variable string
			} `json:"settings"`
		} `json:"routes"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out.String())
	}
	if !res.OK || len(res.Routes) != 2 {
		t.Fatalf("%+v", res)
	}
	found := map[string]string{}
	for _, s := range res.Routes[0].Settings {
		found[s.Key] = s.Value + " from " + s.Source
	}
	if found["interval"] != "5s from route key" || found["on_dead"] != "rebind from variable" || found["dead_after"] != "3 from default" {
		t.Fatalf("sources: %v", found)
	}
}

// TestBuildInfo: natkeep_build_info is 1 with version, commit and Go
// version labels.
func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(buildInfo())
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 || fams[0].GetName() != "natkeep_build_info" {
		t.Fatalf("%v %v", fams, err)
	}
	m := fams[0].GetMetric()[0]
	labels := map[string]string{}
	for _, lp := range m.GetLabel() {
		labels[lp.GetName()] = lp.GetValue()
	}
	if m.GetGauge().GetValue() != 1 || labels["version"] == "" || labels["commit"] == "" || labels["goversion"] != runtime.Version() {
		t.Fatalf("build info %v = %v", labels, m.GetGauge().GetValue())
	}
}
