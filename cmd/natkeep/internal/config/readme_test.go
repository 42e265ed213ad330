package config

// README.md documents what this package reads and what the relay it
// configures exports; these tests fail when the two drift apart.

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natkeep/natkeep/relay"
)

const readmePath = "../../../../README.md"

// readmeTable returns the rows (cells trimmed, header and rule left out)
// of the first table in the README section under heading whose header
// starts with firstHeader.
func readmeTable(t *testing.T, heading, firstHeader string) [][]string {
	t.Helper()
	b, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no section %q", heading)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	var rows [][]string
	in := false
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			if in {
				break
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		switch {
		case !in && strings.HasPrefix(cells[0], firstHeader):
			in = true
		case in && strings.HasPrefix(cells[0], "---"):
		case in:
			rows = append(rows, cells)
		}
	}
	if len(rows) == 0 {
		t.Fatalf("README section %q has no table starting with %q", heading, firstHeader)
	}
	return rows
}

var backticked = regexp.MustCompile("`([^`]*)`")

// codeSpans returns the `code` spans of a cell, in order.
func codeSpans(cell string) []string {
	var out []string
	for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// readmeDefault is a default as the README writes it, without code marks
// and parentheses: "`20s`" and "20s", "(by payload)" and "by payload" agree.
func readmeDefault(s string) string {
	return strings.TrimSpace(strings.NewReplacer("`", "", "(", "", ")", "").Replace(s))
}

// readmeVar is one variable of a README table.
type readmeVar struct{ def, key string }

// readmeVars reads a variable table: the variable column may name several
// (`LOG_LEVEL` / `LOG_FORMAT`), each with its share of the default column;
// rows without a variable are returned under "" by route key.
func readmeVars(t *testing.T, rows [][]string, keyCol int) (vars map[string]readmeVar, routeOnly map[string]string) {
	t.Helper()
	vars, routeOnly = map[string]readmeVar{}, map[string]string{}
	for _, row := range rows {
		key := ""
		if keyCol >= 0 {
			key = readmeDefault(row[keyCol])
		}
		names := codeSpans(row[0])
		if len(names) == 0 {
			routeOnly[key] = readmeDefault(row[1])
			continue
		}
		defs := strings.Split(row[1], " / ")
		for i, name := range names {
			def := row[1]
			if len(defs) == len(names) {
				def = defs[i]
			}
			if _, dup := vars[name]; dup {
				t.Errorf("README lists %s twice", name)
			}
			vars[name] = readmeVar{readmeDefault(def), key}
		}
	}
	return vars, routeOnly
}

// codeVars is what the env struct t reads: variable (without the prefix)
// to its default as help shows it, and the route key that overrides it.
func codeVars(t reflect.Type) map[string]readmeVar {
	keyOf := map[string]string{}
	for key, qk := range queryKeys {
		if qk.field != "" {
			keyOf[qk.field] = key
		}
	}
	vars := map[string]readmeVar{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		def, ok := helpDefault[name]
		if !ok {
			def = f.Tag.Get("envDefault")
		}
		vars[name] = readmeVar{readmeDefault(def), keyOf[f.Name]}
	}
	return vars
}

// compareVars reports every variable that the README and the code do not
// agree on.
func compareVars(t *testing.T, readme, code map[string]readmeVar) {
	t.Helper()
	for name, c := range code {
		r, ok := readme[name]
		switch {
		case !ok:
			t.Errorf("README does not list NATKEEP_%s (default %q, route key %q)", name, c.def, c.key)
		case r.def != c.def:
			t.Errorf("README gives NATKEEP_%s the default %q; the code's is %q", name, r.def, c.def)
		case r.key != c.key:
			t.Errorf("README gives NATKEEP_%s the route key %q; the code's is %q", name, r.key, c.key)
		}
	}
	for name := range readme {
		if _, ok := code[name]; !ok {
			t.Errorf("README lists NATKEEP_%s, which natkeep does not read", name)
		}
	}
}

// TestREADMEVariables: the Configuration table lists every variable with
// its default and route key, and every route key.
func TestREADMEVariables(t *testing.T) {
	vars, routeOnly := readmeVars(t, readmeTable(t, "## Configuration", "variable"), 2)
	compareVars(t, vars, codeVars(reflect.TypeFor[envConfig]()))
	// Route keys that override no variable: role, whose default is client.
	wantOnly := map[string]string{"role": string(relay.RoleClient)}
	for key, qk := range queryKeys {
		if qk.field == "" {
			if _, ok := wantOnly[key]; !ok {
				t.Errorf("route key %q overrides no variable and has no documented default here", key)
			}
		}
	}
	if !reflect.DeepEqual(routeOnly, wantOnly) {
		t.Errorf("README rows without a variable (route key: default) %v, want %v", routeOnly, wantOnly)
	}
}

// TestREADMEInterceptVariables: the Transparent mode table lists every
// NATKEEP_INTERCEPT* variable with its default.
func TestREADMEInterceptVariables(t *testing.T) {
	vars, routeOnly := readmeVars(t, readmeTable(t, "## Transparent mode", "variable"), -1)
	if len(routeOnly) > 0 {
		t.Errorf("rows without a variable: %v", routeOnly)
	}
	compareVars(t, vars, codeVars(reflect.TypeFor[interceptEnv]()))
}

// gatherRelay is what a relay with a UDP, a TCP and an interval=auto route exports,
// registered the way main registers it.
func gatherRelay(t *testing.T) map[string][]map[string]string {
	t.Helper()
	cfg := cfgLoad(t, cfgEnv("udp://127.0.0.1:1/127.0.0.1:2,tcp://127.0.0.1:3/127.0.0.1:4,udp://127.0.0.1:5/127.0.0.1:6?interval=auto"))
	reg := prometheus.NewRegistry()
	r, err := relay.New(cfg.Relay, nil, relay.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]map[string]string{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			out[f.GetName()] = append(out[f.GetName()], labels)
		}
	}
	return out
}

