package deploy

// Prometheus, real: the shipped rules (prometheus/natkeep-alerts.yaml) pass
// promtool's checks and unit tests, agree with the README's alert examples,
// and a real Prometheus scrapes a running natkeep and evaluates them.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "prometheus/natkeep-alerts.yaml"
	rulesTestFile = "prometheus/natkeep-alerts.test.yaml"
)

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// ruleTests is a promtool unit-test file, as far as the checks read it.
type ruleTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			Alertname string            `json:"alertname"`
			ExpAlerts []json.RawMessage `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromqlExprTest []struct {
			Expr string `json:"expr"`
		} `json:"promql_expr_test"`
	} `json:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestPrometheusRulesFile checks, without Prometheus, that every rule is
// unit-tested and that the README's alert examples are the shipped ones.
func TestPrometheusRulesFile(t *testing.T) {
	var rules ruleFile
	readYAML(t, rulesFile, &rules)
	var tests ruleTests
	readYAML(t, rulesTestFile, &tests)
	if !slices.Equal(tests.RuleFiles, []string{filepath.Base(rulesFile)}) {
		t.Errorf("%s: rule_files %q, want [%s]", rulesTestFile, tests.RuleFiles, filepath.Base(rulesFile))
	}
	fires := map[string]bool{}
	var exprs []string
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
		for _, e := range tc.PromqlExprTest {
			exprs = append(exprs, e.Expr)
		}
	}
	shipped := map[string]string{} // alert: expr, for
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Alert != "":
				shipped[r.Alert] = r.Expr + " for " + r.For
				if !fires[r.Alert] {
					t.Errorf("%s: no test in %s expects alert %s to fire", rulesFile, rulesTestFile, r.Alert)
				}
				if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
					t.Errorf("%s: alert %s lacks a severity label or a summary", rulesFile, r.Alert)
				}
			case r.Record != "":
				if !slices.Contains(exprs, r.Record) {
					t.Errorf("%s: no promql_expr_test in %s evaluates %s", rulesFile, rulesTestFile, r.Record)
				}
			}
		}
	}
	if len(shipped) == 0 {
		t.Fatalf("%s: no alerts", rulesFile)
	}

	// README.md, "### Alert examples": the same alerts, the same expressions.
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "### Alert examples")
	_, block, ok2 := strings.Cut(section, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md: no yaml block under \"### Alert examples\"")
	}
	var examples ruleFile
	if err := yaml.Unmarshal([]byte(block), &examples); err != nil {
		t.Fatalf("README.md alert examples: %v", err)
	}
	n := 0
	for _, g := range examples.Groups {
		for _, r := range g.Rules {
			n++
			if got, ok := shipped[r.Alert]; !ok {
				t.Errorf("README.md alert %s is not in %s", r.Alert, rulesFile)
			} else if want := r.Expr + " for " + r.For; got != want {
				t.Errorf("alert %s: %s has %q, README.md %q", r.Alert, rulesFile, got, want)
			}
		}
	}
	if n == 0 {
		t.Error("README.md: no alerts under \"### Alert examples\"")
	}
}

