package main

import (
	"bytes"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
)

// cliRun calls run and returns the exit status and both outputs.
func cliRun(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	if env == nil {
		env = map[string]string{}
	}
	var stdout, stderr bytes.Buffer
	code := run(args, env, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestHelpCommand: every spelling of help prints config.Help (whose
// content the config package checks) on stdout and exits 0.
func TestHelpCommand(t *testing.T) {
	var want strings.Builder
	config.Help(&want)
	for _, arg := range []string{"help", "-h", "-help", "--help"} {
		t.Run(arg, func(t *testing.T) {
			code, out, errOut := cliRun(t, nil, arg)
			if code != 0 {
				t.Fatalf("exit %d, want 0", code)
			}
			if errOut != "" {
				t.Errorf("stderr %q, want nothing", errOut)
			}
			if out != want.String() {
				t.Errorf("stdout is not the help text:\n%s", out)
			}
		})
	}
}

// update rewrites the golden files instead of comparing with them.
var update = flag.Bool("update", false, "rewrite testdata/help.golden from `natkeep help`")

// TestHelpGolden: `natkeep help` prints testdata/help.golden, so a change
// of the help text shows in review (go test -run TestHelpGolden -update
// ./cmd/natkeep/ rewrites it).
func TestHelpGolden(t *testing.T) {
	const golden = "testdata/help.golden"
	_, out, _ := cliRun(t, nil, "help")
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -run TestHelpGolden -update ./cmd/natkeep/ writes it)", err)
	}
	if out != string(want) {
		t.Errorf("natkeep help differs from %s (rerun with -update if the change is intended):\n got:\n%s\nwant:\n%s", golden, out, want)
	}
}

func TestVersionCommand(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		t.Run(arg, func(t *testing.T) {
			code, out, errOut := cliRun(t, nil, arg)
			if code != 0 {
				t.Fatalf("exit %d", code)
			}
			if errOut != "" {
				t.Errorf("stderr %q", errOut)
			}
			if !strings.HasPrefix(out, "natkeep ") || !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
				t.Errorf("version output %q, want one line starting with natkeep", out)
			}
			for _, want := range []string{runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH, "commit "} {
				if !strings.Contains(out, want) {
					t.Errorf("version output %q does not contain %q", out, want)
				}
			}
		})
	}
}

func TestVersionStamped(t *testing.T) {
	oldV, oldC := version, commit
	t.Cleanup(func() { version, commit = oldV, oldC })
	version, commit = "v1.2.3", "abc1234"
	got := versionString()
	if !strings.HasPrefix(got, "natkeep v1.2.3 (commit abc1234, "+runtime.Version()) {
		t.Errorf("versionString() = %q", got)
	}
}

func TestCLIUnknownCommand(t *testing.T) {
	for _, arg := range []string{"serve", "-v", "HELP", "run"} {
		t.Run(arg, func(t *testing.T) {
			// A valid configuration must not make an unknown command start serving.
			code, out, errOut := cliRun(t, map[string]string{"NATKEEP_ROUTES": "udp://127.0.0.1:1/x:1"}, arg)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if !strings.Contains(errOut, "unknown command") || !strings.Contains(errOut, `"`+arg+`"`) {
				t.Errorf("stderr %q does not name the unknown command", errOut)
			}
		})
	}
}