// readmeMetricNames expands a metric cell: `natkeep_udp_flows_created_total`
// / `_expired_total` stands for natkeep_udp_flows_created_total and
// natkeep_udp_flows_expired_total (a name starting with _ replaces as many
// trailing words of the first); {labels} are left out.
func readmeMetricNames(cell string) []string {
	var names []string
	for _, span := range codeSpans(cell) {
		name, _, _ := strings.Cut(span, "{")
		if strings.HasPrefix(name, "_") && len(names) > 0 {
			words := strings.Split(names[0], "_")
			n := strings.Count(name, "_")
			name = strings.Join(words[:max(len(words)-n, 0)], "_") + name
		}
		names = append(names, name)
	}
	return names
}

// TestREADMEMetrics: the Metrics table lists exactly the natkeep_* metric
// families the relay exports.
func TestREADMEMetrics(t *testing.T) {
	var documented []string
	for _, row := range readmeTable(t, "## Metrics", "metric") {
		documented = append(documented, readmeMetricNames(row[0])...)
	}
	// natkeep_build_info is registered by main itself (TestBuildInfo there).
	exported := []string{"natkeep_build_info"}
	for name := range gatherRelay(t) {
		if strings.HasPrefix(name, "natkeep_") {
			exported = append(exported, name)
		}
	}
	for _, name := range exported {
		if !slices.Contains(documented, name) {
			t.Errorf("README's metric table lacks %s", name)
		}
	}
	for _, name := range documented {
		if !slices.Contains(exported, name) {
			t.Errorf("README documents %s, which natkeep does not export", name)
		}
	}
}

// TestREADMELabelValues: the reasons the Metrics table lists for
// natkeep_udp_drops_total and natkeep_tcp_connection_ends_total are the
// label values the relay exports (each at zero from the start).
func TestREADMELabelValues(t *testing.T) {
	fams := gatherRelay(t)
	rows := readmeTable(t, "## Metrics", "metric")
	for _, metric := range []string{"natkeep_udp_drops_total", "natkeep_tcp_connection_ends_total"} {
		var documented []string
		for _, row := range rows {
			if slices.Contains(codeSpans(row[0]), metric+"{reason}") {
				documented = codeSpans(row[2])
			}
		}
		var exported []string
		for _, labels := range fams[metric] {
			if !slices.Contains(exported, labels["reason"]) {
				exported = append(exported, labels["reason"])
			}
		}
		sort.Strings(documented)
		sort.Strings(exported)
		if len(exported) == 0 || !slices.Equal(documented, exported) {
			t.Errorf("%s: README lists the reasons %q, natkeep exports %q", metric, documented, exported)
		}
	}
}
