package config

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/natkeep/natkeep/relay"
)

// helpText is what Help writes.
func helpText() string {
	var b strings.Builder
	Help(&b)
	return b.String()
}

// helpDefault is the default help shows for a variable: the envDefault
// tag, or a description where the default is computed.
var helpDefault = map[string]string{
	"ROUTES":              "(required)",
	"ADMIN_ADDR":          ":9299",
	"TCP_USER_TIMEOUT":    "idle+interval*count",
	"UDP_HEARTBEAT_REPLY": "(by payload)",
	"INTERCEPT":           "(off)",
}

func TestHelpListsEveryVariable(t *testing.T) {
	out := helpText()
	typ := reflect.TypeFor[envConfig]()
	if typ.NumField() < 19 {
		t.Fatalf("envConfig has only %d fields", typ.NumField())
	}
	total := 0
	for _, typ := range []reflect.Type{typ, reflect.TypeFor[interceptEnv]()} {
		total += typ.NumField()
		for i := range typ.NumField() {
			f := typ.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			if key == "" {
				t.Errorf("field %s has no env tag", f.Name)
				continue
			}
			def, ok := helpDefault[key]
			if !ok {
				def, ok = f.Tag.Lookup("envDefault")
			}
			if !ok || def == "" {
				t.Errorf("field %s (%s) has no default to show", f.Name, key)
				continue
			}
			help := f.Tag.Get("help")
			if help == "" {
				t.Errorf("field %s (%s) has no help tag", f.Name, key)
			}
			// One line per variable: name, default, help, separated by
			// tabwriter padding.
			re := regexp.MustCompile(`(?m)^  NATKEEP_` + regexp.QuoteMeta(key) + ` +` + regexp.QuoteMeta(def) + ` +` + regexp.QuoteMeta(help) + `$`)
			if !re.MatchString(out) {
				t.Errorf("help has no line for NATKEEP_%s with default %q and its help text", key, def)
			}
		}
	}
	// No variable is printed that envConfig does not have.
	names := regexp.MustCompile(`(?m)^  (NATKEEP_[A-Z_]+) `).FindAllStringSubmatch(out, -1)
	if len(names) != total {
		t.Errorf("help lists %d variable lines, envConfig and interceptEnv have %d fields", len(names), total)
	}
}

func TestHelpListsRouteKeys(t *testing.T) {
	out := helpText()
	lines := map[relay.Proto]string{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if p, rest, ok := strings.Cut(l, ": "); ok && (p == "udp" || p == "tcp") {
			lines[relay.Proto(p)] = " " + rest + " "
		}
	}
	if len(lines) != 2 {
		t.Fatalf("help has no udp:/tcp: key lines:\n%s", out)
	}
	for key, qk := range queryKeys {
		if !strings.Contains(lines[qk.proto], " "+key+" ") {
			t.Errorf("help line for %s keys does not list %q: %q", qk.proto, key, lines[qk.proto])
		}
	}
	for _, want := range []string{"NATKEEP_ROUTES", "PROTO://LISTEN/UPSTREAM", "text:a%2Cb", "natkeep healthcheck", "/readyz"} {
		if !strings.Contains(out, want) {
			t.Errorf("help does not mention %q", want)
		}
	}
}

// TestVarNames: the variable names exported for other packages' messages
// are the ones the env structs read.
func TestVarNames(t *testing.T) {
	for got, want := range map[string]string{
		VarAdminAddr:    envKey("AdminAddr"),
		VarIntercept:    interceptKey("Intercept"),
		VarInterceptUID: interceptKey("UID"),
	} {
		if got != want || !strings.HasPrefix(want, envPrefix) {
			t.Errorf("exported name %s, env tag gives %s", got, want)
		}
	}
}