func TestCLIConfigError(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no routes", map[string]string{}, "natkeep: NATKEEP_ROUTES is required"},
		{"empty routes", map[string]string{"NATKEEP_ROUTES": ""}, "natkeep: NATKEEP_ROUTES is required"},
		{"bad route", map[string]string{"NATKEEP_ROUTES": "udp://:1/x:1,udp://:99999/x:1"},
			`natkeep: NATKEEP_ROUTES entry 2 "udp://:99999/x:1": listen port 99999 out of range 1..65535` + "\n"},
		{"bad variable", map[string]string{"NATKEEP_ROUTES": "udp://:1/x:1", "NATKEEP_UDP_HEARTBEAT_TTL": "300"},
			`natkeep: NATKEEP_UDP_HEARTBEAT_TTL="300": must be 0 (off), 1..255 or auto` + "\n"},
		{"bad log level", map[string]string{"NATKEEP_ROUTES": "udp://:1/x:1", "NATKEEP_LOG_LEVEL": "loud"}, `natkeep: NATKEEP_LOG_LEVEL="loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := cliRun(t, tt.env)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if !strings.HasPrefix(errOut, tt.want) {
				t.Errorf("stderr %q, want it to start with %q", errOut, tt.want)
			}
			if strings.Count(errOut, "\n") != 1 {
				t.Errorf("stderr %q is not exactly one line", errOut)
			}
		})
	}
}

// cliReadyServer serves /readyz with the given status and counts the probes.
func cliReadyServer(t *testing.T, status int) (addr string, probes *atomic.Int32) {
	t.Helper()
	probes = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/readyz" {
			t.Errorf("healthcheck requested %s %s, want GET /readyz", r.Method, r.URL.Path)
			http.NotFound(w, r)
			return
		}
		probes.Add(1)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), probes
}

func TestHealthcheckReady(t *testing.T) {
	addr, probes := cliReadyServer(t, http.StatusOK)
	code, out, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": addr}, "healthcheck")
	if code != 0 {
		t.Errorf("exit %d, want 0 (stderr %q)", code, errOut)
	}
	if out != "" || errOut != "" {
		t.Errorf("stdout %q stderr %q, want nothing", out, errOut)
	}
	if probes.Load() != 1 {
		t.Errorf("%d probes, want 1", probes.Load())
	}
}

func TestHealthcheckWildcardHostProbesLoopback(t *testing.T) {
	addr, probes := cliReadyServer(t, http.StatusOK)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{":" + port, "0.0.0.0:" + port, "[::]:" + port} {
		code, _, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": a}, "healthcheck")
		if code != 0 {
			t.Errorf("ADMIN_ADDR=%s: exit %d, want 0 (stderr %q)", a, code, errOut)
		}
	}
	if probes.Load() != 3 {
		t.Errorf("%d probes, want 3", probes.Load())
	}
}

func TestHealthcheckNotReady(t *testing.T) {
	addr, probes := cliReadyServer(t, http.StatusServiceUnavailable)
	code, out, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": addr}, "healthcheck")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	if !strings.Contains(errOut, "503") {
		t.Errorf("stderr %q does not report the status", errOut)
	}
	if probes.Load() != 1 {
		t.Errorf("%d probes, want 1", probes.Load())
	}
}

func TestHealthcheckNothingListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, out, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": addr}, "healthcheck")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	if !strings.HasPrefix(errOut, "natkeep healthcheck: ") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestHealthcheckDisabled(t *testing.T) {
	for _, v := range []string{"off", ""} {
		code, out, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": v}, "healthcheck")
		if code != 1 {
			t.Errorf("ADMIN_ADDR=%q: exit %d, want 1", v, code)
		}
		if out != "" {
			t.Errorf("stdout %q", out)
		}
		if !strings.Contains(errOut, "NATKEEP_ADMIN_ADDR is disabled") {
			t.Errorf("ADMIN_ADDR=%q: stderr %q", v, errOut)
		}
	}
}

func TestHealthcheckBadAddr(t *testing.T) {
	code, _, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": "no-port"}, "healthcheck")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut, `NATKEEP_ADMIN_ADDR="no-port"`) {
		t.Errorf("stderr %q", errOut)
	}
}

// TestHealthcheckIgnoresRoutes: the probe runs in the same container with
// the same environment, but must not parse or need the routes.
func TestHealthcheckIgnoresRoutes(t *testing.T) {
	addr, _ := cliReadyServer(t, http.StatusOK)
	code, _, errOut := cliRun(t, map[string]string{"NATKEEP_ADMIN_ADDR": addr, "NATKEEP_ROUTES": "garbage"}, "healthcheck")
	if code != 0 {
		t.Errorf("exit %d, want 0 (stderr %q)", code, errOut)
	}
}

func TestInterceptCLIUsage(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		env      map[string]string
		code     int
		out, err string // substrings; "" = must be empty
	}{
		{[]string{"intercept", "help"}, nil, 0, "usage: natkeep intercept install|remove|show", ""},
		{[]string{"intercept", "--help"}, nil, 0, "usage: natkeep intercept install|remove|show", ""},
		{[]string{"intercept"}, nil, 2, "", `natkeep: intercept: want one of install, remove or show, got []`},
		{[]string{"intercept", "add"}, nil, 2, "", `natkeep: intercept: want one of install, remove or show, got ["add"]`},
		{[]string{"intercept", "install", "now"}, nil, 2, "", `got ["install" "now"]`},
		{[]string{"intercept", "install"}, nil, 2, "", "natkeep: NATKEEP_INTERCEPT is empty: nothing to intercept (set it to a list such as udp:5060,tcp:10.0.0.0/8:5432)\n"},
		{[]string{"intercept", "install"}, map[string]string{"NATKEEP_INTERCEPT": "udp:0"}, 2, "", "natkeep: NATKEEP_INTERCEPT entry 1 \"udp:0\": port 0 out of range 1..65535\n"},
		{[]string{"intercept", "remove"}, map[string]string{"NATKEEP_INTERCEPT_TABLE": "254"}, 2, "", `natkeep: NATKEEP_INTERCEPT_TABLE="254": that is the kernel's main table`},
	} {
		code, out, errOut := cliRun(t, tt.env, tt.args...)
		if code != tt.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", tt.args, code, tt.code, errOut)
		}
		if tt.out == "" && out != "" || !strings.Contains(out, tt.out) {
			t.Errorf("%v: stdout %q, want it to contain %q", tt.args, out, tt.out)
		}
		if tt.err == "" && errOut != "" || !strings.Contains(errOut, tt.err) {
			t.Errorf("%v: stderr %q, want it to contain %q", tt.args, errOut, tt.err)
		}
	}
}

// TestProbeBadArguments: natkeep probe exits 2 with the usage on bad
// arguments, before sending anything.
func TestProbeBadArguments(t *testing.T) {
	for _, c := range []struct {
		args []string
		frag string
	}{
		{nil, "want one HOST:PORT, got 0"},
		{[]string{"a:1", "b:2"}, "want one HOST:PORT, got 2"},
		{[]string{"--frobnicate", "127.0.0.1:3478"}, "flag provided but not defined"},
		{[]string{"127.0.0.1"}, "missing port"},
		{[]string{"127.0.0.1:0"}, "bad port"},
		{[]string{"127.0.0.1:99999"}, "bad port"},
		{[]string{"--max-lifetime", "1s", "127.0.0.1:3478"}, "want at least 4s"},
	} {
		code, out, errOut := cliRun(t, nil, append([]string{"probe"}, c.args...)...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.frag) || !strings.Contains(errOut, "usage: natkeep probe") {
			t.Errorf("probe %q: exit %d, stdout %q, stderr %q; want 2 and %q with the usage", c.args, code, out, errOut, c.frag)
		}
	}
}