// TestPromtool runs promtool's own checks and the unit tests.
func TestPromtool(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(rulesFile)},
		{"test", "rules", filepath.Base(rulesTestFile)},
	} {
		start := time.Now()
		out, err := runToolIn(t, filepath.Dir(rulesFile), promtool, args...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("promtool %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	}
}

// TestPrometheusScrape runs natkeep (one loopback UDP route, one flow open)
// and a real Prometheus that scrapes it with the shipped rules loaded, and
// queries Prometheus until natkeep's series and a recording rule show up.
func TestPrometheusScrape(t *testing.T) {
	prometheus := needTool(t, "prometheus", "prometheus")
	bin := natkeepBinary(t)

	// The upstream: a loopback UDP echo.
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 {
				_, _ = echo.WriteTo(buf[:n], from)
			}
		}
	}()

	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp"))
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	route := fmt.Sprintf("udp://%s/%s", listen, echo.LocalAddr())
	nk := start(t, []string{
		"NATKEEP_ROUTES=" + route,
		"NATKEEP_ADMIN_ADDR=" + admin,
		"NATKEEP_DRAIN_TIMEOUT=2s",
		"NATKEEP_UDP_MAX_FLOWS=100",
		"NATKEEP_LOG_FORMAT=json",
	}, bin)
	waitFor(t, 30*time.Second, 100*time.Millisecond, "natkeep /readyz", func() (bool, string, error) {
		if done, err := nk.exited(); done {
			return false, "", fmt.Errorf("natkeep exited: %v\n%s", err, nk.out.String())
		}
		code, err := httpStatus("http://" + admin + "/readyz")
		return code == 200, fmt.Sprint(code, err), nil
	})
	// One flow, so that natkeep_udp_flows_active is 1.
	c, err := net.Dial("udp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 16)); err != nil {
		t.Fatalf("no echo through natkeep: %v", err)
	}

	dir := t.TempDir()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: natkeep
    static_configs:
      - targets: [%q]
`, rules, admin)
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	web := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	begin := time.Now()
	prom := start(t, nil, prometheus,
		"--config.file="+configPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web,
	)
	api := "http://" + web + "/api/v1/"
	waitFor(t, 60*time.Second, 250*time.Millisecond, "Prometheus ready", func() (bool, string, error) {
		if done, err := prom.exited(); done {
			return false, "", fmt.Errorf("prometheus exited: %v", err)
		}
		code, err := httpStatus("http://" + web + "/-/ready")
		return code == 200, fmt.Sprint(code, err), nil
	})

	// natkeep's series, as Prometheus scraped them.
	query := func(q string) []promSample {
		t.Helper()
		var r struct {
			Status string
			Data   struct {
				ResultType string
				Result     []promSample
			}
		}
		getJSON(t, api+"query?query="+url.QueryEscape(q), &r)
		if r.Status != "success" {
			t.Fatalf("query %s: status %q", q, r.Status)
		}
		return r.Data.Result
	}
	for _, q := range []struct {
		expr, labels, value string
	}{
		{"natkeep_listener_up", "route=" + route + " proto=udp job=natkeep", "1"},
		{"natkeep_udp_flows_active", "route=" + route + " job=natkeep", "1"},
		// A recording rule of the shipped file, evaluated by Prometheus.
		{"route:natkeep_udp_flows_active:sum", "route=" + route, "1"},
	} {
		var last []promSample
		waitFor(t, 60*time.Second, 250*time.Millisecond, "Prometheus to have "+q.expr, func() (bool, string, error) {
			last = query(q.expr)
			for _, s := range last {
				if s.has(q.labels) && s.value() == q.value {
					return true, "", nil
				}
			}
			return false, fmt.Sprintf("%+v", last), nil
		})
		t.Logf("%s: %+v", q.expr, last)
	}
	// Counters that must stay at 0 here (summed: natkeep may split them by
	// more labels, such as a refusal's reason).
	for _, q := range []string{"natkeep_udp_dead_peers_total", "natkeep_udp_flows_refused_total", "natkeep_tcp_connection_ends_total"} {
		sum := fmt.Sprintf("sum(%s{route=%q})", q, route)
		if got := query(sum); len(got) > 1 || len(got) == 1 && got[0].value() != "0" {
			t.Errorf("%s: %+v, want 0 or no series", sum, got)
		}
	}
	t.Logf("Prometheus up and natkeep series queried %v after its start", time.Since(begin).Round(time.Millisecond))

	// Every shipped rule loaded and evaluates cleanly on real data; no alert
	// fires for a healthy natkeep.
	var rr struct {
		Data struct {
			Groups []struct {
				Name  string
				Rules []struct {
					Name, Health, LastError, State string
				}
			}
		}
	}
	waitFor(t, 30*time.Second, 250*time.Millisecond, "every rule evaluated", func() (bool, string, error) {
		getJSON(t, api+"rules", &rr)
		n := 0
		for _, g := range rr.Data.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false, fmt.Sprintf("%s: %s %s", r.Name, r.Health, r.LastError), nil
				}
				n++
			}
		}
		return n > 0, "no rules", nil
	})
	var shipped ruleFile
	readYAML(t, rulesFile, &shipped)
	want, got := 0, 0
	for _, g := range shipped.Groups {
		want += len(g.Rules)
	}
	for _, g := range rr.Data.Groups {
		for _, r := range g.Rules {
			got++
			if r.State != "" && r.State != "inactive" {
				t.Errorf("alert %s is %s for a healthy natkeep", r.Name, r.State)
			}
		}
	}
	if got != want {
		t.Errorf("Prometheus loaded %d rules, the file has %d", got, want)
	}
}

// promSample is one series of an instant-vector query result.
type promSample struct {
	Metric map[string]string
	Value  []any // [time, "value"]
}

func (s promSample) value() string {
	if len(s.Value) != 2 {
		return ""
	}
	v, _ := s.Value[1].(string)
	return v
}

// has reports whether the sample carries every "k=v" of labels (separated by
// spaces).
func (s promSample) has(labels string) bool {
	for kv := range strings.FieldsSeq(labels) {
		k, v, _ := strings.Cut(kv, "=")
		if s.Metric[k] != v {
			return false
		}
	}
	return true
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(httpGet(t, url)), v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
